//! Issue 14's control-plane hop: one policy change reaching every node agent and every
//! sidecar of a cluster of simulated nodes. `XDS_BENCH_NODES` nodes (100) with
//! `XDS_BENCH_NODE_PODS` pods each (10); one delta ADS stream per node agent
//! (`membrane-agent~NODE`, wildcard `membrane.agent.v1.Endpoint`, as `membrane-agent run`
//! subscribes) and one SotW NPDS stream per pod's sidecar, all against one real
//! `membrane-xds`. Each round rewrites one policy selecting every pod (its port and its
//! HTTP path change, so both the map entries and the L7 rules change); latency = file
//! write → the stream received the new resources (each client ACKs at once).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use futures_util::StreamExt;
use membrane_xds::resource::AGENT_ENDPOINT;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{connect, env, ms, pct, spawn_xds, Client};

/// `nodes` × `per_node` pods, pod `i` on `node-(i % nodes)`, and the nodes.
fn cluster(nodes: usize, per_node: usize) -> String {
    let mut s = String::new();
    for n in 0..nodes {
        let _ = write!(
            s,
            "---\napiVersion: v1\nkind: Node\nmetadata: {{name: node-{n}}}\nstatus: {{addresses: [{{type: InternalIP, address: 10.200.{}.{}}}]}}\n",
            n / 250,
            n % 250 + 1
        );
    }
    for i in 0..nodes * per_node {
        let _ = write!(
            s,
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: pod-{i}, namespace: default, labels: {{app: app-{a}, tier: bench}}}}\nspec: {{nodeName: node-{n}, containers: [{{name: c, ports: [{{containerPort: 8080}}]}}]}}\nstatus: {{podIP: 10.1.{}.{}}}\n",
            i / 250,
            i % 250 + 1,
            a = i % 50,
            n = i % nodes
        );
    }
    s
}

/// One policy selecting every pod; its port and HTTP path change with `round`.
fn policy(round: usize) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: fleet, namespace: default}}\nspec:\n  endpointSelector: {{matchLabels: {{tier: bench}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{tier: bench}}}}]\n    toPorts:\n    - ports: [{{port: \"{}\", protocol: TCP}}]\n      rules:\n        http: [{{method: GET, path: \"/v{round}/.*\"}}]\n",
        8000 + round % 2
    )
}

/// A node agent's stream: every `Endpoint` response's receipt time (it ACKs at once).
async fn connect_agent(
    addr: &str,
    node: String,
) -> Result<mpsc::UnboundedReceiver<Instant>, Box<dyn std::error::Error + Send + Sync>> {
    let mut c = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}")).await?;
    let (tx, rx) = mpsc::channel(4);
    tx.send(DeltaDiscoveryRequest {
        node: Some(Node {
            id: node,
            ..Default::default()
        }),
        type_url: AGENT_ENDPOINT.into(),
        ..Default::default()
    })
    .await?;
    let mut stream = c
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let (gtx, grx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(resp)) = stream.message().await {
            let now = Instant::now();
            let ack = DeltaDiscoveryRequest {
                type_url: resp.type_url.clone(),
                response_nonce: resp.nonce.clone(),
                ..Default::default()
            };
            let changed = resp.type_url == AGENT_ENDPOINT && !resp.resources.is_empty();
            if (changed && gtx.send(now).is_err()) || tx.send(ack).await.is_err() {
                break;
            }
        }
    });
    Ok(grx)
}

/// A row of the report: p50, p99 and max of `l` (sorted here).
fn row(label: &str, l: &mut [Duration]) -> String {
    l.sort();
    format!(
        "| {label} | {} | {} | {} | {} |",
        l.len(),
        ms(pct(l, 0.5)),
        ms(pct(l, 0.99)),
        ms(l.last().copied().unwrap_or_default())
    )
}

/// The benchmark; appends its section to `report`.
pub async fn nodes(report: &mut String) {
    let nodes = env("XDS_BENCH_NODES", 100);
    let per_node = env("XDS_BENCH_NODE_PODS", 10);
    let rounds = env("XDS_BENCH_ROUNDS", 5);
    let poll = env("XDS_BENCH_POLL_MS", 1000);
    let pods = nodes * per_node;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cluster.yaml"), cluster(nodes, per_node)).unwrap();
    let file = dir.path().join("fleet.yaml");
    std::fs::write(&file, policy(0)).unwrap();
    let (mut child, addr) = spawn_xds(dir.path(), poll);

    let mut agents: Vec<mpsc::UnboundedReceiver<Instant>> = futures_util::stream::iter(0..nodes)
        .map(|n| {
            let addr = addr.clone();
            async move {
                connect_agent(&addr, format!("membrane-agent~node-{n}"))
                    .await
                    .expect("agent")
            }
        })
        .buffered(64)
        .collect()
        .await;
    let mut sidecars: Vec<Client> = futures_util::stream::iter(0..pods)
        .map(|i| {
            let node = format!(
                "sidecar~10.1.{}.{}~pod-{i}.default~default.svc.cluster.local",
                i / 250,
                i % 250 + 1
            );
            let addr = addr.clone();
            async move { connect(&addr, node).await.expect("sidecar") }
        })
        .buffered(64)
        .collect()
        .await;
    let wait = Duration::from_secs(30);
    let mut versions = Vec::new();
    for a in &mut agents {
        tokio::time::timeout(wait, a.recv())
            .await
            .expect("agent's first")
            .expect("open");
    }
    for s in &mut sidecars {
        let (v, _) = tokio::time::timeout(wait, s.got.recv())
            .await
            .expect("first")
            .expect("open");
        versions.push(v);
    }

    let (mut all_agents, mut all_sidecars, mut all) = (Vec::new(), Vec::new(), Vec::new());
    let mut per_round = Vec::new();
    for round in 1..=rounds {
        // Let the previous round settle, and drop what it left queued.
        tokio::time::sleep(Duration::from_millis(200)).await;
        for a in &mut agents {
            while a.try_recv().is_ok() {}
        }
        for (s, old) in sidecars.iter_mut().zip(versions.iter_mut()) {
            while let Ok((v, _)) = s.got.try_recv() {
                *old = v;
            }
        }
        let t0 = Instant::now();
        std::fs::write(&file, policy(round)).unwrap();
        let mut la = Vec::with_capacity(nodes);
        for a in &mut agents {
            let at = tokio::time::timeout(wait, a.recv())
                .await
                .expect("agent update")
                .expect("open");
            la.push(at.duration_since(t0));
        }
        let mut ls = Vec::with_capacity(pods);
        for (s, old) in sidecars.iter_mut().zip(versions.iter_mut()) {
            loop {
                let (v, at) = tokio::time::timeout(wait, s.got.recv())
                    .await
                    .expect("update")
                    .expect("open");
                if v != *old {
                    *old = v;
                    ls.push(at.duration_since(t0));
                    break;
                }
            }
        }
        let mut both: Vec<Duration> = la.iter().chain(&ls).copied().collect();
        per_round.push(row(&format!("round {round}, everyone"), &mut both));
        all_agents.extend(la);
        all_sidecars.extend(ls);
        all.extend(both);
    }
    let _ = child.kill();
    let _ = child.wait();

    let _ = writeln!(
        report,
        "## One policy change → every node agent and sidecar of {nodes} nodes\n"
    );
    let _ = writeln!(
        report,
        "{nodes} simulated nodes × {per_node} pods: {nodes} node agents (delta ADS, \
         `membrane.agent.v1.Endpoint`, one stream each) and {pods} sidecars (SotW NPDS, one \
         stream each) on one membrane-xds. {rounds} changes of one policy selecting every pod \
         (port and HTTP path), written to the watched directory (inotify; fallback poll \
         {poll} ms). Latency = file write → the stream received the new resources (it ACKs \
         at once).\n"
    );
    let _ = writeln!(
        report,
        "| streams | n | p50 | p99 | max |\n|---|---|---|---|---|"
    );
    for r in &per_round {
        let _ = writeln!(report, "{r}");
    }
    let _ = writeln!(
        report,
        "{}",
        row("**node agents, all rounds**", &mut all_agents)
    );
    let _ = writeln!(
        report,
        "{}",
        row("**sidecars, all rounds**", &mut all_sidecars)
    );
    let _ = writeln!(report, "{}\n", row("**everyone, all rounds**", &mut all));
}
