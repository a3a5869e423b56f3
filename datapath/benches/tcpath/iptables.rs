//! The references in iptables (Debian's `iptables`, both of its backends: `iptables`,
//! the nf_tables one its alternative selects, and `iptables-legacy`, the x_tables one
//! kube-proxy grew up on): the same L3/L4 rules as a filter chain, and services in
//! kube-proxy's shape. Rules go in with one `iptables-restore` inside the benchmark's own
//! node namespace, never the host's tables.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::Stdio;

use anyhow::{bail, Context, Result};
use membrane_test_support::sandbox::Netns;

/// The filter chain the policy reference jumps to from FORWARD.
pub const CHAIN: &str = "MB-BENCH";

/// An iptables backend, by its command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `iptables` (Debian's default: nf_tables).
    Nft,
    /// `iptables-legacy` (x_tables).
    Legacy,
}

impl Backend {
    /// Both, nf_tables first.
    pub const ALL: [Backend; 2] = [Backend::Nft, Backend::Legacy];

    fn cmd(self) -> &'static str {
        match self {
            Backend::Nft => "iptables",
            Backend::Legacy => "iptables-legacy",
        }
    }

    /// Its name in a results table.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Nft => "iptables (nf_tables)",
            Backend::Legacy => "iptables-legacy",
        }
    }

    /// A short tag for namespace names.
    pub fn tag(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "leg",
        }
    }

    /// `iptables --version`, e.g. "iptables v1.8.9 (nf_tables)"; an error when missing.
    pub fn version(self) -> Result<String> {
        let out = std::process::Command::new(self.cmd())
            .arg("--version")
            .output()
            .with_context(|| {
                format!(
                    "{} is not installed (the bench scripts apt-get install iptables)",
                    self.cmd()
                )
            })?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

/// The source address of rule `i` of the policy reference (one remote per rule, as each
/// membrane rule names one identity).
pub fn rule_source(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i as u32)
}

/// `n` filter rules in [`CHAIN`], FORWARD jumping to it: `n - 1` that allow UDP to
/// `port` from [`rule_source`]`(i)`, then the one the flood matches, last: DROP UDP to
/// `port` from `client`. Every packet of the flood walks the whole chain.
pub fn policy_rules(n: usize, client: Ipv4Addr, port: u16) -> String {
    let mut s = format!("*filter\n:{CHAIN} - [0:0]\n-A FORWARD -j {CHAIN}\n");
    for i in 0..n.saturating_sub(1) {
        let _ = writeln!(
            s,
            "-A {CHAIN} -s {}/32 -p udp -m udp --dport {port} -j ACCEPT",
            rule_source(i)
        );
    }
    let _ = writeln!(
        s,
        "-A {CHAIN} -s {client}/32 -p udp -m udp --dport {port} -j DROP"
    );
    s.push_str("COMMIT\n");
    s
}

/// The ClusterIP of service `i` (1-based) of the benchmark.
pub fn service_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i as u32)
}

/// Placeholder backends of the services nobody connects to (never routed).
pub fn other_backend(i: usize, b: usize) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 192, 0, 0)) + (2 * i + b) as u32),
        8080,
    )
}

/// `n` TCP services on port 80 in kube-proxy's shape: PREROUTING jumps to
/// KUBE-SERVICES, which holds one match per service (ClusterIP, protocol, port) jumping
/// to that service's KUBE-SVC chain, which picks one of two KUBE-SEP chains with the
/// statistic module (probability 1/2, then the rest), each a DNAT to its backend. The
/// service the benchmark connects to is the last one (`service_ip(n)`) with `backends`.
pub fn kube_proxy_rules(n: usize, backends: [SocketAddrV4; 2]) -> String {
    let mut chains = String::from("*nat\n:KUBE-SERVICES - [0:0]\n");
    let mut rules = String::from("-A PREROUTING -j KUBE-SERVICES\n");
    for i in 1..=n {
        let bs = if i == n {
            backends
        } else {
            [other_backend(i, 0), other_backend(i, 1)]
        };
        let _ = writeln!(
            chains,
            ":KUBE-SVC-{i} - [0:0]\n:KUBE-SEP-{i}-0 - [0:0]\n:KUBE-SEP-{i}-1 - [0:0]"
        );
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -d {}/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-{i}",
            service_ip(i)
        );
        let _ = writeln!(
            rules,
            "-A KUBE-SVC-{i} -m statistic --mode random --probability 0.5 -j KUBE-SEP-{i}-0"
        );
        let _ = writeln!(rules, "-A KUBE-SVC-{i} -j KUBE-SEP-{i}-1");
        for (b, addr) in bs.iter().enumerate() {
            let _ = writeln!(
                rules,
                "-A KUBE-SEP-{i}-{b} -p tcp -m tcp -j DNAT --to-destination {addr}"
            );
        }
    }
    format!("{chains}{rules}COMMIT\n")
}

/// Replaces the tables named in `rules` inside `ns` (`iptables-restore`, which flushes
/// each table it is given).
pub fn restore(b: Backend, ns: &Netns, rules: &str) -> Result<()> {
    let mut child = ns
        .exec(format!("{}-restore", b.cmd()))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn iptables-restore")?;
    child
        .stdin
        .take()
        .context("iptables-restore stdin")?
        .write_all(rules.as_bytes())
        .context("write iptables-restore input")?;
    let out = child.wait_with_output().context("iptables-restore")?;
    if !out.status.success() {
        bail!(
            "iptables-restore in {}: {}",
            ns.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Packets counted by rule number `rule` (1-based) of `chain` in `table`.
pub fn rule_packets(b: Backend, ns: &Netns, table: &str, chain: &str, rule: usize) -> Result<u64> {
    let out = ns
        .exec(b.cmd())
        .args([
            "-w",
            "-t",
            table,
            "-L",
            chain,
            &rule.to_string(),
            "-v",
            "-x",
            "-n",
        ])
        .output()
        .context("iptables -L")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .next()
        .and_then(|w| w.parse().ok())
        .with_context(|| format!("no packet counter for {table} {chain} rule {rule}: {text:?}"))
}
