//! The XDP prefilter's benchmark (`bench/prefilter.sh`): the same deny set (10,000 CIDRs by
//! default) in the XDP prefilter (native and generic), in its tc twin (`mb_prefilter_tc`,
//! the same lookup at tc ingress) and in an nftables set on the device's netdev ingress
//! hook, side by side in one run:
//!
//! - per packet: `BPF_PROG_TEST_RUN` of the XDP program and the tc twin, `--repeat` times
//!   on a denied and an allowed frame (the kernel's mean ns per run; nftables has no such
//!   hook, so it has only the next figure);
//! - real packets (nftables merges overlapping prefixes of the set: `auto-merge`, the
//!   same addresses denied): a UDP flood from a denied source in a peer namespace to a node
//!   namespace over a veth pair, for `--secs` per variant and repetition (the order of
//!   the variants turning round every repetition), counting what the filter dropped
//!   (the prefilter's counters, the nftables rule's counter) per second.
//!
//! Writes a Markdown page with the medians, the ratios to native XDP and the load
//! average before and after. Root; everything lives in namespaces and a bpffs directory
//! of its own, removed at the end.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    net::{Ipv4Addr, UdpSocket},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
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

const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 7);
const ALLOWED_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);

struct Opts {
    out: PathBuf,
    reps: usize,
    secs: f64,
    cidrs: usize,
    repeat: u32,
}

fn opts(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        out: PathBuf::from("bench/results/prefilter.md"),
        reps: 5,
        secs: 2.0,
        cidrs: 10_000,
        repeat: 200_000,
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
            other => bail!("unknown option {other}"),
        }
    }
    Ok(o)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("flood") => flood(&args[1..]),
        Some("attach") => attach(&args[1..]),
        _ => bench(&opts(&args)?),
    }
}

/// `flood SRC DST SECS`: UDP datagrams from SRC to DST:9 until SECS passed; prints the
/// count sent.
fn flood(args: &[String]) -> Result<()> {
    let s = UdpSocket::bind((args[0].parse::<Ipv4Addr>()?, 0))?;
    s.connect((args[1].parse::<Ipv4Addr>()?, 9))?;
    let end = Instant::now() + Duration::from_secs_f64(args[2].parse()?);
    let mut sent = 0u64;
    let buf = [0u8; 18];
    while Instant::now() < end {
        for _ in 0..256 {
            if s.send(&buf).is_ok() {
                sent += 1;
            }
        }
    }
    println!("{sent}");
    Ok(())
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

fn frame(src: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    let mut ip = vec![0x45, 0, 0, 46, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&NODE_IP.octets());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0x10, 0x00, 0, 9, 0, 26, 0, 0]);
    f.extend_from_slice(&[0u8; 18]);
    f
}

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

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

const VARIANTS: [&str; 4] = ["xdp-native", "xdp-generic", "tc", "nftables"];

fn bench(o: &Opts) -> Result<()> {
    let load_before = loadavg();
    let pins = PinDir::new(&unique_name());
    ensure_bpffs(pins.path())?;
    let node = NodeDatapath::load(pins.path().join("node"), &NodeSettings::default())?;
    let (xdp_pin, tc_pin) = node.load_prefilter_programs()?;
    let set = deny_set(o.cidrs);
    node.sync_prefilter(&set)?;

    // Per packet, BPF_PROG_TEST_RUN.
    let denied = frame(PEER_IP);
    let allowed = frame(ALLOWED_IP);
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
    let me = std::env::current_exe()?;
    let nft_rules = {
        let mut s = String::from("table netdev mbbench {\n set deny { type ipv4_addr; flags interval; auto-merge; elements = { ");
        let elems: Vec<String> = set.iter().map(IpNet::to_string).collect();
        s.push_str(&elems.join(", "));
        s.push_str(" } }\n chain ingress { type filter hook ingress device \"ul0\" priority 0; ip saddr @deny counter drop; }\n}\n");
        s
    };
    let nft_file = std::env::temp_dir().join(format!("{}.nft", unique_name()));
    std::fs::write(&nft_file, &nft_rules)?;
    let nft_count = || -> Result<u64> {
        let out = sh(node_ns
            .exec("nft")
            .args(["list", "chain", "netdev", "mbbench", "ingress"]))?;
        let n = out
            .split("counter packets ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .context("nft counter")?;
        Ok(n.parse()?)
    };
    let link_pin = pins.path().join("bench-link");
    let mut drops: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
    let mut sent: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
    for rep in 0..o.reps {
        for k in 0..VARIANTS.len() {
            let i = (k + rep) % VARIANTS.len();
            let v = VARIANTS[i];
            let count = || -> Result<u64> {
                Ok(match v {
                    "nftables" => nft_count()?,
                    _ => node.prefilter_stats()?.denied_v4,
                })
            };
            match v {
                "nftables" => {
                    sh(node_ns.exec("nft").arg("-f").arg(&nft_file))?;
                }
                _ => {
                    let (kind, prog) = match v {
                        "xdp-native" => ("native", &xdp_pin),
                        "xdp-generic" => ("generic", &xdp_pin),
                        _ => ("tc", &tc_pin),
                    };
                    sh(Command::new("nsenter")
                        .arg(format!("--net={}", node_ns.path().display()))
                        .arg(&me)
                        .args(["attach", kind])
                        .arg(prog)
                        .arg(&link_pin))?;
                }
            }
            let before = count()?;
            let t = Instant::now();
            let out = sh(Command::new("nsenter")
                .arg(format!("--net={}", peer_ns.path().display()))
                .arg(&me)
                .args(["flood", &PEER_IP.to_string(), &NODE_IP.to_string()])
                .arg(o.secs.to_string()))?;
            let secs = t.elapsed().as_secs_f64();
            let dropped = count()? - before;
            let n: f64 = out.trim().parse()?;
            drops[i].push(dropped as f64 / secs);
            sent[i].push(n / secs);
            match v {
                "nftables" => {
                    sh(node_ns
                        .exec("nft")
                        .args(["delete", "table", "netdev", "mbbench"]))?;
                }
                _ => std::fs::remove_file(&link_pin)?,
            }
        }
    }
    let _ = std::fs::remove_file(&nft_file);
    let load_after = loadavg();

    let mut md = String::new();
    writeln!(
        md,
        "# XDP prefilter vs tc vs nftables: {} CIDRs\n",
        set.len()
    )?;
    writeln!(
        md,
        "Load average before: {load_before}; after: {load_after} (1, 5, 15 min). {} CPUs. \
         {} repetitions of {} s per variant, the order turning round every repetition; \
         medians (min-max).\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        o.reps,
        o.secs
    )?;
    if cfg!(debug_assertions) {
        writeln!(
            md,
            "Built with the dev profile (PROFILE=dev): the kernel programs are the same, \
             the flood's sender is slower than a release build's.\n"
        )?;
    }
    writeln!(
        md,
        "## Per packet (BPF_PROG_TEST_RUN, mean of {} runs)\n",
        o.repeat
    )?;
    writeln!(md, "| program | denied source, ns | allowed source, ns |")?;
    writeln!(md, "|---|---|---|")?;
    for (name, d, a) in &per_packet {
        writeln!(md, "| {name} | {d:.0} | {a:.0} |")?;
    }
    writeln!(
        md,
        "\nnftables has no test-run hook: its cost is in the next table only. The tc \
         figure includes building the skb's test context, the XDP one the xdp_buff's.\n"
    )?;
    writeln!(
        md,
        "## Real packets (UDP flood from a denied source over a veth pair)\n"
    )?;
    writeln!(md, "| variant | dropped/s | ratio to xdp-native | sent/s |")?;
    writeln!(md, "|---|---|---|---|")?;
    let base = median(&mut drops[0].clone());
    for (i, v) in VARIANTS.iter().enumerate() {
        let mut d = drops[i].clone();
        let m = median(&mut d);
        let (lo, hi) = (d[0], d[d.len() - 1]);
        let s = median(&mut sent[i].clone());
        writeln!(
            md,
            "| {v} | {m:.0} ({lo:.0}-{hi:.0}) | {:.2} | {s:.0} |",
            m / base
        )?;
    }
    let saturated = (0..VARIANTS.len())
        .all(|i| median(&mut drops[i].clone()) >= 0.98 * median(&mut sent[i].clone()));
    if saturated {
        writeln!(
            md,
            "\nEvery variant dropped all the sender produced: the one sender, not the \
             filter, set these rates, so they do not rank the filters (a faster load, \
             pktgen or several senders, is still to be added)."
        )?;
    }
    writeln!(
        md,
        "\nOn a veth pair the sender's CPU also runs the receiver's path (one sender \
         thread, one syscall per datagram), so the rates include the sender's cost and \
         the differences between the filters are diluted; the per-packet table isolates \
         the programs."
    )?;
    if let Some(d) = o.out.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(&o.out, &md)?;
    print!("{md}");
    Ok(())
}
