//! The ClusterIP benchmark's page: the connection rates (median, spread, ratios to
//! direct and to membrane's tc programs without a service), the CPU each connection took,
//! what the tc programs cost under the real traffic (the kernel's statistics) and in
//! BPF_PROG_TEST_RUN per packet.

use crate::clusterip::Rate;
use crate::pktcost;
use crate::progstats::PROGS;
use crate::report::{median, num, ratio, reps, Report};

/// The variants' places in a [`Row`]: the references the ratios divide by.
const DIRECT: usize = 0;
const MB_ADDRESS: usize = 2;

/// Per-rep rates, CPU and failures of one variant at one service count.
#[derive(Default)]
pub struct Cell {
    pub rates: Vec<f64>,
    pub cpu_us: Vec<f64>,
    pub failed: u64,
    pub first_error: String,
}

impl Cell {
    pub fn add(&mut self, r: Rate) {
        self.rates.push(r.per_sec);
        self.cpu_us.push(r.cpu_us);
        self.failed += r.failed;
        if self.first_error.is_empty() {
            self.first_error = r.first_error;
        }
    }
}

/// Per variant, per repetition, ns per step of [`pktcost::rows`] (empty: the variant has no
/// tc programs).
pub type PacketCosts = Vec<Vec<Vec<f64>>>;

/// Everything measured at one service count, per variant.
pub struct Row {
    pub n: usize,
    pub cells: Vec<Cell>,
    pub packets: PacketCosts,
    /// Per program of [`PROGS`]: (runs per connection, ns per run), for the variants
    /// with tc programs.
    pub progs: Vec<Option<Vec<(f64, f64)>>>,
}

/// "min–max" of `xs`.
fn spread(xs: &[f64]) -> String {
    let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{}–{}", num(lo, 0), num(hi, 0))
}

/// Writes the tables of `rows` (variant names `names`).
pub fn write(r: &mut Report, names: &[String], rows: &[Row], packet_conns: u16) {
    r.line("The ClusterIP connected to is the last service of the set; 'vs direct' divides by the");
    r.line("direct cell of the same service count (measured in the same repetitions), 'vs tc");
    r.line("address' by membrane's tc programs on the backends' addresses (no service). The");
    r.line("variants without a service connect to the two backends' addresses at random, as the");
    r.line("load balancer spreads its connections over them. CPU: the");
    r.line("client's and the server's CPU time per connection (their threads, which includes the");
    r.line("packet processing the kernel does in their context), median over the repetitions.");
    r.line("");
    let mut table = Vec::new();
    for row in rows {
        let dm = median(&row.cells[DIRECT].rates);
        let am = median(&row.cells[MB_ADDRESS].rates);
        let dc = median(&row.cells[DIRECT].cpu_us);
        for (i, c) in row.cells.iter().enumerate() {
            let m = median(&c.rates);
            let cpu = median(&c.cpu_us);
            table.push(vec![
                num(row.n as f64, 0),
                names[i].clone(),
                num(m, 0),
                spread(&c.rates),
                ratio(m, dm),
                if i == DIRECT {
                    "-".into()
                } else {
                    ratio(m, am)
                },
                num(cpu, 1),
                ratio(cpu, dc),
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
            "min–max",
            "vs direct",
            "vs tc address",
            "CPU µs/conn",
            "CPU vs direct",
            "failed",
            "per-rep connections/s",
        ],
        &table,
    );
    prog_table(r, names, rows);
    packet_table(r, names, rows, packet_conns);
    for row in rows {
        for (i, c) in row.cells.iter().enumerate() {
            if c.failed > 0 {
                r.line(format!(
                    "- {} services, {}: {} failed; the first: {}",
                    row.n, names[i], c.failed, c.first_error
                ));
            }
        }
    }
}

/// What the programs cost under real traffic: per program, runs per connection, ns per
/// run and ns per connection, and their sum beside the CPU the variant took above direct.
fn prog_table(r: &mut Report, names: &[String], rows: &[Row]) {
    let with: Vec<usize> = (0..names.len())
        .filter(|&i| rows.iter().any(|row| row.progs[i].is_some()))
        .collect();
    if with.is_empty() {
        return;
    }
    r.line("");
    r.line(
        "The tc programs under the real connection storm (one more run per variant with the \
         kernel's BPF statistics on, which add two clock reads per run: `bpftool prog show`'s \
         run_cnt and run_time_ns): runs per connection, ns per run, ns per connection. \
         'CPU above direct': the variant's CPU per connection less direct's (medians of the \
         repetitions), to set the programs' sum against.",
    );
    r.line("");
    let mut head = vec!["services".to_owned(), "program".to_owned()];
    for &i in &with {
        head.push(format!("{}: runs/conn", names[i]));
        head.push("ns/run".into());
        head.push("ns/conn".into());
    }
    let mut table = Vec::new();
    for row in rows {
        let mut totals = vec![0f64; with.len()];
        for (p, (label, _, _)) in PROGS.iter().enumerate() {
            let mut line = vec![num(row.n as f64, 0), (*label).to_owned()];
            for (j, &i) in with.iter().enumerate() {
                match &row.progs[i] {
                    Some(v) => {
                        let (runs, ns) = v[p];
                        let per_conn = if ns.is_finite() { runs * ns } else { 0.0 };
                        totals[j] += per_conn;
                        line.extend([num(runs, 2), num(ns, 0), num(per_conn, 0)]);
                    }
                    None => line.extend(["-".into(), "-".into(), "-".into()]),
                }
            }
            table.push(line);
        }
        let dc = median(&row.cells[DIRECT].cpu_us);
        let mut line = vec![num(row.n as f64, 0), "all four".to_owned()];
        let mut above = vec![num(row.n as f64, 0), "CPU above direct".to_owned()];
        for (j, &i) in with.iter().enumerate() {
            line.extend([String::new(), String::new(), num(totals[j], 0)]);
            let cpu = (median(&row.cells[i].cpu_us) - dc) * 1000.0;
            above.extend([String::new(), String::new(), num(cpu, 0)]);
        }
        table.push(line);
        table.push(above);
    }
    let head: Vec<&str> = head.iter().map(String::as_str).collect();
    r.table(&head, &table);
}

/// The per-packet table: for every service count and packet of a connection, the median
/// over the repetitions of each membrane variant's mean ns per program run.
fn packet_table(r: &mut Report, names: &[String], rows: &[Row], conns: u16) {
    let with: Vec<usize> = (0..names.len())
        .filter(|&i| rows.iter().any(|row| !row.packets[i].is_empty()))
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
    head.extend(with.iter().map(|&i| format!("{} (ns)", names[i])));
    let mut table = Vec::new();
    for row in rows {
        let steps: Vec<&str> = pktcost::rows().collect();
        let mut total = vec![0f64; with.len()];
        for (s, step) in steps.iter().enumerate() {
            let mut line = vec![num(row.n as f64, 0), (*step).to_owned()];
            for (j, &i) in with.iter().enumerate() {
                let xs: Vec<f64> = row.packets[i].iter().map(|v| v[s]).collect();
                let m = median(&xs);
                total[j] += m;
                line.push(num(m, 0));
            }
            table.push(line);
        }
        let mut line = vec![num(row.n as f64, 0), "sum of one of each".to_owned()];
        line.extend(total.iter().map(|t| num(*t, 0)));
        table.push(line);
    }
    let head: Vec<&str> = head.iter().map(String::as_str).collect();
    r.table(&head, &table);
}
