//! The results file: a Markdown page with the machine, the run's parameters and the load
//! average around it (other work on the machine moves absolute numbers), and the
//! statistics the tables use (medians of repetitions, ratios).

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

/// A results page being written.
pub struct Report {
    text: String,
    load_before: String,
}

impl Report {
    /// A page titled `title`, opened with the machine, kernel and commit.
    pub fn new(title: &str) -> Report {
        let model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines().find_map(|l| {
                    l.strip_prefix("model name")
                        .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
                })
            })
            .unwrap_or_else(|| "?".into());
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        let kernel = cmd_out("uname", &["-r"]);
        let commit = cmd_out("git", &["rev-parse", "--short", "HEAD"]);
        let dirty = !Command::new("git")
            .args(["diff", "--quiet", "HEAD", "--"])
            .status()
            .is_ok_and(|s| s.success());
        let now = cmd_out("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
        let mut text = format!("# {title}\n\n");
        let _ = writeln!(
            text,
            "{now}, commit {commit}{}, kernel {kernel}, {cpus} CPUs ({model}).",
            if dirty {
                " (with uncommitted changes)"
            } else {
                ""
            }
        );
        Report {
            text,
            load_before: loadavg(),
        }
    }

    /// Appends a line (a newline is added).
    pub fn line(&mut self, s: impl AsRef<str>) {
        self.text.push_str(s.as_ref());
        self.text.push('\n');
    }

    /// Appends a Markdown table.
    pub fn table(&mut self, head: &[&str], rows: &[Vec<String>]) {
        self.line(format!("| {} |", head.join(" | ")));
        self.line(format!("|{}", "---|".repeat(head.len())));
        for r in rows {
            self.line(format!("| {} |", r.join(" | ")));
        }
        self.line("");
    }

    /// Closes the page with the load average and writes it to `out` (and stdout).
    pub fn finish(mut self, out: &Path) -> Result<()> {
        let after = loadavg();
        self.line(format!(
            "Load average (1/5/15 min) before / after the run: {} / {after}.",
            self.load_before
        ));
        print!("{}", self.text);
        std::fs::write(out, &self.text).with_context(|| format!("write {}", out.display()))?;
        eprintln!("tcpath: wrote {}", out.display());
        Ok(())
    }
}

fn cmd_out(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// The 1/5/15-minute load average.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The median of `xs` (NaN when empty).
pub fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `a / b` as "1.23×" ("-" when either is missing).
pub fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b != 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "-".into()
    }
}

/// A number with thousands separators and `digits` decimals.
pub fn num(x: f64, digits: usize) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    let s = format!("{x:.digits$}");
    let (int, frac) = s
        .split_once('.')
        .map_or((s.as_str(), None), |(i, f)| (i, Some(f)));
    let neg = int.starts_with('-');
    let digits_only = int.trim_start_matches('-');
    let mut grouped = String::new();
    for (i, c) in digits_only.chars().enumerate() {
        if i > 0 && (digits_only.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!(
        "{}{grouped}{}",
        if neg { "-" } else { "" },
        frac.map_or(String::new(), |f| format!(".{f}"))
    )
}

/// The values of repetitions, as "a b c" for a table's last column.
pub fn reps(xs: &[f64], digits: usize) -> String {
    xs.iter()
        .map(|x| format!("{x:.digits$}"))
        .collect::<Vec<_>>()
        .join(" ")
}
