//! The prefilter benchmark's page: the per-packet table, the senders' check, the
//! real-packet table (rates and CPU per dropped packet, with the ratios to native XDP) and,
//! in words, what limited the rates.

use crate::flood::Sender;
use crate::report::{median, num, ratio, Report};
use crate::Run;

/// Everything the page shows.
pub(crate) struct Results<'a> {
    pub(crate) cidrs: usize,
    pub(crate) reps: usize,
    pub(crate) secs: f64,
    pub(crate) repeat: u32,
    /// (program, denied ns, allowed ns).
    pub(crate) per_packet: Vec<(&'static str, f64, f64)>,
    /// Each sender against native XDP.
    pub(crate) checked: Vec<(Sender, Run)>,
    pub(crate) chosen: Sender,
    /// The sender was picked by the check (not named by `--sender`).
    pub(crate) picked: bool,
    pub(crate) variants: &'a [&'a str],
    /// Per variant, its repetitions.
    pub(crate) runs: Vec<Vec<Run>>,
}

/// Median of `f` over `runs`.
fn med(runs: &[Run], f: impl Fn(&Run) -> f64) -> f64 {
    median(&runs.iter().map(f).collect::<Vec<_>>())
}

/// "median (min-max)" of `f` over `runs`.
fn spread(runs: &[Run], f: impl Fn(&Run) -> f64) -> String {
    let v: Vec<f64> = runs.iter().map(f).collect();
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{} ({}-{})", num(median(&v), 0), num(lo, 0), num(hi, 0))
}

/// Busy share of the machine's CPUs during a run.
fn busy(r: &Run) -> f64 {
    r.flood.busy_ns / (r.flood.secs * 1e9 * r.flood.threads.max(1) as f64)
}

/// The benchmark's own share of the busy CPU.
fn own_share(r: &Run) -> f64 {
    r.flood.own_ns / r.flood.busy_ns.max(1.0)
}

pub(crate) fn write(page: &mut Report, r: &Results) {
    let threads = r.runs.iter().flatten().map(|x| x.flood.threads).max();
    page.line("");
    page.line(format!(
        "{} repetitions of {} s per variant, the order turning round every repetition; \
         medians (min-max). {} sender threads (one per CPU, each pinned).",
        r.reps,
        r.secs,
        threads.unwrap_or(0)
    ));
    if cfg!(debug_assertions) {
        page.line("");
        page.line(
            "Built with the dev profile (PROFILE=dev): the kernel programs are the same; the \
             senders' own code is slower than a release build's (their per-packet work is \
             mostly in the kernel: a batch per system call).",
        );
    }
    page.line("");

    page.line(format!(
        "## Per packet (BPF_PROG_TEST_RUN, mean of {} runs)\n",
        r.repeat
    ));
    let rows: Vec<Vec<String>> = r
        .per_packet
        .iter()
        .map(|(n, d, a)| vec![n.to_string(), format!("{d:.0}"), format!("{a:.0}")])
        .collect();
    page.table(
        &["program", "denied source, ns", "allowed source, ns"],
        &rows,
    );
    page.line(
        "nftables has no test-run hook: its cost is in the next tables only. The tc figure \
         includes building the skb's test context, the XDP one the xdp_buff's.\n",
    );

    page.line("## The load\n");
    page.line(format!(
        "The deny set: {} prefixes. A flood of pre-built Ethernet/IPv4/UDP frames (60 \
             bytes) from 253 sources of a denied /24 to the node, over a veth pair from a \
             peer namespace: 256 frames per sender thread, each with its own source address \
             and port, so it is not one flow. Each sender kind flooded native XDP once:\n",
        r.cidrs
    ));
    let rows: Vec<Vec<String>> = r
        .checked
        .iter()
        .map(|(s, x)| {
            vec![
                format!(
                    "{}{}",
                    s.name(),
                    if *s == r.chosen { " (used)" } else { "" }
                ),
                s.describe(),
                num(x.sent_rate(), 0),
                num(x.rate(), 0),
                num(x.own_per_drop(), 0),
            ]
        })
        .collect();
    page.table(
        &[
            "sender",
            "how",
            "sent/s",
            "dropped/s",
            "own CPU ns per drop",
        ],
        &rows,
    );
    page.line(format!(
        "Used below: `{}`, {}.\n",
        r.chosen.name(),
        if r.picked {
            "the cheapest per dropped packet in this check"
        } else {
            "named by --sender"
        }
    ));

    page.line("## Real packets\n");
    let base = &r.runs[0];
    let (base_rate, base_busy, base_own) = (
        med(base, Run::rate),
        med(base, Run::busy_per_drop),
        med(base, Run::own_per_drop),
    );
    let rows: Vec<Vec<String>> = r
        .variants
        .iter()
        .zip(&r.runs)
        .map(|(v, runs)| {
            let reached = med(runs, |x| x.dropped as f64 / x.flood.sent.max(1) as f64);
            vec![
                v.to_string(),
                spread(runs, Run::rate),
                ratio(med(runs, Run::rate), base_rate),
                num(med(runs, Run::sent_rate), 0),
                format!("{:.0}%", reached * 100.0),
                spread(runs, Run::busy_per_drop),
                ratio(med(runs, Run::busy_per_drop), base_busy),
                spread(runs, Run::own_per_drop),
                ratio(med(runs, Run::own_per_drop), base_own),
            ]
        })
        .collect();
    page.table(
        &[
            "variant",
            "dropped/s",
            "× xdp-native",
            "sent/s",
            "of sent, dropped",
            "CPU ns per drop (machine)",
            "×",
            "CPU ns per drop (own)",
            "×",
        ],
        &rows,
    );
    page.line(
        "`none`: no filter; the packets that reached the node's device (the stack drops \
         them at its first IPv4 check, as they are not addressed to its MAC): the floor of \
         the senders, the veth pair and the skb path. CPU (machine): the busy time of all \
         CPUs over the window from `/proc/stat` (user, nice, system, irq, softirq) per \
         dropped packet; CPU (own): the flood's threads (the softirqs they served \
         included: tick accounting charges them to the interrupted task) and the \
         ksoftirqd threads. Ratios are of medians.\n",
    );

    page.line("## What limited the rates\n");
    for l in verdict(r) {
        page.line(l);
    }
    page.line("");
}

/// The words: were the CPUs the limit, did every packet reach the filter, which filter
/// costs the least.
fn verdict(r: &Results) -> Vec<String> {
    let all: Vec<Run> = r.runs.iter().flatten().copied().collect();
    let busy_share = med(&all, busy);
    let own = med(&all, own_share);
    let mut out = Vec::new();
    out.push(format!(
        "- The CPUs were {:.0}% busy during the floods (median of every run); the \
         benchmark's own threads (senders, ksoftirqd) account for {:.0}% of that busy time, \
         the rest is other work on the machine.",
        busy_share * 100.0,
        own * 100.0
    ));
    if busy_share >= 0.9 {
        out.push(
            "- The CPUs were the limit. On a veth pair the receiving side (veth's NAPI and \
             XDP, or the backlog, tc, nftables and the stack) runs in softirq on the \
             sending CPU, so each CPU alternates between sending and filtering, and the \
             rate is what both cost together per packet: the CPU per dropped packet ranks \
             the filters."
                .into(),
        );
    } else {
        out.push(format!(
            "- The CPUs were not saturated ({:.0}% busy): the senders stalled (waiting on \
             the kernel), so the rates understate what the filters can drop; the CPU per \
             dropped packet still compares them.",
            busy_share * 100.0
        ));
    }
    let mut short = Vec::new();
    for (v, runs) in r.variants.iter().zip(&r.runs) {
        let reached = med(runs, |x| x.dropped as f64 / x.flood.sent.max(1) as f64);
        if reached < 0.98 {
            short.push(format!("{v} {:.0}%", reached * 100.0));
        }
    }
    if short.is_empty() {
        out.push(
            "- Every variant dropped (or, `none`, received) all that was sent: nothing \
             was lost before a filter, so no filter fell behind its senders; the senders \
             and the receive work they trigger on the same CPUs set the rates."
                .into(),
        );
    } else {
        out.push(format!(
            "- Not everything sent reached the filter ({}): the rest was dropped before it \
             (veth's XDP ring or the backlog queue full), so there the receiving side was \
             the limit, not the senders.",
            short.join(", ")
        ));
    }
    let by_own = own < 0.9;
    let key = |runs: &Vec<Run>| {
        if by_own {
            med(runs, Run::own_per_drop)
        } else {
            med(runs, Run::busy_per_drop)
        }
    };
    let mut ranked: Vec<(&str, f64)> = r
        .variants
        .iter()
        .zip(&r.runs)
        .filter(|(v, _)| **v != "none")
        .map(|(v, runs)| (*v, key(runs)))
        .collect();
    ranked.sort_by(|a, b| a.1.total_cmp(&b.1));
    let native_rank = ranked.iter().position(|(v, _)| *v == "xdp-native");
    let floor = r
        .variants
        .iter()
        .position(|v| *v == "none")
        .map(|i| key(&r.runs[i]));
    out.push(format!(
        "- Ranked by CPU per dropped packet, {}, least first: {}{}.",
        if by_own {
            "the benchmark's own (the machine's busy time includes other work)"
        } else {
            "the machine's busy time"
        },
        ranked
            .iter()
            .map(|(v, ns)| format!("{v} {ns:.0} ns"))
            .collect::<Vec<_>>()
            .join(", "),
        floor.map_or(String::new(), |f| format!(
            "; without a filter the floor is {f:.0} ns (what a filter costs above it, or \
             saves below it by leaving the skb path early)"
        ))
    ));
    if native_rank.is_some_and(|i| i > 0) {
        out.push(
            "- Native XDP is not the cheapest here because this is a veth pair: the frames \
             reach `ul0` as skbs the peer's sender already built, and veth's native XDP runs \
             in its own NAPI poll on an xdp_buff made from each skb (a ring between the two \
             ends, and a copy when the skb's headroom is short of XDP's 256 bytes), so it \
             skips no allocation and adds a hop. On a physical NIC, native XDP runs in the \
             driver on the receive buffer before any skb exists; this machine has no such \
             device to measure it on, and the BPF_PROG_TEST_RUN table is the programs' own \
             cost without either path."
                .into(),
        );
    }
    out
}
