//! The XDP prefilter's benchmark (`bench/prefilter.sh`): the same deny set (10,000 CIDRs by
//! default) in the XDP prefilter (native and generic), in its tc twin (`mb_prefilter_tc`,
//! the same lookup at tc ingress) and in an nftables set on the device's netdev ingress
//! hook, side by side in one run:
//!
//! - per packet: `BPF_PROG_TEST_RUN` of the XDP program and the tc twin, `--repeat` times
//!   on a denied and an allowed frame (the kernel's mean ns per run; nftables has no such
//!   hook, so it has only the next figures);
//! - real packets (nftables merges overlapping prefixes of the set: `auto-merge`, the
//!   same addresses denied): a flood of pre-built UDP frames from 253 sources of a denied
//!   /24 ([`flood`]: one sender thread per CPU, each pinned) from a peer namespace to a
//!   node namespace over a veth pair, for `--secs` per variant and repetition (the order
//!   of the variants turning round every repetition). Per variant: what the filter dropped
//!   per second (the prefilter's counters, the nftables rule's counter), what was sent,
//!   and the CPU each dropped packet cost (busy CPU of the machine from `/proc/stat`, and
//!   the benchmark's own: the senders and ksoftirqd), with the ratios to native XDP. On a
//!   veth pair the receiver runs on the senders' CPUs, so once the CPUs are the limit
//!   the CPU per packet, not the rate alone, ranks the filters. A variant without any
//!   filter (`none`: the stack drops the frames at its first IPv4 check) is the floor of
//!   the sender and the veth pair.
//!
//! Before that, each sender kind ([`flood::Sender`]) floods native XDP once, and the one
//! that costs the least CPU per dropped packet is used (unless `--sender` names one).
//!
//! Writes a Markdown page with the medians, the ratios, the load average before and
//! after and, in words, what limited the rates. Root; everything lives in namespaces and a
//! bpffs directory of its own, removed at the end.

#[path = "prefilter/flood.rs"]
mod flood;
#[path = "prefilter/page.rs"]
mod page;
#[allow(dead_code)] // Shared with tcpath, which uses all of it.
#[path = "tcpath/report.rs"]
mod report;

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context, Result};
use aya::{
    programs::{links::FdLink, tc::TcAttachOptions, LinkOrder, SchedClassifier, TcAttachType},
    programs::{TestRun, TestRunOptions, Xdp},
};
use ipnet::{IpNet, Ipv4Net};
use membrane_datapath::{
    ensure_bpffs,
    node::{NodeDatapath, NodeSettings},
};
use membrane_test_support::{unique_name, Netns, PinDir};

use flood::{Outcome, Sender};

const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 7);
const ALLOWED_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);

/// The variants, the reference (native XDP) first.
const VARIANTS: [&str; 5] = ["xdp-native", "xdp-generic", "tc", "nftables", "none"];

struct Opts {
    out: PathBuf,
    reps: usize,
    secs: f64,
    cidrs: usize,
    repeat: u32,
    /// `None`: the cheapest per dropped packet in the senders' check.
    sender: Option<Sender>,
}

fn opts(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        out: PathBuf::from("bench/results/prefilter.md"),
        reps: 5,
        secs: 2.0,
        cidrs: 10_000,
        repeat: 200_000,
        sender: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().with_context(|| format!("{a} needs a value"))?;
        match a.as_str() {
            "--out" => o.out = v.into(),
            "--reps" => o.reps = v.parse()?,
            "--secs" => o.secs = v.parse()?,
            "--cidrs" => o.cidrs = v.parse()?,
            "--repeat" => o.repeat = v.parse()?,
            "--sender" if v == "auto" => o.sender = None,
            "--sender" => o.sender = Some(v.parse()?),
            other => bail!("unknown option {other}"),
        }
    }
    if o.reps == 0 || o.secs <= 0.0 {
        bail!("--reps and --secs must be positive");
    }
    Ok(o)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("flood") => {
            let out = flood::run(&flood::parse(&args[1..])?)?;
            println!("{}", out.line());
            Ok(())
        }
        Some("attach") => attach(&args[1..]),
        _ => bench(&opts(&args)?),
    }
}

/// `attach KIND PROG_PIN LINK_PIN` inside the node namespace (re-executed there with
/// nsenter, which keeps the bpffs mount): the XDP program (native or generic) or the tc
/// twin on `ul0`, its link pinned at LINK_PIN (unpinning it detaches).
fn attach(args: &[String]) -> Result<()> {
    let (kind, prog, pin) = (&args[0], Path::new(&args[1]), Path::new(&args[2]));
    let link: FdLink = match kind.as_str() {
        "tc" => {
            let mut p = SchedClassifier::from_pin(prog)?;
            let id = p.attach_with_options(
                "ul0",
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )?;
            p.take_link(id)?.try_into()?
        }
        mode => {
            let mut p = Xdp::from_pin(prog, aya_obj::programs::XdpAttachType::Interface)?;
            let flags = match mode {
                "native" => aya::programs::XdpMode::Driver,
                _ => aya::programs::XdpMode::Skb,
            };
            let id = p.attach("ul0", flags)?;
            p.take_link(id)?.try_into()?
        }
    };
    link.pin(pin)?;
    Ok(())
}

/// `n` distinct prefixes (lengths 16-32, deterministic), the peer's /24 among them.
fn deny_set(n: usize) -> BTreeSet<IpNet> {
    let mut set = BTreeSet::new();
    set.insert(IpNet::V4(Ipv4Net::new(PEER_IP, 24).unwrap().trunc()));
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while set.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let addr = Ipv4Addr::from((x as u32) | 0x0100_0000);
        let len = 16 + (x >> 40) as u8 % 17;
        let net = Ipv4Net::new(addr, len).unwrap().trunc();
        // Keep the allowed source and the node out of the set.
        if !net.contains(&ALLOWED_IP) && !net.contains(&NODE_IP) {
            set.insert(IpNet::V4(net));
        }
    }
    set
}

/// The flood's sources: the peer's address first (the UDP sender's), then the rest of
/// the denied /24 but the node's address (.1) and the broadcast address.
const SOURCES: &str = "198.18.0.7,198.18.0.2-198.18.0.254";

/// Mean ns per run of the program pinned at `pin` on `frame`, `repeat` runs.
fn test_run_ns(pin: &Path, xdp: bool, frame: &[u8], repeat: u32) -> Result<f64> {
    let mut out = vec![0u8; frame.len() + 64];
    let o = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        repeat,
        ..TestRunOptions::default()
    };
    let r = if xdp {
        Xdp::from_pin(pin, aya_obj::programs::XdpAttachType::Interface)?.test_run(o)?
    } else {
        SchedClassifier::from_pin(pin)?.test_run(o)?
    };
    Ok(r.duration.as_nanos() as f64)
}

fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One flood against one variant.
#[derive(Clone, Copy, Debug)]
struct Run {
    /// What the flood said.
    flood: Outcome,
    /// Packets the filter dropped (for `none`, that reached the node's device).
    dropped: u64,
}

impl Run {
    /// Dropped per second.
    fn rate(&self) -> f64 {
        self.dropped as f64 / self.flood.secs
    }
    /// Sent per second.
    fn sent_rate(&self) -> f64 {
        self.flood.sent as f64 / self.flood.secs
    }
    /// Busy CPU of the machine per dropped packet, ns.
    fn busy_per_drop(&self) -> f64 {
        self.flood.busy_ns / self.dropped.max(1) as f64
    }
    /// The benchmark's own CPU per dropped packet, ns.
    fn own_per_drop(&self) -> f64 {
        self.flood.own_ns / self.dropped.max(1) as f64
    }
}

/// The node and peer namespaces joined by `ul0`/`ul0p`, the programs and the nftables
/// rules: everything a flood needs.
struct Bed {
    node: NodeDatapath,
    node_ns: Netns,
    peer_ns: Netns,
    xdp_pin: PathBuf,
    tc_pin: PathBuf,
    link_pin: PathBuf,
    nft_file: PathBuf,
    me: PathBuf,
}

impl Bed {
    /// Attaches `variant`.
    fn attach(&self, variant: &str) -> Result<()> {
        let (kind, prog) = match variant {
            "none" => return Ok(()),
            "nftables" => {
                sh(self.node_ns.exec("nft").arg("-f").arg(&self.nft_file))?;
                return Ok(());
            }
            "xdp-native" => ("native", &self.xdp_pin),
            "xdp-generic" => ("generic", &self.xdp_pin),
            _ => ("tc", &self.tc_pin),
        };
        // The previous variant's link goes when its pin is removed, but the kernel
        // releases it a moment later: until then the device is busy (EBUSY, or EEXIST
        // for an XDP program of the other mode).
        let mut tries = 0;
        loop {
            let r = sh(Command::new("nsenter")
                .arg(format!("--net={}", self.node_ns.path().display()))
                .arg(&self.me)
                .args(["attach", kind])
                .arg(prog)
                .arg(&self.link_pin));
            match r {
                Err(e)
                    if tries < 40
                        && ["busy", "File exists"]
                            .iter()
                            .any(|w| format!("{e:#}").contains(w)) =>
                {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                r => return r.map(drop),
            }
        }
    }

    /// Detaches `variant`.
    fn detach(&self, variant: &str) -> Result<()> {
        match variant {
            "none" => {}
            "nftables" => {
                sh(self
                    .node_ns
                    .exec("nft")
                    .args(["delete", "table", "netdev", "mbbench"]))?;
            }
            _ => std::fs::remove_file(&self.link_pin)?,
        }
        Ok(())
    }

    /// What `variant` has dropped so far.
    fn count(&self, variant: &str) -> Result<u64> {
        Ok(match variant {
            "nftables" => {
                let out = sh(self
                    .node_ns
                    .exec("nft")
                    .args(["list", "chain", "netdev", "mbbench", "ingress"]))?;
                out.split("counter packets ")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .context("nft counter")?
                    .parse()?
            }
            "none" => {
                let out = sh(self
                    .node_ns
                    .exec("ip")
                    .args(["-j", "-s", "link", "show", "dev", "ul0"]))?;
                let v: serde_json::Value = serde_json::from_str(&out)?;
                v[0]["stats64"]["rx"]["packets"]
                    .as_u64()
                    .context("ul0's rx packets")?
            }
            _ => self.node.prefilter_stats()?.denied_v4,
        })
    }

    /// Floods `variant` (attached here and detached after) for `secs` with `sender`.
    fn run(&self, variant: &str, sender: Sender, secs: f64) -> Result<Run> {
        self.attach(variant)?;
        let before = self.count(variant)?;
        let out = sh(Command::new("nsenter")
            .arg(format!("--net={}", self.peer_ns.path().display()))
            .arg(&self.me)
            .args([
                "flood",
                "--sender",
                sender.name(),
                "--dev",
                "ul0p",
                "--src",
                SOURCES,
            ])
            .args(["--dst", &NODE_IP.to_string(), "--secs", &secs.to_string()]));
        // The last packets of the window may still be on their way through softirq.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let after = self.count(variant);
        self.detach(variant)?;
        let out = out?;
        let flood = Outcome::parse(out.lines().last().unwrap_or_default())?;
        Ok(Run {
            flood,
            dropped: after? - before,
        })
    }
}

fn bench(o: &Opts) -> Result<()> {
    let mut page = report::Report::new(&format!(
        "XDP prefilter vs tc vs nftables: {} CIDRs",
        o.cidrs
    ));
    let pins = PinDir::new(&unique_name());
    ensure_bpffs(pins.path())?;
    let node = NodeDatapath::load(pins.path().join("node"), &NodeSettings::default())?;
    let (xdp_pin, tc_pin) = node.load_prefilter_programs()?;
    let set = deny_set(o.cidrs);
    node.sync_prefilter(&set)?;

    // Per packet, BPF_PROG_TEST_RUN.
    let denied = flood::frame(PEER_IP, 4096, NODE_IP);
    let allowed = flood::frame(ALLOWED_IP, 4096, NODE_IP);
    let mut per_packet = Vec::new();
    for (name, pin, xdp) in [("xdp", &xdp_pin, true), ("tc", &tc_pin, false)] {
        let d = test_run_ns(pin, xdp, &denied, o.repeat)?;
        let a = test_run_ns(pin, xdp, &allowed, o.repeat)?;
        per_packet.push((name, d, a));
    }

    // Real packets: node and peer namespaces joined by a veth pair.
    let node_ns = Netns::add(&unique_name());
    let peer_ns = Netns::add(&unique_name());
    sh(Command::new("ip").args([
        "link",
        "add",
        "ul0",
        "netns",
        &node_ns.name,
        "type",
        "veth",
        "peer",
        "name",
        "ul0p",
        "netns",
        &peer_ns.name,
    ]))?;
    node_ns.ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", "ul0"]);
    node_ns.ip(&["link", "set", "ul0", "up"]);
    peer_ns.ip(&["addr", "add", &format!("{PEER_IP}/24"), "dev", "ul0p"]);
    peer_ns.ip(&["link", "set", "ul0p", "up"]);
    let nft_rules = {
        let mut s = String::from("table netdev mbbench {\n set deny { type ipv4_addr; flags interval; auto-merge; elements = { ");
        let elems: Vec<String> = set.iter().map(IpNet::to_string).collect();
        s.push_str(&elems.join(", "));
        s.push_str(" } }\n chain ingress { type filter hook ingress device \"ul0\" priority 0; ip saddr @deny counter drop; }\n}\n");
        s
    };
    let nft_file = std::env::temp_dir().join(format!("{}.nft", unique_name()));
    std::fs::write(&nft_file, &nft_rules)?;
    let bed = Bed {
        node,
        node_ns,
        peer_ns,
        xdp_pin,
        tc_pin,
        link_pin: pins.path().join("bench-link"),
        nft_file: nft_file.clone(),
        me: std::env::current_exe()?,
    };
    let result = measure(&bed, o);
    let _ = std::fs::remove_file(&nft_file);
    let (checked, chosen, runs) = result?;

    page::write(
        &mut page,
        &page::Results {
            cidrs: set.len(),
            reps: o.reps,
            secs: o.secs,
            repeat: o.repeat,
            per_packet,
            checked,
            chosen,
            picked: o.sender.is_none(),
            variants: &VARIANTS,
            runs,
        },
    );
    if let Some(d) = o.out.parent() {
        std::fs::create_dir_all(d)?;
    }
    page.finish(&o.out)
}

type Measured = (Vec<(Sender, Run)>, Sender, Vec<Vec<Run>>);

/// The senders' check, then every variant `reps` times.
fn measure(bed: &Bed, o: &Opts) -> Result<Measured> {
    let mut checked = Vec::new();
    for s in Sender::ALL {
        let t = Instant::now();
        let r = bed.run(VARIANTS[0], s, o.secs)?;
        eprintln!(
            "prefilter: sender {}: {:.0} dropped/s, {:.0} ns own CPU per drop ({:.1} s)",
            s.name(),
            r.rate(),
            r.own_per_drop(),
            t.elapsed().as_secs_f64()
        );
        checked.push((s, r));
    }
    let chosen = o.sender.unwrap_or_else(|| {
        checked
            .iter()
            .filter(|(_, r)| r.dropped > 0)
            .min_by(|a, b| a.1.own_per_drop().total_cmp(&b.1.own_per_drop()))
            .map_or(Sender::Mmsg, |(s, _)| *s)
    });
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); VARIANTS.len()];
    for rep in 0..o.reps {
        for k in 0..VARIANTS.len() {
            let i = (k + rep) % VARIANTS.len();
            let r = bed.run(VARIANTS[i], chosen, o.secs)?;
            eprintln!(
                "prefilter: rep {} {}: {:.0} dropped/s of {:.0} sent/s, {:.0} ns busy / {:.0} ns own CPU per drop",
                rep + 1,
                VARIANTS[i],
                r.rate(),
                r.sent_rate(),
                r.busy_per_drop(),
                r.own_per_drop()
            );
            runs[i].push(r);
        }
    }
    Ok((checked, chosen, runs))
}
