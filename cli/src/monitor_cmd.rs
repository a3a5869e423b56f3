//! `membrane monitor`: the agents' event streams, merged into one view.
//!
//! One reader thread per agent socket; each asks for the `monitor` stream,
//! forwards the events, and on a refused connection or a closed stream says
//! so on stderr and reconnects with backoff (0.1 s doubling to 5 s).
//!
//! `--all-nodes` reads every node's stream through membrane-relay instead (gRPC, 4245,
//! mTLS): the filters travel with the request and are applied by the relay and the
//! agents, `--last N` comes from the agents' rings, `--follow` streams on.

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

use membrane_api::observer::{proto, Filter};

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
    /// Every node's events, through membrane-relay (--relay).
    #[arg(long)]
    all_nodes: bool,
    /// membrane-relay's address (`HOST:PORT`); mTLS with --relay-ca/--relay-cert/--relay-key.
    #[arg(long, env = "MEMBRANE_RELAY", default_value = "127.0.0.1:4245")]
    relay: String,
    /// PEM CA bundle the relay's certificate must chain to (with --relay-cert/--relay-key).
    #[arg(long, env = "MEMBRANE_RELAY_CA", requires_all = ["relay_cert", "relay_key"])]
    relay_ca: Option<PathBuf>,
    /// PEM certificate presented to the relay.
    #[arg(long, env = "MEMBRANE_RELAY_CERT", requires = "relay_ca")]
    relay_cert: Option<PathBuf>,
    /// PEM key of --relay-cert.
    #[arg(long, env = "MEMBRANE_RELAY_KEY", requires = "relay_ca")]
    relay_key: Option<PathBuf>,
    /// The name the relay's certificate carries (default: the host of --relay).
    #[arg(long, env = "MEMBRANE_RELAY_SERVER_NAME")]
    relay_server_name: Option<String>,
    /// Only flows from or to this pod (`NAMESPACE/NAME` or `NAME`; repeatable).
    #[arg(long)]
    pod: Vec<String>,
    /// Only flows from or to pods of this namespace (repeatable).
    #[arg(long)]
    namespace: Vec<String>,
    /// Only flows from or to this security identity (repeatable).
    #[arg(long)]
    identity: Vec<u32>,
    /// Only this verdict: `allowed` or `denied` (repeatable).
    #[arg(long)]
    verdict: Vec<String>,
    /// Only flows to this destination port (repeatable).
    #[arg(long)]
    port: Vec<u16>,
    /// Only L7 requests with this method (repeatable).
    #[arg(long)]
    http_method: Vec<String>,
    /// Only L7 requests whose path matches this regular expression (repeatable).
    #[arg(long)]
    http_path: Vec<String>,
    /// Only events of this node (repeatable).
    #[arg(long)]
    node: Vec<String>,
    /// The latest N matching events first: with --all-nodes the N newest across every
    /// node (as the relay merges them), then exit unless --follow; on agent sockets the
    /// N newest of each agent, then follow.
    #[arg(long)]
    last: Option<u64>,
    /// With --all-nodes: keep streaming after --last (the default without it).
    #[arg(long)]
    follow: bool,
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
    /// HTTP requests the sidecars decided.
    L7,
    /// The relay's records about nodes coming, going, unreachable.
    NodeStatus,
}

impl Kind {
    fn matches(self, e: &Event) -> bool {
        match self {
            Kind::PolicyVerdict => e.kind == "policy-verdict",
            Kind::Drop => e.is_drop(),
            Kind::Capture => e.kind == "capture",
            Kind::Trace => e.kind == "trace",
            Kind::L7 => e.kind == membrane_api::monitor::TYPE_L7,
            Kind::NodeStatus => e.kind == membrane_api::observer::TYPE_NODE_STATUS,
        }
    }

    /// The filter the relay applies for it.
    fn filter(self, f: &mut proto::Filter) {
        let t = match self {
            // `drop` is every refusal: denied verdicts (L3/L4 and L7) and dropped packets.
            Kind::Drop => return f.verdict.push("denied".into()),
            Kind::PolicyVerdict => "policy-verdict",
            Kind::Capture => "capture",
            Kind::Trace => "trace",
            Kind::L7 => "l7",
            Kind::NodeStatus => "node-status",
        };
        f.r#type.push(t.into());
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
fn follow(path: PathBuf, node: Option<String>, last: usize, tx: mpsc::Sender<Event>) {
    let label = node.clone().unwrap_or_else(|| path.display().to_string());
    let mut backoff = Duration::from_millis(100);
    let mut was_down = false;
    loop {
        match UnixStream::connect(&path) {
            Ok(mut s) => {
                // The replay once: a reconnect asks only for new events.
                let req = serde_json::to_string(&Request::Monitor {
                    last: if was_down { 0 } else { last },
                })
                .unwrap_or_default();
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

/// A flow's side: its pod when known, its address, its identity.
fn who(pod: &Option<String>, addr: &Option<String>, identity: u32) -> String {
    match (pod, addr) {
        (Some(p), Some(a)) => format!("{p} ({a}, identity {identity})"),
        (Some(p), None) => format!("{p} (identity {identity})"),
        (None, a) => format!("{} (identity {identity})", a.as_deref().unwrap_or("?")),
    }
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
        "l7" => {
            let l = e.l7.clone().unwrap_or_default();
            format!(
                "{head} L7 {} {} {} -> {} {} {} {} => {}{}",
                e.verdict.as_deref().unwrap_or("?").to_uppercase(),
                l.direction,
                who(&e.src_pod, &e.src, e.src_identity),
                who(&e.dst_pod, &e.dst, e.dst_identity),
                l.protocol,
                l.method,
                l.path,
                l.status,
                l.rule.map(|r| format!(" rule {r}")).unwrap_or_default()
            )
        }
        "node-status" => format!("{head} Node {}", e.reason),
        "drop" => format!(
            "{head} Drop ({}) {}: {} -> {}",
            e.reason,
            e.program,
            who(&e.src_pod, &e.src, e.src_identity),
            who(&e.dst_pod, &e.dst, e.dst_identity),
        ),
        other => format!("{head} {other} {}", e.reason),
    }
}

impl MonitorArgs {
    /// The filter the flags ask for (what the relay and the agents apply).
    fn filter(&self) -> proto::Filter {
        let mut f = proto::Filter {
            pod: self.pod.clone(),
            namespace: self.namespace.clone(),
            identity: self.identity.clone(),
            verdict: self.verdict.clone(),
            port: self.port.iter().map(|p| u32::from(*p)).collect(),
            http_method: self.http_method.clone(),
            http_path: self.http_path.clone(),
            node: self.node.clone(),
            ..Default::default()
        };
        if let Some(k) = self.kind {
            k.filter(&mut f);
        }
        f
    }
}

/// Prints `ev` as `a` asks; false when --count is reached.
fn print(a: &MonitorArgs, ev: &Event, seen: &mut u64) -> Result<bool> {
    let line = match a.output {
        Output::Json => serde_json::to_string(ev)?,
        Output::Text => text(ev),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    if ev.kind == TYPE_LOST || ev.kind == membrane_api::observer::TYPE_NODE_STATUS {
        return Ok(true);
    }
    *seen += 1;
    Ok(a.count.is_none_or(|n| *seen < n))
}

/// `--all-nodes`: the relay's merged stream.
fn all_nodes(a: &MonitorArgs) -> Result<ExitCode> {
    use membrane_api::observer::proto::observer_client::ObserverClient;
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let filter = a.filter();
    // Checked here too, so a bad regex is named before connecting.
    Filter::new(&filter)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let tls = a.relay_ca.is_some();
        let scheme = if tls { "https" } else { "http" };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{}", a.relay))
            .map_err(|e| anyhow::anyhow!("--relay {:?}: {e}", a.relay))?
            .connect_timeout(Duration::from_secs(5));
        if let (Some(ca), Some(cert), Some(key)) = (&a.relay_ca, &a.relay_cert, &a.relay_key) {
            let read = |flag: &str, p: &PathBuf| {
                std::fs::read(p).map_err(|e| anyhow::anyhow!("{flag} {}: {e}", p.display()))
            };
            let host = a
                .relay
                .rsplit_once(':')
                .map_or(a.relay.as_str(), |(h, _)| h);
            let name = a
                .relay_server_name
                .clone()
                .unwrap_or_else(|| host.trim_matches(['[', ']']).to_owned());
            ep = ep.tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(read("--relay-ca", ca)?))
                    .identity(Identity::from_pem(
                        read("--relay-cert", cert)?,
                        read("--relay-key", key)?,
                    ))
                    .domain_name(name),
            )?;
        }
        let ch = ep
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("--relay {}: {}", a.relay, membrane_relay_error(&e)))?;
        let follow = a.follow || a.last.is_none();
        let mut s = ObserverClient::new(ch)
            .get_events(proto::GetEventsRequest {
                follow,
                last: a.last.unwrap_or(0),
                filter: Some(filter),
            })
            .await
            .map_err(|e| anyhow::anyhow!("--relay {}: {:?}: {}", a.relay, e.code(), e.message()))?
            .into_inner();
        let mut seen = 0u64;
        while let Some(m) = s
            .message()
            .await
            .map_err(|e| anyhow::anyhow!("--relay {}: {:?}: {}", a.relay, e.code(), e.message()))?
        {
            if !print(a, &membrane_api::observer::decode(m), &mut seen)? {
                break;
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// The whole cause of a transport error (its top level says only "transport error").
fn membrane_relay_error(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

pub fn run(a: MonitorArgs) -> Result<ExitCode> {
    if a.count == Some(0) {
        bail!("--count 0: nothing to wait for");
    }
    if a.all_nodes {
        return all_nodes(&a);
    }
    let last = usize::try_from(a.last.unwrap_or(0)).unwrap_or(usize::MAX);
    // The same filter the relay would apply, here on the local sockets' events.
    let filter = Filter::new(&a.filter())?;
    let mut sources: Vec<(PathBuf, Option<String>)> =
        a.sockets.iter().map(|p| (p.clone(), None)).collect();
    sources.extend(a.agents.iter().map(|(n, p)| (p.clone(), Some(n.clone()))));
    if sources.is_empty() {
        sources.push((PathBuf::from(DEFAULT_SOCKET), None));
    }
    let (tx, rx) = mpsc::channel();
    for (path, node) in sources {
        let tx = tx.clone();
        thread::spawn(move || follow(path, node, last, tx));
    }
    drop(tx);
    let mut seen = 0u64;
    for ev in rx {
        let lost = ev.kind == TYPE_LOST;
        if !lost && (!a.kind.is_none_or(|k| k.matches(&ev)) || !filter.matches(&ev)) {
            continue;
        }
        if !print(&a, &ev, &mut seen)? {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}
