//! The control plane's benchmark (issue 4):
//! 1. one policy change → every connected proxy has the new version: N
//!    simulated ADS clients (sidecar node ids, NPDS subscriptions) against
//!    the real `membrane-xds` binary, latency from the file write to each
//!    client's receipt (it ACKs at once), p50/p99/max over several changes;
//! 2. memory per connected proxy: the server's RSS before/after connecting;
//! 3. translation of R rules for E endpoints, in process: full and after a
//!    one-policy change;
//! 4. one policy change → every node agent and sidecar of a cluster of
//!    simulated nodes has it (issue 14, [`nodes`]).
//!
//! Prints a Markdown report on stdout. Env: XDS_BENCH_CLIENTS (1000),
//! XDS_BENCH_ROUNDS (5), XDS_BENCH_POLL_MS (1000, the fallback poll),
//! XDS_BENCH_NODES (100), XDS_BENCH_NODE_PODS (10), XDS_BENCH_ONLY (`nodes`: that
//! part alone).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use futures_util::StreamExt;
use membrane_xds::source::dir::parse;
use membrane_xds::translate::Translator;
use tokio::sync::{mpsc, Mutex};
use tokio_stream::wrappers::ReceiverStream;

const NPDS: &str = "type.googleapis.com/cilium.NetworkPolicy";

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `n` pods `app-i` at 10.1.x.y; `apps` distinct app labels.
fn pods(n: usize, apps: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        let _ = write!(
            s,
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: pod-{i}, namespace: default, labels: {{app: app-{a}, tier: bench}}}}\nspec: {{containers: [{{name: c, ports: [{{containerPort: 8080}}]}}]}}\nstatus: {{podIP: 10.1.{}.{}}}\n",
            i / 250,
            i % 250 + 1,
            a = i % apps
        );
    }
    s
}

/// One policy selecting every bench pod, with an HTTP path that changes per round.
fn fleet_policy(round: usize) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: fleet, namespace: default}}\nspec:\n  endpointSelector: {{matchLabels: {{tier: bench}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{tier: bench}}}}]\n    toPorts:\n    - ports: [{{port: \"8080\", protocol: TCP}}]\n      rules:\n        http: [{{method: GET, path: \"/v{round}/.*\"}}]\n"
    )
}

/// `policies` policies, each selecting one app and carrying `rules_each` ingress rules.
fn many_policies(policies: usize, rules_each: usize, apps: usize, tag: usize) -> String {
    let mut s = String::new();
    for p in 0..policies {
        let _ = write!(
            s,
            "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p{p}, namespace: default}}\nspec:\n  endpointSelector: {{matchLabels: {{app: app-{}}}}}\n  ingress:\n",
            p % apps
        );
        for r in 0..rules_each {
            let _ = write!(
                s,
                "  - fromEndpoints: [{{matchLabels: {{app: app-{}}}}}]\n    toPorts:\n    - ports: [{{port: \"{}\", protocol: TCP}}]\n      rules:\n        http: [{{method: GET, path: \"/r{r}/{tag}/.*\"}}]\n",
                (p + r) % apps,
                8000 + r
            );
        }
    }
    s
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// This build's `membrane-xds` on `dir`, and its gRPC address.
fn spawn_xds(dir: &std::path::Path, poll: usize) -> (std::process::Child, String) {
    common::spawn_xds(
        std::path::Path::new(env!("CARGO_BIN_EXE_membrane-xds")),
        dir,
        poll,
    )
}

struct Client {
    /// Versions received, with the receipt time.
    got: mpsc::UnboundedReceiver<(String, Instant)>,
}

async fn connect(
    addr: &str,
    node: String,
) -> Result<Client, Box<dyn std::error::Error + Send + Sync>> {
    let mut c = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}")).await?;
    let (tx, rx) = mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: node,
            ..Default::default()
        }),
        type_url: NPDS.into(),
        ..Default::default()
    })
    .await?;
    let mut stream = c
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let (gtx, grx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(resp)) = stream.message().await {
            let now = Instant::now();
            let ack = DiscoveryRequest {
                type_url: NPDS.into(),
                version_info: resp.version_info.clone(),
                response_nonce: resp.nonce.clone(),
                ..Default::default()
            };
            if gtx.send((resp.version_info, now)).is_err() || tx.send(ack).await.is_err() {
                break;
            }
        }
    });
    Ok(Client { got: grx })
}

async fn fanout(report: &mut String) {
    let n = env("XDS_BENCH_CLIENTS", 1000);
    let rounds = env("XDS_BENCH_ROUNDS", 5);
    let poll = env("XDS_BENCH_POLL_MS", 1000);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pods.yaml"), pods(n, 50)).unwrap();
    let policy = dir.path().join("fleet.yaml");
    std::fs::write(&policy, fleet_policy(0)).unwrap();

    let (mut child, addr) = spawn_xds(dir.path(), poll);
    let pid = child.id();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = rss_kib(pid);

    let started = Instant::now();
    // Connect 64 at a time, as a fleet of proxies starting would.
    let mut clients: Vec<Client> = futures_util::stream::iter(0..n)
        .map(|i| {
            let node = format!(
                "sidecar~10.1.{}.{}~pod-{i}.default~default.svc.cluster.local",
                i / 250,
                i % 250 + 1
            );
            let addr = addr.clone();
            async move { connect(&addr, node).await.expect("connect") }
        })
        .buffered(64)
        .collect()
        .await;
    // Everyone has the initial version.
    let mut initial = Vec::new();
    for c in &mut clients {
        let (v, _) = tokio::time::timeout(Duration::from_secs(30), c.got.recv())
            .await
            .expect("initial response")
            .expect("stream open");
        initial.push(v);
    }
    let connect_all = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_after = rss_kib(pid);

    let mut all = Vec::new();
    let mut per_round = Vec::new();
    for round in 1..=rounds {
        // Anything still queued belongs to an earlier round.
        for (c, old) in clients.iter_mut().zip(initial.iter_mut()) {
            while let Ok((v, _)) = c.got.try_recv() {
                *old = v;
            }
        }
        let t0 = Instant::now();
        std::fs::write(&policy, fleet_policy(round)).unwrap();
        let lat = Arc::new(Mutex::new(Vec::with_capacity(n)));
        for (c, old) in clients.iter_mut().zip(initial.iter_mut()) {
            loop {
                let (v, at) = tokio::time::timeout(Duration::from_secs(30), c.got.recv())
                    .await
                    .expect("update in time")
                    .expect("stream open");
                if v != *old {
                    *old = v;
                    lat.lock().await.push(at.duration_since(t0));
                    break;
                }
            }
        }
        let mut l = lat.lock().await.clone();
        l.sort();
        per_round.push((pct(&l, 0.5), pct(&l, 0.99), *l.last().unwrap()));
        all.extend(l);
    }
    all.sort();
    let _ = child.kill();
    let _ = child.wait();

    let _ = writeln!(report, "## One policy change → every proxy has it\n");
    let _ = writeln!(
        report,
        "{n} ADS clients (sidecar node ids, one stream and one HTTP/2 connection each, NPDS), \
         {rounds} policy changes written to the watched directory (seen through inotify; \
         fallback poll every {poll} ms). Latency = file write → client received the new version \
         (it ACKs immediately). Goal: p99 < 100 ms.\n"
    );
    let _ = writeln!(report, "| round | p50 | p99 | max |\n|---|---|---|---|");
    for (i, (p50, p99, max)) in per_round.iter().enumerate() {
        let _ = writeln!(
            report,
            "| {} | {} | {} | {} |",
            i + 1,
            ms(*p50),
            ms(*p99),
            ms(*max)
        );
    }
    let _ = writeln!(
        report,
        "| **all** | **{}** | **{}** | **{}** |\n",
        ms(pct(&all, 0.5)),
        ms(pct(&all, 0.99)),
        ms(*all.last().unwrap())
    );
    let _ = writeln!(
        report,
        "Connecting {n} clients and delivering their first snapshot: {}.\n",
        ms(connect_all)
    );
    let _ = writeln!(report, "## Memory per connected proxy\n");
    let per = (rss_after.saturating_sub(rss_before)) as f64 / n as f64;
    let _ = writeln!(
        report,
        "membrane-xds RSS {rss_before} KiB with {n} pods and no clients, {rss_after} KiB with {n} \
         connected: **{per:.1} KiB per connected proxy** (stream state, its HTTP/2 connection, \
         recorder history).\n"
    );
}

fn translation(report: &mut String) {
    let endpoints = 1000;
    let policies = 1000;
    let rules_each = 10;
    let apps = 100;
    let text = pods(endpoints, apps) + &many_policies(policies, rules_each, apps, 0);
    let state = parse("bench.yaml", &text)
        .expect("bench input parses")
        .state;
    let mut t = Translator::new();
    let start = Instant::now();
    let out = t.translate(&state);
    let full = start.elapsed();
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let snapshots = out.snapshots.len();

    // Change one policy: the engine re-resolves only what it selects.
    let mut changed = state.clone();
    let one = parse("one.yaml", &many_policies(1, rules_each, apps, 1))
        .unwrap()
        .state
        .policies;
    changed.policies.retain(|p| p.key.name != "p0");
    changed.policies.extend(one);
    let start = Instant::now();
    let out2 = t.translate(&changed);
    let incr = start.elapsed();
    assert!(out2.errors.is_empty());
    // Only snapshots whose inputs changed are rebuilt (and offered to the cache).
    let differing = out2.snapshots.len();

    let _ = writeln!(report, "## Translation\n");
    let _ = writeln!(
        report,
        "{endpoints} endpoints ({apps} apps), {policies} CNPs × {rules_each} ingress rules = {} rules, \
         each with an HTTP rule. Goal: < 1 s.\n",
        policies * rules_each
    );
    let _ = writeln!(report, "| case | time | snapshots |\n|---|---|---|");
    let _ = writeln!(
        report,
        "| full (cold engine) | {} | {snapshots} built |",
        ms(full)
    );
    let _ = writeln!(
        report,
        "| one policy changed | {} | {differing} rebuilt |",
        ms(incr)
    );

    // The same with every pod on one of 100 nodes: the node agents' snapshots (their
    // endpoints' policy map entries) come on top.
    let mut i = 0;
    let on_nodes: String = text
        .lines()
        .map(|l| match l.strip_prefix("spec: {containers") {
            Some(rest) => {
                i += 1;
                format!("spec: {{nodeName: node-{}, containers{rest}", i % 100)
            }
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let state = parse("bench.yaml", &on_nodes).expect("parses").state;
    let mut t = Translator::new();
    let start = Instant::now();
    let out = t.translate(&state);
    let full = start.elapsed();
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let mut changed = state.clone();
    changed.policies.retain(|p| p.key.name != "p0");
    changed.policies.extend(
        parse("one.yaml", &many_policies(1, rules_each, apps, 1))
            .unwrap()
            .state
            .policies,
    );
    let start = Instant::now();
    let out2 = t.translate(&changed);
    let incr = start.elapsed();
    let _ = writeln!(
        report,
        "| full, pods on 100 nodes (+ agent snapshots) | {} | {} built |",
        ms(full),
        out.snapshots.len()
    );
    let _ = writeln!(
        report,
        "| one policy changed, pods on 100 nodes | {} | {} rebuilt |\n",
        ms(incr),
        out2.snapshots.len()
    );
}

// Beside this file rather than in benches/, where Cargo would take it for a bench target.
#[path = "common/mod.rs"]
mod common;
#[path = "fanout/nodes.rs"]
mod nodes;

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mut report = String::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let _ = writeln!(
        report,
        "# membrane-xds benchmark\n\nMachine: {} cores, {cpu}. Release build.\n",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if std::env::var("XDS_BENCH_ONLY").as_deref() != Ok("nodes") {
        translation(&mut report);
        rt.block_on(fanout(&mut report));
    }
    rt.block_on(nodes::nodes(&mut report));
    print!("{report}");
}
