//! Benchmark 2: TCP connections per second to a ClusterIP at 1, 1,000 and 10,000
//! services.
//!
//! Each variant has its own node namespace with a client pod and a backend pod (two
//! listening ports, the service's two backends), so no variant pays for another's hooks:
//! - `direct`: no BPF, no rules; the client connects to the backends' addresses, each
//!   connection to one of the two at random as the load balancer picks (the reference the
//!   target is measured against; one backend alone would leave the other port's accepting
//!   threads idle and make the server's side of the comparison unequal);
//! - `iptables`: kube-proxy's shape ([`iptables::kube_proxy_rules`]) in the node's nat
//!   table, the client connecting to the last service's ClusterIP, so the first packet of
//!   each connection walks every service's match;
//! - `membrane`: the tc programs on both pods' host veths, the services in the node's LB
//!   maps, the client connecting to the same ClusterIP, from a pod without the socket
//!   hooks, so nothing translated the connect and the tc load balancer does it per
//!   packet; and `membrane direct`, the same node connecting to the backends' addresses
//!   in the same way (what the tc programs cost without a translation).
//!
//! A connection is: connect, one byte each way, abort (RST, so no port waits in
//! TIME_WAIT). Four client threads, four accepting threads per port, for `secs`; every
//! failed connection is counted and reported (the target is zero).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;

use anyhow::{Context, Result};
use membrane_datapath::policy_map::{Direction, MapVerdict, PolicyRule};
use membrane_datapath::{IpNet, IpcacheEntry, LbService, NodeSettings};
use membrane_test_support::sandbox::{unique_name, Netns};

use crate::mbnode::MbNode;
use crate::pktcost;

use crate::clusterip_report::{Cell, Row};
use crate::progstats;
use crate::report::Report;
use crate::{argv, clusterip_report, iptables, topo, worker_json, worker_server};

/// The ClusterIP benchmark's options. Its own repetition defaults: more, shorter
/// repetitions than the other benchmarks', as a connection storm's rate scatters more.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The Markdown page to write.
    #[arg(long)]
    out: PathBuf,
    /// Repetitions of every cell (the median is reported, and the spread).
    #[arg(long, default_value_t = 9)]
    reps: usize,
    /// Seconds per load run.
    #[arg(long, default_value_t = 1.0)]
    secs: f64,
    /// Service counts.
    #[arg(long, value_delimiter = ',', default_value = "1,1000,10000")]
    services: Vec<usize>,
    /// Client threads (each one connection at a time).
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Pin the client to CPU 0 and the server to CPU 1 (with two CPUs or more), so the
    /// scheduler moving them about does not scatter the repetitions.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pin: bool,
    /// Connections whose packets are test-run through the membrane variants' programs
    /// per repetition (0: none), for the per-packet table.
    #[arg(long, default_value_t = 200)]
    packet_conns: u16,
}

impl Args {
    /// The CPUs the client and the server are pinned to, if they are.
    fn cores(&self) -> (Option<usize>, Option<usize>) {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if self.pin && cpus >= 2 {
            (Some(0), Some(1))
        } else {
            (None, None)
        }
    }
}

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 2);
const BACKEND_IP: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 3);
const SVC_PORT: u16 = 80;

/// The service's two backends.
pub fn backends() -> [SocketAddrV4; 2] {
    [
        SocketAddrV4::new(BACKEND_IP, 8080),
        SocketAddrV4::new(BACKEND_IP, 8081),
    ]
}

/// A node with a client pod and a backend pod serving both backend ports.
pub struct Bed {
    _server: membrane_test_support::ChildGuard,
    pub client: topo::Pod,
    pub backend: topo::Pod,
    pub node: Netns,
}

pub fn bed(tag: &str, server_core: Option<usize>) -> Result<Bed> {
    let base = unique_name();
    let node = topo::node(&format!("{base}-{tag}"));
    let client = topo::routed_pod(&node, &format!("{base}-{tag}-c"), "lxcc", CLIENT_IP);
    let backend = topo::routed_pod(&node, &format!("{base}-{tag}-b"), "lxcb", BACKEND_IP);
    let [b0, b1] = backends();
    let server = worker_server(
        &backend.ns,
        server_core,
        &argv(&[
            "tcp-serve",
            "--listen",
            &b0.to_string(),
            "--listen",
            &b1.to_string(),
        ]),
    )?;
    Ok(Bed {
        _server: server,
        client,
        backend,
        node,
    })
}

/// One measurement.
pub struct Rate {
    /// Connections that worked.
    pub ok: u64,
    pub per_sec: f64,
    /// CPU time of the client and the server per connection that worked, µs.
    pub cpu_us: f64,
    pub failed: u64,
    pub first_error: String,
}

pub fn rate(bed: &Bed, to: &[SocketAddrV4], a: &Args) -> Result<Rate> {
    let server_before = cpu_ns(bed._server.id())?;
    let mut args = vec!["conn-rate".to_owned()];
    args.extend(to.iter().map(|t| format!("--to={t}")));
    args.extend(argv(&[
        "--secs",
        &a.secs.to_string(),
        "--threads",
        &a.threads.to_string(),
    ]));
    let v = worker_json(&bed.client.ns, a.cores().0, &args)?;
    let server_ns = cpu_ns(bed._server.id())?.saturating_sub(server_before);
    let ok = v["ok"].as_u64().context("conn-rate ok")?;
    let client_secs = v["cpu_secs"].as_f64().context("conn-rate cpu_secs")?;
    Ok(Rate {
        ok,
        per_sec: ok as f64 / v["secs"].as_f64().context("conn-rate secs")?,
        cpu_us: (client_secs * 1e6 + server_ns as f64 / 1e3) / ok.max(1) as f64,
        failed: v["failed"].as_u64().context("conn-rate failed")?,
        first_error: v["first_error"].as_str().unwrap_or_default().to_owned(),
    })
}

/// The CPU time of process `pid`'s threads so far, ns (the scheduler's own account,
/// /proc/PID/task/*/schedstat; it includes the softirq work done in their context).
fn cpu_ns(pid: u32) -> Result<u64> {
    let dir = format!("/proc/{pid}/task");
    let mut sum = 0;
    for t in std::fs::read_dir(&dir).with_context(|| format!("read {dir}"))? {
        let path = t?.path().join("schedstat");
        // A thread may end between the listing and the read.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        sum += text
            .split_whitespace()
            .next()
            .and_then(|f| f.parse::<u64>().ok())
            .with_context(|| format!("{}: {text:?}", path.display()))?;
    }
    Ok(sum)
}

/// A way to reach the service: its node, how it takes N services, where it connects.
trait Variant {
    fn name(&self) -> String;
    fn set_services(&mut self, n: usize) -> Result<()>;
    fn bed(&self) -> &Bed;
    /// Where a connection goes (one of them at random when several: the backends
    /// themselves for the variants that connect directly, spread as the load balancer
    /// spreads, so every variant keeps both backend ports equally busy).
    fn targets(&self, n: usize) -> Vec<SocketAddrV4>;
    /// The per-packet costs of `conns` connections from client ports `port..` through
    /// its tc programs ([`pktcost`]), when it has any.
    fn packet_costs(&self, _n: usize, _port: u16, _conns: u16) -> Result<Option<Vec<f64>>> {
        Ok(None)
    }
    /// The kernel's counters of its tc programs ([`progstats::PROGS`]), when it has any.
    fn prog_counts(&self) -> Result<Option<Vec<progstats::Counts>>> {
        Ok(None)
    }
}

fn vip(n: usize) -> SocketAddrV4 {
    SocketAddrV4::new(iptables::service_ip(n), SVC_PORT)
}

/// Connecting to a backend's address on a node without BPF or rules.
struct Direct(Bed);

impl Variant for Direct {
    fn name(&self) -> String {
        "direct (no BPF, no rules)".into()
    }
    fn set_services(&mut self, _n: usize) -> Result<()> {
        Ok(())
    }
    fn bed(&self) -> &Bed {
        &self.0
    }
    fn targets(&self, _n: usize) -> Vec<SocketAddrV4> {
        backends().to_vec()
    }
}

/// kube-proxy's rules in a node's nat table.
struct Ipt(iptables::Backend, Bed);

impl Variant for Ipt {
    fn name(&self) -> String {
        format!("{}, kube-proxy shape", self.0.name())
    }
    fn set_services(&mut self, n: usize) -> Result<()> {
        iptables::restore(
            self.0,
            &self.1.node,
            &iptables::kube_proxy_rules(n, backends()),
        )
    }
    fn bed(&self) -> &Bed {
        &self.1
    }
    fn targets(&self, n: usize) -> Vec<SocketAddrV4> {
        vec![vip(n)]
    }
}

/// Identities of the membrane node's pods.
const CLIENT_ID: u32 = 700;
const BACKEND_ID: u32 = 701;

/// membrane's node: both pods endpoints with tc on their veths, policy enforced (the
/// client may reach the backend's ports, the backend accepts the client), the services in
/// the node's LB maps. The client has no socket hooks (its cgroup is empty), so its
/// connects reach the tc load balancer untranslated.
struct MbLb {
    mb: MbNode,
    bed: Bed,
}

impl MbLb {
    fn new(server_core: Option<usize>) -> Result<MbLb> {
        let bed = bed("mb", server_core)?;
        let mut mb = MbNode::load(
            &bed.node,
            &NodeSettings {
                policy: true,
                ..NodeSettings::default()
            },
        )?;
        let c = mb.attach(&bed.client, 1, CLIENT_ID)?;
        let b = mb.attach(&bed.backend, 2, BACKEND_ID)?;
        let host = |ip: Ipv4Addr, identity| IpcacheEntry {
            prefix: IpNet::from(IpAddr::V4(ip)),
            identity,
            tunnel: None,
        };
        mb.node
            .sync_ipcache(&[host(CLIENT_IP, CLIENT_ID), host(BACKEND_IP, BACKEND_ID)])
            .context("sync the node ipcache")?;
        let rule = |direction, remote_identity| PolicyRule {
            direction,
            remote_identity,
            proto: 6,
            ports: (8080, 8081),
            verdict: MapVerdict::Allow,
        };
        mb.eps[c]
            .dp
            .sync_policy(&[rule(Direction::Egress, BACKEND_ID)])
            .context("client policy")?;
        mb.eps[b]
            .dp
            .sync_policy(&[rule(Direction::Ingress, CLIENT_ID)])
            .context("backend policy")?;
        Ok(MbLb { mb, bed })
    }
}

/// Through membrane's tc load balancer (`via_service`) or to the backend's address on the
/// same node.
struct Mb {
    lb: MbLb,
    via_service: bool,
}

impl Variant for Mb {
    fn name(&self) -> String {
        if self.via_service {
            "membrane tc LB, ClusterIP".into()
        } else {
            "membrane tc, backend address".into()
        }
    }
    fn set_services(&mut self, n: usize) -> Result<()> {
        if !self.via_service {
            return Ok(());
        }
        let [b0, b1] = backends();
        let services: Vec<LbService> = (1..=n)
            .map(|i| {
                let bs = if i == n {
                    [b0, b1]
                } else {
                    [iptables::other_backend(i, 0), iptables::other_backend(i, 1)]
                };
                LbService {
                    frontend: SocketAddr::V4(vip(i)),
                    proto: 6,
                    node_port: 0,
                    external_local: false,
                    backends: bs.iter().map(|b| SocketAddr::V4(*b)).collect(),
                }
            })
            .collect();
        self.lb
            .mb
            .node
            .sync_services(&services)
            .with_context(|| format!("sync {n} services"))?;
        Ok(())
    }
    fn bed(&self) -> &Bed {
        &self.lb.bed
    }
    fn targets(&self, n: usize) -> Vec<SocketAddrV4> {
        if self.via_service {
            vec![vip(n)]
        } else {
            backends().to_vec()
        }
    }
    fn packet_costs(&self, n: usize, port: u16, conns: u16) -> Result<Option<Vec<f64>>> {
        let eps = &self.lb.mb.eps;
        pktcost::measure(
            [&eps[0], &eps[1]],
            CLIENT_IP,
            self.targets(n)[0],
            &backends(),
            port,
            conns,
        )
        .map(Some)
    }
    fn prog_counts(&self) -> Result<Option<Vec<progstats::Counts>>> {
        let eps = &self.lb.mb.eps;
        progstats::read([&eps[0], &eps[1]]).map(Some)
    }
}

/// Runs the benchmark and writes its page.
pub fn run(a: &Args) -> Result<()> {
    let mut r = Report::new("ClusterIP connection rate: tc load balancer vs direct vs iptables");
    let server_core = a.cores().1;
    // The two membrane variants get a node each, as every variant does: neither pays for
    // the other's conntrack and LB state. The order is the page's: direct first, the
    // tc backend address third (the report divides by both).
    let mut variants: Vec<Box<dyn Variant>> = vec![
        Box::new(Direct(bed("dir", server_core)?)),
        Box::new(Mb {
            lb: MbLb::new(server_core)?,
            via_service: true,
        }),
        Box::new(Mb {
            lb: MbLb::new(server_core)?,
            via_service: false,
        }),
    ];
    let mut versions = Vec::new();
    for b in iptables::Backend::ALL {
        versions.push(b.version()?);
        variants.push(Box::new(Ipt(b, bed(b.tag(), server_core)?)));
    }
    let mut rows = Vec::new();
    let mut next_port = 0usize;
    for &n in &a.services {
        for v in variants.iter_mut() {
            v.set_services(n)?;
        }
        let mut row = Row {
            n,
            cells: variants.iter().map(|_| Cell::default()).collect(),
            packets: variants.iter().map(|_| Vec::new()).collect(),
            progs: variants.iter().map(|_| None).collect(),
        };
        for rep in 0..a.reps {
            // The order turns round every repetition, so a drift in the machine's load
            // does not always favour the same variant.
            let mut order: Vec<usize> = (0..variants.len()).collect();
            if rep % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let v = &variants[i];
                row.cells[i].add(rate(v.bed(), &v.targets(n), a)?);
                if a.packet_conns > 0 {
                    // Client ports below the ephemeral range, a fresh run each time.
                    let port = 1024 + (next_port * a.packet_conns as usize % 30000) as u16;
                    next_port += 1;
                    if let Some(ns) = v.packet_costs(n, port, a.packet_conns)? {
                        row.packets[i].push(ns);
                    }
                }
            }
        }
        // One more run per membrane variant with the kernel's statistics on: what each
        // program costs per run and how often a connection runs it.
        for (i, v) in variants.iter().enumerate() {
            let Some(before) = v.prog_counts()? else {
                continue;
            };
            let window = progstats::on()?;
            let before_again = v.prog_counts()?.unwrap_or(before);
            let rt = rate(v.bed(), &v.targets(n), a)?;
            let after = v.prog_counts()?.context("program counters went away")?;
            drop(window);
            row.progs[i] = Some(progstats::per_connection(&before_again, &after, rt.ok));
        }
        for (i, c) in row.cells.iter().enumerate() {
            eprintln!(
                "clusterip: {n} services: {}: {:?}",
                variants[i].name(),
                c.rates
            );
        }
        rows.push(row);
    }
    let names: Vec<String> = variants.iter().map(|v| v.name()).collect();
    r.line(format!(
        "{} repetitions per cell, {} s each, {} client threads{}, median reported; {}.",
        a.reps,
        a.secs,
        a.threads,
        match a.cores() {
            (Some(c), Some(s)) => format!(" (client pinned to CPU {c}, server to CPU {s})"),
            _ => String::new(),
        },
        versions.join(", ")
    ));
    clusterip_report::write(&mut r, &names, &rows, a.packet_conns);
    r.finish(&a.out)
}
