//! The packet path's benchmarks (issue 15), each beside its reference in one run:
//! 1. `policy`: per-packet cost of the tc policy program at 1, 1,000 and 16,000 rules
//!    (BPF_PROG_TEST_RUN's ns/packet, and real packets through a node) beside iptables
//!    with the same rules ([`policy`]);
//! 2. `clusterip`: TCP connections/s to a ClusterIP through the tc load balancer at 1,
//!    1,000 and 10,000 services, beside connecting to the backend directly and beside
//!    iptables DNAT in kube-proxy's shape ([`clusterip`]);
//! 3. `crossnode`: TCP throughput (iperf3) and one-byte request/response latency between
//!    pods on two nodes over VXLAN, Geneve and native routing, beside a plain veth route
//!    with no BPF ([`crossnode`]).
//!
//! Everything runs in network namespaces, cgroups and bpffs directories this process
//! creates and removes (its guards drop them, failures included); iptables rules go only
//! into those namespaces. Each benchmark writes a Markdown page (`--out`); the scripts
//! `bench/tc-policy.sh`, `bench/clusterip.sh` and `bench/crossnode.sh` build and run it.
//! `tcpath worker ...` is the load itself, run inside a pod's namespace ([`load`]).

#[path = "tcpath/clusterip.rs"]
mod clusterip;
#[path = "tcpath/clusterip_report.rs"]
mod clusterip_report;
#[path = "tcpath/crossnode.rs"]
mod crossnode;
#[path = "tcpath/iptables.rs"]
mod iptables;
#[path = "tcpath/load.rs"]
mod load;
#[path = "tcpath/mbnode.rs"]
mod mbnode;
#[path = "tcpath/pktcost.rs"]
mod pktcost;
#[path = "tcpath/policy.rs"]
mod policy;
#[path = "tcpath/progstats.rs"]
mod progstats;
#[path = "tcpath/report.rs"]
mod report;
#[path = "tcpath/topo.rs"]
mod topo;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use membrane_test_support::{sandbox::Netns, ChildGuard};

#[derive(Parser)]
#[command(about = "membrane packet-path benchmarks (issue 15)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Per-packet cost of the policy program vs iptables.
    Policy(policy::Args),
    /// ClusterIP connection rate vs direct vs kube-proxy's iptables.
    Clusterip(clusterip::Args),
    /// Cross-node throughput and latency per overlay mode vs a plain route.
    Crossnode(crossnode::Args),
    /// The load, inside a namespace.
    #[command(subcommand)]
    Worker(load::Worker),
}

fn main() -> Result<()> {
    // `cargo bench` appends `--bench`; a bare `cargo bench` run (no benchmark named)
    // prints the usage instead of failing the workspace's bench run.
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    if args.len() == 1 {
        println!("tcpath: name a benchmark (policy, clusterip, crossnode); see bench/README.md");
        return Ok(());
    }
    match Cli::parse_from(args).cmd {
        Cmd::Policy(a) => policy::run(&a),
        Cmd::Clusterip(a) => clusterip::run(&a),
        Cmd::Crossnode(a) => crossnode::run(&a),
        Cmd::Worker(w) => load::run(w),
    }
}

/// Where the results page goes and how long each measurement runs.
#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// The Markdown page to write.
    #[arg(long)]
    out: PathBuf,
    /// Repetitions of every cell (the median is reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Seconds per load run.
    #[arg(long, default_value_t = 2.0)]
    secs: f64,
}

/// `tcpath worker ARGS...` inside `ns`, pinned to `core` when given.
fn worker(ns: &Netns, core: Option<usize>, args: &[String]) -> Result<Command> {
    let exe = std::env::current_exe().context("current exe")?;
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &ns.name]);
    if let Some(core) = core {
        c.args(["taskset", "-c", &core.to_string()]);
    }
    c.arg(exe).arg("worker").args(args);
    Ok(c)
}

/// Runs a worker client to its end and parses the JSON line it prints.
fn worker_json(ns: &Netns, core: Option<usize>, args: &[String]) -> Result<serde_json::Value> {
    let out = worker(ns, core, args)?.output().context("run worker")?;
    if !out.status.success() {
        bail!(
            "worker {args:?} in {}: {}",
            ns.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).with_context(|| format!("worker output {text:?}"))
}

/// Starts a worker server in `ns` (pinned to `core` when given) and waits for its READY
/// line (the server exits when the guard drops: killed by pid).
fn worker_server(ns: &Netns, core: Option<usize>, args: &[String]) -> Result<ChildGuard> {
    let mut child = ChildGuard(
        worker(ns, core, args)?
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("spawn worker server")?,
    );
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("server stdout")?).read_line(&mut line)?;
    if line.trim() != "READY" {
        bail!(
            "worker server {args:?} in {} did not start: {line:?}",
            ns.name
        );
    }
    Ok(child)
}

/// `["--a", "b", ...]` from string slices.
fn argv(xs: &[&str]) -> Vec<String> {
    xs.iter().map(|s| (*s).to_owned()).collect()
}
