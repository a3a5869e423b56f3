//! What the tc programs cost under real traffic: the kernel's own run-time statistics of
//! each program (`BPF_ENABLE_STATS`: a run count and the ns spent, as `bpftool prog show`
//! prints them), read before and after a connection-rate run. The statistics are on only
//! while a [`Window`] lives: they add two clock reads to every run of every program on
//! the machine, so the timed repetitions run without them.

use std::os::fd::OwnedFd;

use anyhow::{Context, Result};
use aya::sys::{enable_stats, Stats};

use crate::mbnode::Endpoint;

const FROM: &str = "mb_from_container";
const TO: &str = "mb_to_container";

/// The programs a connection crosses, in the order its first packet does: (row label,
/// endpoint index (0 client, 1 backend), program).
pub const PROGS: [(&str, usize, &str); 4] = [
    ("client from-container", 0, FROM),
    ("backend to-container", 1, TO),
    ("backend from-container", 1, FROM),
    ("client to-container", 0, TO),
];

/// The kernel's counters of one program.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    /// Runs so far (while statistics were on).
    pub runs: u64,
    /// ns spent in those runs.
    pub ns: u64,
}

/// The kernel's run-time statistics, on while this lives (closing the fd turns them off
/// unless someone else holds them on).
pub struct Window(#[allow(dead_code)] OwnedFd);

/// Turns the statistics on.
pub fn on() -> Result<Window> {
    Ok(Window(
        enable_stats(Stats::RunTime).context("BPF_ENABLE_STATS(run time)")?,
    ))
}

/// The counters of [`PROGS`] on the client's and the backend's endpoints.
pub fn read(eps: [&Endpoint; 2]) -> Result<Vec<Counts>> {
    PROGS
        .iter()
        .map(|(label, ep, prog)| {
            let info = eps[*ep]
                .prog(prog)?
                .info()
                .with_context(|| format!("program info of {label}"))?;
            Ok(Counts {
                runs: info.run_count(),
                ns: info.run_time().as_nanos() as u64,
            })
        })
        .collect()
}

/// Per program: (runs per connection, ns per run) between two readings over `conns`
/// connections.
pub fn per_connection(before: &[Counts], after: &[Counts], conns: u64) -> Vec<(f64, f64)> {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| {
            let runs = a.runs.saturating_sub(b.runs);
            let ns = a.ns.saturating_sub(b.ns);
            let per_run = if runs > 0 {
                ns as f64 / runs as f64
            } else {
                f64::NAN
            };
            (runs as f64 / conns.max(1) as f64, per_run)
        })
        .collect()
}
