//! `membrane monitor`: the agents' event streams, merged into one view.
//!
//! One reader thread per agent socket; each asks for the `monitor` stream,
//! forwards the events, and on a refused connection or a closed stream says
//! so on stderr and reconnects with backoff (0.1 s doubling to 5 s).

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use membrane_datapath::{
    api::{Request, DEFAULT_SOCKET},
    events::{Event, TYPE_LOST},
};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use crate::policy_cmd::Output;

#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// An agent's API socket (repeat to merge several nodes; default
    /// /var/run/membrane/agent.sock when no --socket or --agent is given).
    #[arg(long = "socket")]
    sockets: Vec<PathBuf>,
    /// NODE=PATH: an agent's socket whose events are labelled NODE (repeatable).
    #[arg(long = "agent", value_parser = parse_agent)]
    agents: Vec<(String, PathBuf)>,
    /// Only events of this type.
    #[arg(long = "type", value_enum)]
    kind: Option<Kind>,
    /// Output format: readable lines, or one JSON object per line.
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    output: Output,
    /// Stop after this many events (of the selected type).
    #[arg(long)]
    count: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    /// Every L3/L4 decision at connect.
    PolicyVerdict,
    /// Refused connects (denied policy verdicts).
    Drop,
    /// Connections steered to the proxy.
    Capture,
    /// Splice decisions and sk_msg fallbacks.
    Trace,
}

impl Kind {
    fn matches(self, e: &Event) -> bool {
        match self {
            Kind::PolicyVerdict => e.kind == "policy-verdict",
            Kind::Drop => e.is_drop(),
            Kind::Capture => e.kind == "capture",
            Kind::Trace => e.kind == "trace",
        }
    }
}

fn parse_agent(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((node, path)) if !node.is_empty() && !path.is_empty() => {
            Ok((node.to_owned(), PathBuf::from(path)))
        }
        _ => Err(format!("{s:?}: expected NODE=PATH")),
    }
}

/// Follow one agent's stream forever, forwarding its events.
fn follow(path: PathBuf, node: Option<String>, tx: mpsc::Sender<Event>) {
    let label = node.clone().unwrap_or_else(|| path.display().to_string());
    let mut backoff = Duration::from_millis(100);
    let mut was_down = false;
    loop {
        match UnixStream::connect(&path) {
            Ok(mut s) => {
                let req = serde_json::to_string(&Request::Monitor).unwrap_or_default();
                if writeln!(s, "{req}").is_ok() {
                    if was_down {
                        eprintln!("membrane monitor: {label}: connected");
                    }
                    backoff = Duration::from_millis(100);
                    for line in BufReader::new(s).lines() {
                        let Ok(line) = line else { break };
                        let mut ev: Event = match serde_json::from_str(&line) {
                            Ok(e) => e,
                            Err(e) => {
                                eprintln!("membrane monitor: {label}: bad event {line:?}: {e}");
                                continue;
                            }
                        };
                        if let Some(n) = &node {
                            ev.node = n.clone();
                        }
                        if tx.send(ev).is_err() {
                            return;
                        }
                    }
                }
                eprintln!("membrane monitor: {label}: the agent closed the stream; reconnecting");
            }
            Err(e) => {
                if !was_down {
                    eprintln!(
                        "membrane monitor: {label}: {}: {e}; retrying with backoff",
                        path.display()
                    );
                }
            }
        }
        was_down = true;
        thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

fn addr(a: &Option<String>) -> &str {
    a.as_deref().unwrap_or("?")
}

/// One readable line, in the spirit of `cilium monitor`.
fn text(e: &Event) -> String {
    let head = format!("{} [{}]", e.time, e.node);
    match e.kind.as_str() {
        "policy-verdict" => format!(
            "{head} Policy verdict: {} ({}) {}: identity {}->{} -> {} tcp revision {} cookie {}",
            e.verdict.as_deref().unwrap_or("?").to_uppercase(),
            e.reason,
            e.program,
            e.src_identity,
            e.dst_identity,
            addr(&e.dst),
            e.revision,
            e.cookie
        ),
        "capture" => format!(
            "{head} Capture {} {}: {} -> {} redirected to {} identity {}->{}",
            e.reason,
            e.program,
            e.src.as_deref().unwrap_or("pod"),
            addr(&e.dst),
            addr(&e.to),
            e.src_identity,
            e.dst_identity
        ),
        "trace" => {
            let times = if e.count > 1 {
                format!(" (x{})", e.count)
            } else {
                String::new()
            };
            format!(
                "{head} Trace {} {}: {} -> {}{times}",
                e.reason,
                e.program,
                addr(&e.src),
                addr(&e.dst)
            )
        }
        TYPE_LOST => format!("{head} Lost {} events ({})", e.count, e.reason),
        other => format!("{head} {other} {}", e.reason),
    }
}

pub fn run(a: MonitorArgs) -> Result<ExitCode> {
    let mut sources: Vec<(PathBuf, Option<String>)> =
        a.sockets.into_iter().map(|p| (p, None)).collect();
    sources.extend(a.agents.into_iter().map(|(n, p)| (p, Some(n))));
    if sources.is_empty() {
        sources.push((PathBuf::from(DEFAULT_SOCKET), None));
    }
    if a.count == Some(0) {
        bail!("--count 0: nothing to wait for");
    }
    let (tx, rx) = mpsc::channel();
    for (path, node) in sources {
        let tx = tx.clone();
        thread::spawn(move || follow(path, node, tx));
    }
    drop(tx);
    let mut seen = 0u64;
    let stdout = std::io::stdout();
    for ev in rx {
        let lost = ev.kind == TYPE_LOST;
        if !lost && !a.kind.is_none_or(|k| k.matches(&ev)) {
            continue;
        }
        let line = match a.output {
            Output::Json => serde_json::to_string(&ev)?,
            Output::Text => text(&ev),
        };
        let mut out = stdout.lock();
        writeln!(out, "{line}")?;
        out.flush()?;
        if lost {
            continue;
        }
        seen += 1;
        if a.count.is_some_and(|n| seen >= n) {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}
