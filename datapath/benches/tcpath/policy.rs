//! Benchmark 1: what a packet costs the L3/L4 policy at 1, 1,000 and 16,000 rules.
//!
//! The rule set is the same on both sides: rule i (i < N) allows UDP to port 9 from one
//! remote (membrane: identity 1000 + i, whose address the ipcache maps; iptables: that
//! address as `-s`), and the rule the measured packet matches denies UDP to port 9 from
//! the client (membrane: a deny entry for the client's identity; iptables: the last rule
//! of the chain, DROP). A denied packet creates no conntrack entry, so every packet of a
//! run is a full policy decision on both sides.
//!
//! Two measurements:
//! - membrane alone, BPF_PROG_TEST_RUN on the endpoint's `mb_to_container` with a crafted
//!   packet (`bpftool prog run ... repeat R`): the kernel's ns/packet for the program;
//! - both, with real packets: a one-thread UDP flood (pinned to one core, so the
//!   forwarding softirq runs there too) from a client pod through the node to the target
//!   pod, dropped by the policy; the rate is what the dropping rule counted per second
//!   (iptables: the rule's counter; membrane: `mb_tc_stats`), and its inverse the whole
//!   path's cost per packet, send syscall included. iptables and membrane each have their
//!   own node namespace, so neither pays for the other's hooks.

use std::net::Ipv4Addr;

use std::net::IpAddr;

use anyhow::{bail, Context, Result};
use aya::programs::{TestRun, TestRunOptions};
use membrane_datapath::policy_map::{Direction, MapVerdict, PolicyRule};
use membrane_datapath::{IpNet, IpcacheEntry, NodeSettings};
use membrane_test_support::sandbox::{unique_name, Netns};

use crate::mbnode::{udp_frame, Endpoint, MbNode};

use crate::report::{median, num, ratio, reps, Report};
use crate::{argv, iptables, topo, worker_json, Common};

/// The policy benchmark's options.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    /// Rule counts.
    #[arg(long, value_delimiter = ',', default_value = "1,1000,16000")]
    rules: Vec<usize>,
    /// BPF_PROG_TEST_RUN repetitions per measurement.
    #[arg(long, default_value_t = 1_000_000)]
    repeat: u64,
    /// The core the flood (and so its softirq) runs on.
    #[arg(long, default_value_t = 0)]
    core: usize,
}

const PORT: u16 = 9;
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
const TARGET_IP: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 3);

/// A node with a client pod and the target pod.
struct Bed {
    client: topo::Pod,
    target: topo::Pod,
    node: Netns,
}

fn bed(tag: &str) -> Bed {
    let base = unique_name();
    let node = topo::node(&format!("{base}-{tag}"));
    let client = topo::routed_pod(&node, &format!("{base}-{tag}-c"), "lxcc", CLIENT_IP);
    let target = topo::routed_pod(&node, &format!("{base}-{tag}-t"), "lxct", TARGET_IP);
    Bed {
        client,
        target,
        node,
    }
}

/// One flood from the client pod; packets/s as the dropping rule's cumulative counter
/// `counted` grew over it.
fn flood(bed: &Bed, core: usize, secs: f64, counted: impl Fn() -> Result<u64>) -> Result<f64> {
    let before = counted()?;
    let to = format!("{TARGET_IP}:{PORT}");
    let v = worker_json(
        &bed.client.ns,
        Some(core),
        &argv(&["udp-flood", "--to", &to, "--secs", &secs.to_string()]),
    )?;
    let secs = v["secs"].as_f64().context("flood secs")?;
    Ok((counted()? - before) as f64 / secs)
}

/// A filter under test: its node, how it takes N rules, how a flood is counted.
trait Variant {
    fn name(&self) -> String;
    fn set_rules(&mut self, n: usize) -> Result<()>;
    fn flood(&self, core: usize, secs: f64) -> Result<f64>;
}

/// iptables with the rules in a filter chain of its own node.
struct Ipt {
    backend: iptables::Backend,
    bed: Bed,
    n: usize,
}

impl Variant for Ipt {
    fn name(&self) -> String {
        self.backend.name().to_owned()
    }
    fn set_rules(&mut self, n: usize) -> Result<()> {
        self.n = n;
        iptables::restore(
            self.backend,
            &self.bed.node,
            &iptables::policy_rules(n, CLIENT_IP, PORT),
        )
    }
    fn flood(&self, core: usize, secs: f64) -> Result<f64> {
        let (b, ns) = (self.backend, &self.bed.node);
        flood(&self.bed, core, secs, || {
            iptables::rule_packets(b, ns, "filter", iptables::CHAIN, self.n)
        })
    }
}

/// The client's identity (the ipcache maps its address to it).
const CLIENT_ID: u32 = 500;
/// The target pod's identity.
const TARGET_ID: u32 = 600;

/// The identity of rule `i`'s remote.
fn rule_identity(i: usize) -> u32 {
    1000 + i as u32
}

/// N rules of the target endpoint in `direction`: N - 1 allowing UDP/9 with one remote
/// identity each, and the client's deny.
fn mb_rules(n: usize, direction: Direction) -> Vec<PolicyRule> {
    let rule = |remote_identity, verdict| PolicyRule {
        direction,
        remote_identity,
        proto: 17,
        ports: (PORT, PORT),
        verdict,
    };
    let mut rules: Vec<PolicyRule> = (0..n.saturating_sub(1))
        .map(|i| rule(rule_identity(i), MapVerdict::Allow))
        .collect();
    rules.push(rule(CLIENT_ID, MapVerdict::Deny));
    rules
}

/// membrane: the target pod an endpoint with tc on its veth, the client a plain
/// namespace whose address the ipcache knows.
struct Mb {
    mb: MbNode,
    bed: Bed,
}

impl Mb {
    fn new() -> Result<Mb> {
        let bed = bed("mb");
        let mut mb = MbNode::load(
            &bed.node,
            &NodeSettings {
                policy: true,
                ..NodeSettings::default()
            },
        )?;
        mb.attach(&bed.target, 1, TARGET_ID)?;
        Ok(Mb { mb, bed })
    }

    fn sync(&self, n: usize, direction: Direction) -> Result<()> {
        let host = |ip: Ipv4Addr, identity| IpcacheEntry {
            prefix: IpNet::from(IpAddr::V4(ip)),
            identity,
            tunnel: None,
        };
        let mut cache: Vec<IpcacheEntry> = (0..n.saturating_sub(1))
            .map(|i| host(iptables::rule_source(i), rule_identity(i)))
            .collect();
        cache.push(host(CLIENT_IP, CLIENT_ID));
        cache.push(host(TARGET_IP, TARGET_ID));
        self.mb
            .node
            .sync_ipcache(&cache)
            .context("sync the node ipcache")?;
        let dp = &self.mb.eps[0].dp;
        // A sync writes the new entries before it deletes the old ones (no window without
        // a verdict), so 16,000 rules of one direction cannot replace 16,000 of the other
        // in a 16,384-entry map: empty it first (the benchmark has no flows to protect).
        if dp
            .policy_rules()?
            .first()
            .is_some_and(|r| r.direction != direction)
        {
            dp.sync_policy(&[]).context("empty the endpoint's policy")?;
        }
        dp.sync_policy(&mb_rules(n, direction))
            .context("sync the endpoint's policy")?;
        Ok(())
    }
}

/// BPF_PROG_TEST_RUN of endpoint `ep`'s `prog` on `frame`, `repeat` times: the kernel's
/// ns per run; an error unless the program dropped it.
fn test_run(ep: &Endpoint, prog: &str, frame: &[u8], repeat: u32) -> Result<f64> {
    let p = ep.prog(prog)?;
    let mut out = vec![0u8; frame.len() + 256];
    let r = p
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::default()
        })
        .with_context(|| format!("BPF_PROG_TEST_RUN of {prog}"))?;
    if r.return_value != TC_ACT_SHOT {
        bail!(
            "{prog} returned {} for the denied packet, not a drop",
            r.return_value
        );
    }
    Ok(r.duration.as_nanos() as f64)
}

/// The test-run node: one endpoint per (rule count, direction), each with its own policy
/// map holding that many rules, on one node whose ipcache holds every rule's remote (the
/// ipcache's size is the node's, whatever one endpoint's rule count), so the repetitions
/// can interleave the rule counts and a drift in the machine's load spreads over all.
struct TestRuns {
    /// (rule count, direction, endpoint index, program, frame)
    cells: Vec<(usize, Direction, usize, &'static str, Vec<u8>)>,
    mb: MbNode,
    _pods: Vec<topo::Pod>,
    _node: Netns,
}

impl TestRuns {
    fn new(rules: &[usize]) -> Result<TestRuns> {
        let node = topo::node(&format!("{}-tr", unique_name()));
        let mut mb = MbNode::load(
            &node,
            &NodeSettings {
                policy: true,
                ..NodeSettings::default()
            },
        )?;
        let host = |ip: Ipv4Addr, identity| IpcacheEntry {
            prefix: IpNet::from(IpAddr::V4(ip)),
            identity,
            tunnel: None,
        };
        let max = rules.iter().copied().max().unwrap_or(1);
        let mut cache: Vec<IpcacheEntry> = (0..max.saturating_sub(1))
            .map(|i| host(iptables::rule_source(i), rule_identity(i)))
            .collect();
        cache.push(host(CLIENT_IP, CLIENT_ID));
        let (mut cells, mut pods) = (Vec::new(), Vec::new());
        for (k, &n) in rules.iter().enumerate() {
            for (d, direction) in [Direction::Ingress, Direction::Egress]
                .into_iter()
                .enumerate()
            {
                let j = 2 * k + d;
                let ip = Ipv4Addr::new(10, 1, 1, 10 + j as u8);
                let pod =
                    topo::routed_pod(&node, &format!("{}-{j}", node.name), &format!("lxt{j}"), ip);
                let e = mb.attach(&pod, 10 + j as u16, TARGET_ID)?;
                mb.eps[e]
                    .dp
                    .sync_policy(&mb_rules(n, direction))
                    .with_context(|| format!("sync {n} {direction:?} rules"))?;
                cache.push(host(ip, TARGET_ID));
                let (prog, frame) = match direction {
                    Direction::Ingress => (
                        "mb_to_container",
                        udp_frame([2, 0, 0, 0, 0, 9], pod.mac, CLIENT_IP, ip, 40000, PORT),
                    ),
                    Direction::Egress => (
                        "mb_from_container",
                        udp_frame(pod.mac, pod.host_mac, ip, CLIENT_IP, 40000, PORT),
                    ),
                };
                cells.push((n, direction, e, prog, frame));
                pods.push(pod);
            }
        }
        mb.node
            .sync_ipcache(&cache)
            .context("sync the node ipcache")?;
        Ok(TestRuns {
            cells,
            mb,
            _pods: pods,
            _node: node,
        })
    }

    /// One repetition of every cell, in `order`: (rule count, direction, ns per run).
    fn rep(&self, repeat: u32, reverse: bool) -> Result<Vec<(usize, Direction, f64)>> {
        let mut idx: Vec<usize> = (0..self.cells.len()).collect();
        if reverse {
            idx.reverse();
        }
        let mut out = Vec::new();
        for i in idx {
            let (n, direction, e, prog, frame) = &self.cells[i];
            out.push((
                *n,
                *direction,
                test_run(&self.mb.eps[*e], prog, frame, repeat)?,
            ));
        }
        Ok(out)
    }
}

/// `TC_ACT_SHOT` (tcx: drop).
const TC_ACT_SHOT: u32 = 2;

impl Variant for Mb {
    fn name(&self) -> String {
        "membrane (tc, mb_to_container)".into()
    }
    fn set_rules(&mut self, n: usize) -> Result<()> {
        self.sync(n, Direction::Ingress)
    }
    fn flood(&self, core: usize, secs: f64) -> Result<f64> {
        flood(&self.bed, core, secs, || self.mb.dropped())
    }
}

/// Runs the benchmark and writes its page.
pub fn run(a: &Args) -> Result<()> {
    let mut r = Report::new("Packet-path policy: per-packet cost vs iptables");
    let repeat = u32::try_from(a.repeat).context("--repeat")?;
    let tr = TestRuns::new(&a.rules)?;
    // ns[(rule count, direction)] = per-rep ns
    let mut ns: std::collections::BTreeMap<(usize, Direction), Vec<f64>> = Default::default();
    for rep in 0..a.common.reps {
        for (n, d, v) in tr.rep(repeat, rep % 2 == 1)? {
            ns.entry((n, d)).or_default().push(v);
        }
    }
    drop(tr);
    let test_runs: Vec<(usize, Vec<f64>, Vec<f64>)> = a
        .rules
        .iter()
        .map(|&n| {
            let get = |d| ns.get(&(n, d)).cloned().unwrap_or_default();
            (n, get(Direction::Ingress), get(Direction::Egress))
        })
        .collect();
    for (n, i, e) in &test_runs {
        eprintln!("policy: {n} rules: test_run ingress {i:?} egress {e:?} ns");
    }
    let mb = Mb::new()?;
    let mut variants: Vec<Box<dyn Variant>> = vec![Box::new(mb)];
    let mut versions = Vec::new();
    for b in iptables::Backend::ALL {
        versions.push(b.version()?);
        variants.push(Box::new(Ipt {
            backend: b,
            bed: bed(b.tag()),
            n: 0,
        }));
    }
    // floods[variant][rule count] = per-rep packets/s
    let mut floods = vec![Vec::new(); variants.len()];
    for &n in &a.rules {
        for v in variants.iter_mut() {
            v.set_rules(n)?;
        }
        let mut cell = vec![Vec::new(); variants.len()];
        for rep in 0..a.common.reps {
            // The order turns round every repetition, so a drift in the machine's load
            // does not always favour the same variant.
            let mut order: Vec<usize> = (0..variants.len()).collect();
            if rep % 2 == 1 {
                order.reverse();
            }
            for i in order {
                cell[i].push(variants[i].flood(a.core, a.common.secs)?);
            }
        }
        for (i, c) in cell.into_iter().enumerate() {
            eprintln!("policy: {n} rules: {}: {c:?} pkt/s", variants[i].name());
            floods[i].push((n, c));
        }
    }
    r.line(format!(
        "{} repetitions per cell, {} s floods pinned to core {}, median reported; {}.",
        a.common.reps,
        a.common.secs,
        a.core,
        versions.join(", ")
    ));
    r.line("");
    r.line("## BPF_PROG_TEST_RUN (membrane)");
    r.line("");
    r.line(format!(
        "The kernel's average ns per run over {} runs of the program on one crafted 106-byte",
        num(a.repeat as f64, 0)
    ));
    r.line(
        "UDP frame the policy denies: a full decision each time (conntrack miss, ipcache, policy",
    );
    r.line("lookup, drop counters and events). Ingress: `mb_to_container`, client → pod; egress:");
    r.line("`mb_from_container`, pod → client, with the rules' direction flipped.");
    r.line("");
    let (i0, e0) = test_runs
        .first()
        .map(|(_, i, e)| (median(i), median(e)))
        .unwrap_or((f64::NAN, f64::NAN));
    let rows: Vec<Vec<String>> = test_runs
        .iter()
        .map(|(n, i, e)| {
            vec![
                num(*n as f64, 0),
                num(median(i), 1),
                ratio(median(i), i0),
                num(median(e), 1),
                ratio(median(e), e0),
                reps(i, 1),
                reps(e, 1),
            ]
        })
        .collect();
    r.table(
        &[
            "rules",
            "ingress ns/packet",
            "vs 1 rule",
            "egress ns/packet",
            "vs 1 rule",
            "per-rep ingress",
            "per-rep egress",
        ],
        &rows,
    );
    r.line("## Real packets: a UDP flood dropped by the last rule");
    r.line("");
    r.line(
        "Packets/s counted by the dropping rule; ns/packet is the inverse (the whole path: send",
    );
    r.line(
        "syscall, veth, forwarding, the filter); 'vs 1 rule' compares it with the same filter's",
    );
    r.line("1-rule cell; 'filter ns/packet over 1 rule' is the difference, the rules' own cost.");
    r.line("");
    let mut table = Vec::new();
    for (i, v) in variants.iter().enumerate() {
        let base = floods[i]
            .first()
            .map(|(_, c)| median(c))
            .unwrap_or(f64::NAN);
        for (n, c) in &floods[i] {
            let m = median(c);
            table.push(vec![
                v.name(),
                num(*n as f64, 0),
                num(m, 0),
                num(1e9 / m, 0),
                ratio(1e9 / m, 1e9 / base),
                num(1e9 / m - 1e9 / base, 0),
                reps(c, 0),
            ]);
        }
    }
    r.table(
        &[
            "filter",
            "rules",
            "pkt/s",
            "ns/packet",
            "vs 1 rule",
            "filter ns/packet over 1 rule",
            "per-rep pkt/s",
        ],
        &table,
    );
    r.finish(&a.common.out)
}
