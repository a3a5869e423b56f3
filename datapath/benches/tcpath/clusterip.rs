//! Benchmark 2: TCP connections per second to a ClusterIP at 1, 1,000 and 10,000
//! services.
//!
//! Each variant has its own node namespace with a client pod and a backend pod (two
//! listening ports, the service's two backends), so no variant pays for another's hooks:
//! - `direct`: no BPF, no rules; the client connects to a backend's address (the
//!   reference the target is measured against);
//! - `iptables`: kube-proxy's shape ([`iptables::kube_proxy_rules`]) in the node's nat
//!   table, the client connecting to the last service's ClusterIP, so the first packet of
//!   each connection walks every service's match;
//! - `membrane`: the tc programs on both pods' host veths, the services in the node's LB
//!   maps, the client connecting to the same ClusterIP, from a pod without the socket
//!   hooks, so nothing translated the connect and the tc load balancer does it per
//!   packet; and `membrane direct`, the same node connecting to the backend's address
//!   (what the tc programs cost without a translation).
//!
//! A connection is: connect, one byte each way, abort (RST, so no port waits in
//! TIME_WAIT). Four client threads, four accepting threads per port, for `secs`; every
//! failed connection is counted and reported (the target is zero).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use anyhow::{Context, Result};
use membrane_datapath::policy_map::{Direction, MapVerdict, PolicyRule};
use membrane_datapath::{IpNet, IpcacheEntry, LbService, NodeSettings};
use membrane_test_support::sandbox::{unique_name, Netns};

use crate::mbnode::MbNode;
use crate::pktcost;

use crate::report::{median, num, ratio, reps, Report};
use crate::{argv, iptables, topo, worker_json, worker_server, Common};

/// The ClusterIP benchmark's options.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    /// Service counts.
    #[arg(long, value_delimiter = ',', default_value = "1,1000,10000")]
    services: Vec<usize>,
    /// Client threads (each one connection at a time).
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Connections whose packets are test-run through the membrane variants' programs
    /// per repetition (0: none), for the per-packet table.
    #[arg(long, default_value_t = 200)]
    packet_conns: u16,
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

pub fn bed(tag: &str) -> Result<Bed> {
    let base = unique_name();
    let node = topo::node(&format!("{base}-{tag}"));
    let client = topo::routed_pod(&node, &format!("{base}-{tag}-c"), "lxcc", CLIENT_IP);
    let backend = topo::routed_pod(&node, &format!("{base}-{tag}-b"), "lxcb", BACKEND_IP);
    let [b0, b1] = backends();
    let server = worker_server(
        &backend.ns,
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

/// One measurement: (connections/s, failed connections, first error).
pub struct Rate {
    pub per_sec: f64,
    pub failed: u64,
    pub first_error: String,
}

pub fn rate(bed: &Bed, to: SocketAddrV4, a: &Args) -> Result<Rate> {
    let v = worker_json(
        &bed.client.ns,
        None,
        &argv(&[
            "conn-rate",
            "--to",
            &to.to_string(),
            "--secs",
            &a.common.secs.to_string(),
            "--threads",
            &a.threads.to_string(),
        ]),
    )?;
    let ok = v["ok"].as_u64().context("conn-rate ok")?;
    Ok(Rate {
        per_sec: ok as f64 / v["secs"].as_f64().context("conn-rate secs")?,
        failed: v["failed"].as_u64().context("conn-rate failed")?,
        first_error: v["first_error"].as_str().unwrap_or_default().to_owned(),
    })
}

/// A way to reach the service: its node, how it takes N services, where it connects.
trait Variant {
    fn name(&self) -> String;
    fn set_services(&mut self, n: usize) -> Result<()>;
    fn bed(&self) -> &Bed;
    fn target(&self, n: usize) -> SocketAddrV4;
    /// The per-packet costs of `conns` connections from client ports `port..` through
    /// its tc programs ([`pktcost`]), when it has any.
    fn packet_costs(&self, _n: usize, _port: u16, _conns: u16) -> Result<Option<Vec<f64>>> {
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
    fn target(&self, _n: usize) -> SocketAddrV4 {
        backends()[0]
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
    fn target(&self, n: usize) -> SocketAddrV4 {
        vip(n)
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
    fn new() -> Result<MbLb> {
        let bed = bed("mb")?;
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
    fn target(&self, n: usize) -> SocketAddrV4 {
        if self.via_service {
            vip(n)
        } else {
            backends()[0]
        }
    }
    fn packet_costs(&self, n: usize, port: u16, conns: u16) -> Result<Option<Vec<f64>>> {
        let eps = &self.lb.mb.eps;
        pktcost::measure(
            [&eps[0], &eps[1]],
            CLIENT_IP,
            self.target(n),
            &backends(),
            port,
            conns,
        )
        .map(Some)
    }
}

/// Per variant, per repetition, ns per step of [`pktcost::rows`] (empty: the variant has no
/// tc programs).
type PacketCosts = Vec<Vec<Vec<f64>>>;

/// Per-rep rates and failures of one variant at one service count.
#[derive(Default)]
struct Cell {
    rates: Vec<f64>,
    failed: u64,
    first_error: String,
}

impl Cell {
    fn add(&mut self, r: Rate) {
        self.rates.push(r.per_sec);
        self.failed += r.failed;
        if self.first_error.is_empty() {
            self.first_error = r.first_error;
        }
    }
}

/// Runs the benchmark and writes its page.
pub fn run(a: &Args) -> Result<()> {
    let mut r = Report::new("ClusterIP connection rate: tc load balancer vs direct vs iptables");
    // The two membrane variants get a node each, as every variant does: neither pays for
    // the other's conntrack and LB state.
    let mut variants: Vec<Box<dyn Variant>> = vec![
        Box::new(Direct(bed("dir")?)),
        Box::new(Mb {
            lb: MbLb::new()?,
            via_service: true,
        }),
        Box::new(Mb {
            lb: MbLb::new()?,
            via_service: false,
        }),
    ];
    let mut versions = Vec::new();
    for b in iptables::Backend::ALL {
        versions.push(b.version()?);
        variants.push(Box::new(Ipt(b, bed(b.tag())?)));
    }
    // rows[service count] = cells per variant
    let mut rows: Vec<(usize, Vec<Cell>)> = Vec::new();
    let mut packets: Vec<(usize, PacketCosts)> = Vec::new();
    let mut next_port = 0usize;
    for &n in &a.services {
        for v in variants.iter_mut() {
            v.set_services(n)?;
        }
        let mut cells: Vec<Cell> = variants.iter().map(|_| Cell::default()).collect();
        let mut pkt: PacketCosts = variants.iter().map(|_| Vec::new()).collect();
        for rep in 0..a.common.reps {
            // The order turns round every repetition, so a drift in the machine's load
            // does not always favour the same variant.
            let mut order: Vec<usize> = (0..variants.len()).collect();
            if rep % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let v = &variants[i];
                cells[i].add(rate(v.bed(), v.target(n), a)?);
                if a.packet_conns > 0 {
                    // Client ports below the ephemeral range, a fresh run each time.
                    let port = 1024 + (next_port * a.packet_conns as usize % 30000) as u16;
                    next_port += 1;
                    if let Some(ns) = v.packet_costs(n, port, a.packet_conns)? {
                        pkt[i].push(ns);
                    }
                }
            }
        }
        for (i, c) in cells.iter().enumerate() {
            eprintln!(
                "clusterip: {n} services: {}: {:?}",
                variants[i].name(),
                c.rates
            );
        }
        rows.push((n, cells));
        packets.push((n, pkt));
    }
    r.line(format!(
        "{} repetitions per cell, {} s each, {} client threads, median reported; {}.",
        a.common.reps,
        a.common.secs,
        a.threads,
        versions.join(", ")
    ));
    r.line("The ClusterIP connected to is the last service of the set; 'vs direct' divides by the");
    r.line("direct cell of the same service count (measured in the same repetitions).");
    r.line("");
    let mut table = Vec::new();
    for (n, cells) in &rows {
        let dm = median(&cells[0].rates);
        for (i, c) in cells.iter().enumerate() {
            let m = median(&c.rates);
            table.push(vec![
                num(*n as f64, 0),
                variants[i].name(),
                num(m, 0),
                ratio(m, dm),
                c.failed.to_string(),
                reps(&c.rates, 0),
            ]);
        }
    }
    r.table(
        &[
            "services",
            "variant",
            "connections/s",
            "vs direct",
            "failed",
            "per-rep connections/s",
        ],
        &table,
    );
    packet_table(&mut r, &variants, &packets, a.packet_conns);
    for (n, cells) in &rows {
        for (i, c) in cells.iter().enumerate() {
            if c.failed > 0 {
                r.line(format!(
                    "- {n} services, {}: {} failed; the first: {}",
                    variants[i].name(),
                    c.failed,
                    c.first_error
                ));
            }
        }
    }
    r.finish(&a.common.out)
}

/// The per-packet table: for every service count and packet of a connection, the median
/// over the repetitions of each membrane variant's mean ns per program run.
fn packet_table(
    r: &mut Report,
    variants: &[Box<dyn Variant>],
    packets: &[(usize, PacketCosts)],
    conns: u16,
) {
    let with: Vec<usize> = (0..variants.len())
        .filter(|&i| packets.iter().any(|(_, p)| !p[i].is_empty()))
        .collect();
    if with.is_empty() {
        return;
    }
    r.line("");
    r.line(format!(
        "Per packet (BPF_PROG_TEST_RUN, ns per program run, mean over {conns} connections \
         per repetition, median over the repetitions; each program's output is the next \
         one's input, so the backend sees the translated packet; `repeat` 1, so every \
         figure includes the test timer's own overhead):"
    ));
    r.line("");
    let mut head = vec!["services".to_owned(), "packet".to_owned()];
    head.extend(with.iter().map(|&i| format!("{} (ns)", variants[i].name())));
    let mut table = Vec::new();
    for (n, pkt) in packets {
        let steps: Vec<&str> = pktcost::rows().collect();
        let mut total = vec![0f64; with.len()];
        for (s, step) in steps.iter().enumerate() {
            let mut row = vec![num(*n as f64, 0), (*step).to_owned()];
            for (j, &i) in with.iter().enumerate() {
                let xs: Vec<f64> = pkt[i].iter().map(|v| v[s]).collect();
                let m = median(&xs);
                total[j] += m;
                row.push(num(m, 0));
            }
            table.push(row);
        }
        let mut row = vec![num(*n as f64, 0), "sum of one of each".to_owned()];
        row.extend(total.iter().map(|t| num(*t, 0)));
        table.push(row);
    }
    let head: Vec<&str> = head.iter().map(String::as_str).collect();
    r.table(&head, &table);
}
