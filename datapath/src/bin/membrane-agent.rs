//! `membrane-agent`: the node daemon's datapath half. Loads the embedded eBPF
//! programs, attaches them to a pod's cgroup v2, pins them under a bpffs
//! directory (so a restart keeps established splices), prints counters and
//! spliced pairs, and detaches. The unix-socket API is later work.

use std::{net::Ipv4Addr, path::PathBuf, thread, time::Duration};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use membrane_datapath::{ensure_bpffs, Capture, Datapath, Settings, DEFAULT_BPFFS_DIR};

/// Agent configuration: flags, with `MEMBRANE_*` environment fallbacks.
#[derive(Parser, Debug)]
#[command(name = "membrane-agent", about = "membrane eBPF datapath agent")]
struct Config {
    /// bpffs directory for pinned programs, maps and links.
    #[arg(long, env = "MEMBRANE_BPFFS", default_value = DEFAULT_BPFFS_DIR, global = true)]
    bpffs: PathBuf,
    /// Unix socket for the agent API (reserved; not served yet).
    #[arg(
        long,
        env = "MEMBRANE_AGENT_SOCKET",
        default_value = "/var/run/membrane/agent.sock",
        global = true
    )]
    socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Per-cgroup attach options.
#[derive(clap::Args, Debug)]
struct AttachArgs {
    /// The pod's cgroup v2 directory (never a hierarchy root).
    #[arg(long, env = "MEMBRANE_CGROUP")]
    cgroup: PathBuf,
    /// Steer outbound connects to the proxy (iptables-free capture).
    #[arg(long, env = "MEMBRANE_CAPTURE")]
    capture: bool,
    /// The pod's network namespace (`/run/netns/NAME`, `/proc/PID/ns/net`):
    /// hand inbound connections to the proxy's inbound port (sk_lookup).
    #[arg(long, env = "MEMBRANE_INBOUND_NETNS")]
    inbound_netns: Option<PathBuf>,
    /// The proxy's inbound capture port.
    #[arg(long, env = "MEMBRANE_INBOUND_PORT", default_value_t = 15006)]
    inbound_port: u16,
    /// The proxy's outbound capture address.
    #[arg(long, env = "MEMBRANE_PROXY_IP4", default_value = "127.0.0.1")]
    proxy_ip4: Ipv4Addr,
    /// The proxy's outbound capture port.
    #[arg(long, env = "MEMBRANE_OUTBOUND_PORT", default_value_t = 15001)]
    outbound_port: u16,
    /// The proxy's uid: its connects are never steered.
    #[arg(long, env = "MEMBRANE_PROXY_UID", default_value_t = 1337)]
    proxy_uid: u32,
    /// The SO_MARK the proxy sets on upstream sockets: never steered.
    #[arg(long, env = "MEMBRANE_PROXY_MARK", default_value_t = 1337)]
    proxy_mark: u32,
    /// Destination ports never captured (comma-separated).
    #[arg(long, env = "MEMBRANE_EXCLUDE_OUTBOUND_PORTS", value_delimiter = ',')]
    exclude_outbound_ports: Vec<u16>,
    /// Destination CIDRs never captured (comma-separated).
    #[arg(long, env = "MEMBRANE_EXCLUDE_OUTBOUND_CIDRS", value_delimiter = ',')]
    exclude_outbound_cidrs: Vec<ipnet::IpNet>,
    /// Enforce the policy map: refuse connects (EPERM) and splice no pair
    /// without a current ALLOW.
    #[arg(long, env = "MEMBRANE_POLICY_ENFORCE")]
    policy_enforce: bool,
    /// Security identity of the pod owning the cgroup (source of its connects).
    #[arg(long, env = "MEMBRANE_POD_IDENTITY", default_value_t = 0)]
    pod_identity: u32,
    /// Seconds a learned "splicing loses for this service" hint holds.
    #[arg(long, env = "MEMBRANE_HINT_TTL_SECS", default_value_t = 600)]
    hint_ttl_secs: u32,
    /// Splice no new connection (kill switch; benchmarks' "off").
    #[arg(long, env = "MEMBRANE_NO_SPLICE")]
    no_splice: bool,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Load (if needed), attach to the cgroup, pin, and exit.
    Attach(AttachArgs),
    /// Attach, then print counters every interval until killed (pins stay).
    Run {
        #[command(flatten)]
        attach: AttachArgs,
        /// Seconds between counter prints.
        #[arg(long, env = "MEMBRANE_INTERVAL", default_value_t = 5)]
        interval: u64,
    },
    /// Detach from the cgroup; unpin everything when it was the last one.
    Detach {
        /// The pod's cgroup v2 directory.
        #[arg(long, env = "MEMBRANE_CGROUP")]
        cgroup: PathBuf,
    },
    /// Print per-program counters.
    Counters,
    /// List spliced socket pairs.
    Pairs,
}

impl AttachArgs {
    fn attach(&self, bpffs: &std::path::Path) -> Result<Datapath> {
        let dp = Datapath::attach(bpffs, &self.cgroup, &self.settings())
            .with_context(|| format!("attach to {}", self.cgroup.display()))?;
        if let Some(ns) = &self.inbound_netns {
            dp.attach_netns(ns)
                .with_context(|| format!("inbound capture in {}", ns.display()))?;
        }
        Ok(dp)
    }

    fn settings(&self) -> Settings {
        Settings {
            capture: self.capture.then(|| Capture {
                proxy_ip4: self.proxy_ip4,
                outbound_port: self.outbound_port,
                proxy_uid: Some(self.proxy_uid),
                proxy_mark: Some(self.proxy_mark),
                exclude_ports: self.exclude_outbound_ports.clone(),
                exclude_cidrs: self.exclude_outbound_cidrs.clone(),
            }),
            policy_enforce: self.policy_enforce,
            pod_identity: self.pod_identity,
            capture_inbound: self.inbound_netns.is_some(),
            inbound_port: self.inbound_port,
            no_splice: self.no_splice,
            hint_ttl_secs: self.hint_ttl_secs,
            policy_revision: 0,
        }
    }
}

fn print_counters(dp: &Datapath) -> Result<()> {
    println!(
        "{:<14} {:>12} {:>16} {:>10} {:>10} {:>10}",
        "program", "redirected", "redirected_bytes", "fallbacks", "misses", "refused"
    );
    for c in dp.counters()? {
        println!(
            "{:<14} {:>12} {:>16} {:>10} {:>10} {:>10}",
            c.program, c.redirected, c.redirected_bytes, c.fallbacks, c.misses, c.refused
        );
    }
    let s = dp.splice_stats()?;
    println!(
        "sockets switched to plain TCP: {} (left the sockhash: {}, kept in it: {})",
        s.switched_to_tcp, s.unspliced, s.kept
    );
    Ok(())
}

fn main() -> Result<()> {
    let cfg = Config::parse();
    let _reserved = &cfg.socket;
    match &cfg.cmd {
        Cmd::Attach(a) => {
            ensure_bpffs(&cfg.bpffs)?;
            a.attach(&cfg.bpffs)?;
            println!(
                "attached to {} (pinned under {})",
                a.cgroup.display(),
                cfg.bpffs.display()
            );
        }
        Cmd::Run { attach, interval } => {
            ensure_bpffs(&cfg.bpffs)?;
            let dp = attach.attach(&cfg.bpffs)?;
            loop {
                print_counters(&dp)?;
                thread::sleep(Duration::from_secs((*interval).max(1)));
            }
        }
        Cmd::Detach { cgroup } => {
            Datapath::open(&cfg.bpffs)?.detach(cgroup)?;
            println!("detached from {}", cgroup.display());
        }
        Cmd::Counters => {
            let dp = Datapath::open(&cfg.bpffs)?;
            print_counters(&dp)?;
            for (port, _) in dp.plain_hints()? {
                println!("plain path learned for service port {port}");
            }
        }
        Cmd::Pairs => {
            for (a, b) in Datapath::open(&cfg.bpffs)?.spliced_pairs()? {
                println!(
                    "{} -> {}  <=>  {} -> {}",
                    a.local, a.remote, b.local, b.remote
                );
            }
        }
    }
    Ok(())
}
