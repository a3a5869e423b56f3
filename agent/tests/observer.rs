//! Privileged: the relay over real agents. One real membrane-xds lists two nodes (its
//! node registry), each node has its real `membrane-agent run` with its pods registered by
//! the real membrane-cni, and each agent serves its events on its observer (mTLS, its own
//! address, port 4244). An in-process membrane-relay finds both through membrane-xds and
//! merges their streams: connects on both nodes appear in one stream in time order with
//! their pods named, a pod of the other node too (named by the relay from membrane-xds's
//! workload directory, which the agent that wrote the event does not have); a stopped agent is reported gone and followed again when it returns;
//! `last` and the filters are applied by the agents and the relay, a filter on the other
//! node's pod included (`last 1` finds node-1's record about node-2's server2 under newer
//! ones, `follow` streams the next); a client with a
//! certificate of another identity, or none, is refused; each node's metrics count its
//! verdicts.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::{Node, Xds, CLUSTER};
use membrane_api::monitor::Event;
use membrane_api::observer::proto::observer_client::ObserverClient;
use membrane_api::observer::proto::{Filter, GetEventsRequest};
use membrane_api::observer::{decode, TYPE_NODE_STATUS};
use membrane_relay::discovery::XdsSource;
use membrane_relay::nodes::AgentAccess;
use membrane_relay::tls::TlsFiles;
use membrane_relay::{Discovery, Relay, RelayConfig};
use membrane_test_support::pki::{Ca, CertFiles, Leaf};
use membrane_test_support::wait_until;
use tokio::sync::broadcast;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

const LIMIT: Duration = Duration::from_secs(30);
const EVERY: Duration = Duration::from_millis(50);
const RELAY_ID: &str = "spiffe://cluster.local/ns/membrane-system/sa/membrane-relay";

/// Node-2's pods, the node registry (both nodes on loopback addresses of their own).
fn cluster(a: IpAddr, b: IpAddr) -> String {
    format!(
        r#"{CLUSTER}
---
apiVersion: v1
kind: Pod
metadata: {{name: client2, namespace: default, labels: {{app: client}}}}
spec: {{nodeName: node-2}}
status: {{podIP: 10.202.0.1}}
---
apiVersion: v1
kind: Pod
metadata: {{name: server2, namespace: default, labels: {{app: server}}}}
spec: {{nodeName: node-2, containers: [{{name: app, ports: [{{containerPort: 8080, name: http}}]}}]}}
status: {{podIP: 10.202.0.2}}
---
apiVersion: v1
kind: Node
metadata: {{name: node-1}}
status: {{addresses: [{{type: InternalIP, address: "{a}"}}]}}
---
apiVersion: v1
kind: Node
metadata: {{name: node-2}}
status: {{addresses: [{{type: InternalIP, address: "{b}"}}]}}
"#
    )
}

struct Bed {
    nodes: [Node; 2],
    ips: [IpAddr; 2],
    xds: Xds,
    ca: Ca,
    certs: [CertFiles; 2],
    pki: std::path::PathBuf,
}

fn s(p: &std::path::Path) -> String {
    p.to_str().unwrap().to_owned()
}

impl Bed {
    fn new() -> Bed {
        // Loopback addresses of this run's own, so the observers' port is 4244 as on a node.
        let x = 2 + (std::process::id() % 120) as u8 * 2;
        let ips: [IpAddr; 2] = [
            format!("127.0.{x}.1").parse().unwrap(),
            format!("127.0.{x}.2").parse().unwrap(),
        ];
        let mut a = Node::new();
        let mut b = Node::new();
        let pki = a.dir.path().join("pki");
        let ca = Ca::in_dir(&pki, "ca", "membrane test CA");
        let certs = [0, 1].map(|i| {
            ca.issue_in(
                &pki,
                &format!("agent-{i}"),
                &Leaf::new("membrane-agent").san(&format!(
                    "URI:spiffe://cluster.local/ns/membrane-system/sa/membrane-agent,IP:{}",
                    ips[i]
                )),
            )
        });
        std::fs::write(a.source().join("cluster.yaml"), cluster(ips[0], ips[1])).unwrap();
        std::fs::write(a.source().join("policy.yaml"), common::policy(&[8080])).unwrap();
        let xds = Xds::start(&a.source(), "127.0.0.1:0");
        a.two_pods_at(("client", "10.201.0.1"), ("server", "10.201.0.2"));
        b.two_pods_at(("client2", "10.202.0.1"), ("server2", "10.202.0.2"));
        let mut bed = Bed {
            nodes: [a, b],
            ips,
            xds,
            ca,
            certs,
            pki,
        };
        bed.start(0);
        bed.start(1);
        for (i, (client, server)) in [("client", "server"), ("client2", "server2")]
            .into_iter()
            .enumerate()
        {
            let n = &mut bed.nodes[i];
            for p in [client, server] {
                let (ok, out) = n.cni("ADD", p);
                assert!(ok, "{out}");
            }
            n.pod(server).serve(&[8080, 9090]);
            wait_until(LIMIT, EVERY, "the client's policy", || {
                n.endpoint(&format!("default/{client}"))["state"]["applied_revision"]
                    .as_u64()
                    .map(|_| ())
            });
        }
        bed
    }

    fn start(&mut self, i: usize) {
        let observer = SocketAddr::new(self.ips[i], 4244).to_string();
        let metrics = SocketAddr::new(self.ips[i], 9962).to_string();
        let (ca, cert, key) = (
            s(self.ca.cert()),
            s(&self.certs[i].cert),
            s(&self.certs[i].key),
        );
        let url = self.xds.url();
        self.nodes[i].start_agent_as(
            ["node-1", "node-2"][i],
            &url,
            &[
                "--observer-addr",
                &observer,
                "--observer-ca",
                &ca,
                "--observer-cert",
                &cert,
                "--observer-key",
                &key,
                "--metrics-addr",
                &metrics,
            ],
        );
    }

    /// One allowed (8080) and one denied (9090) connect from node `i`'s client.
    fn traffic(&mut self, i: usize) {
        let (client, server) = [("client", "10.201.0.2"), ("client2", "10.202.0.2")][i];
        let n = &mut self.nodes[i];
        assert_eq!(n.pod(client).connect(&format!("{server}:8080")), "ok");
        assert_eq!(n.pod(client).connect(&format!("{server}:9090")), "eperm");
    }

    fn client_tls(&self, name: &str, san: &str) -> TlsFiles {
        let c = self.ca.issue_in(&self.pki, name, &Leaf::new(name).san(san));
        TlsFiles {
            ca: self.ca.cert().to_owned(),
            cert: c.cert,
            key: c.key,
            flag: "--agent",
        }
    }

    fn relay(&self) -> Relay {
        let mut cfg = RelayConfig::new(
            Discovery::Xds(XdsSource {
                address: self.xds.url(),
                node_id: "membrane-relay~membrane-relay".into(),
                tls: None,
                backoff: Duration::from_millis(50),
                backoff_max: Duration::from_millis(500),
            }),
            AgentAccess {
                port: 4244,
                tls: Some(self.client_tls("relay", &format!("URI:{RELAY_ID}"))),
                server_name: None,
                backoff: Duration::from_millis(50),
                backoff_max: Duration::from_millis(500),
            },
        );
        cfg.window = Duration::from_millis(500);
        Relay::start(cfg)
    }
}

/// Receives from `rx` until `done` says the events so far are enough (at most LIMIT).
async fn until(
    rx: &mut broadcast::Receiver<Event>,
    seen: &mut Vec<Event>,
    what: &str,
    done: impl Fn(&[Event]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !done(seen) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(e)) => seen.push(e),
            Ok(Err(e)) => panic!("{what}: the merged stream: {e}"),
            Err(_) => panic!("{what}: not within {LIMIT:?}; saw {seen:#?}"),
        }
    }
}

fn verdicts<'a>(
    seen: &'a [Event],
    node: &'a str,
    verdict: &'a str,
) -> impl Iterator<Item = &'a Event> {
    seen.iter().filter(move |e| {
        e.node == node && e.kind == "policy-verdict" && e.verdict.as_deref() == Some(verdict)
    })
}

fn status_of<'a>(seen: &'a [Event], node: &str) -> Vec<&'a str> {
    seen.iter()
        .filter(|e| e.kind == TYPE_NODE_STATUS && e.node == node)
        .map(|e| e.reason.as_str())
        .collect()
}

/// The stream `req` asks `addr` for.
async fn open(
    addr: SocketAddr,
    tls: Option<(&TlsFiles, &str)>,
    req: GetEventsRequest,
) -> Result<tonic::Streaming<membrane_api::observer::proto::Event>, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}")).unwrap();
    if let Some((t, name)) = tls {
        ep = ep
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(std::fs::read(&t.ca).unwrap()))
                    .identity(Identity::from_pem(
                        std::fs::read(&t.cert).unwrap(),
                        std::fs::read(&t.key).unwrap(),
                    ))
                    .domain_name(name),
            )
            .unwrap();
    }
    let ch = ep.connect().await.map_err(|e| format!("connect: {e:?}"))?;
    Ok(ObserverClient::new(ch)
        .get_events(req)
        .await
        .map_err(|e| format!("{:?}: {}", e.code(), e.message()))?
        .into_inner())
}

/// Everything `addr` answers to `req` (which must not follow).
async fn ask(
    addr: SocketAddr,
    tls: Option<(&TlsFiles, &str)>,
    req: GetEventsRequest,
) -> Result<Vec<Event>, String> {
    let mut s = open(addr, tls, req).await?;
    let mut out = Vec::new();
    while let Some(m) = s.message().await.map_err(|e| format!("{e:?}"))? {
        out.push(decode(m));
    }
    Ok(out)
}

#[test]
fn the_relay_merges_both_nodes_reports_a_gone_one_and_filters() {
    let mut bed = Bed::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_rt = rt.enter();
    let relay = bed.relay();
    let mut rx = relay.subscribe();
    let mut seen = Vec::new();
    rt.block_on(until(&mut rx, &mut seen, "both nodes connected", |s| {
        status_of(s, "node-1").contains(&"connected")
            && status_of(s, "node-2").contains(&"connected")
    }));

    // Both nodes' verdicts, in one stream, in time order, with their pods named.
    bed.traffic(0);
    bed.traffic(1);
    rt.block_on(until(&mut rx, &mut seen, "both nodes' verdicts", |s| {
        ["node-1", "node-2"].iter().all(|n| {
            verdicts(s, n, "denied").next().is_some() && verdicts(s, n, "allowed").next().is_some()
        })
    }));
    let times: Vec<std::time::SystemTime> = seen
        .iter()
        .filter(|e| e.kind != TYPE_NODE_STATUS)
        .map(|e| humantime::parse_rfc3339(&e.time).unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "out of order: {seen:#?}"
    );
    let denied = verdicts(&seen, "node-2", "denied").next().unwrap();
    assert_eq!(
        denied.src_pod.as_deref(),
        Some("default/client2"),
        "{denied:?}"
    );
    assert_eq!(denied.dst.as_deref(), Some("10.202.0.2:9090"), "{denied:?}");

    // A pod of the other node: node-1's client to node-2's server2 on a port its egress
    // policy denies. node-1's agent knows only its own pods; the relay names server2.
    const CROSS: &str = "10.202.0.2:9090";
    assert_eq!(bed.nodes[0].pod("client").connect(CROSS), "eperm");
    let is_cross = |e: &Event| e.node == "node-1" && e.dst.as_deref() == Some(CROSS);
    rt.block_on(until(
        &mut rx,
        &mut seen,
        "node-1's verdict on node-2's pod",
        |s| s.iter().any(is_cross),
    ));
    let cross = seen.iter().find(|e| is_cross(e)).unwrap();
    assert_eq!(
        cross.src_pod.as_deref(),
        Some("default/client"),
        "{cross:?}"
    );
    assert_eq!(
        cross.dst_pod.as_deref(),
        Some("default/server2"),
        "{cross:?}"
    );

    // node-2's agent stops: reported; it returns: followed again, its events flow.
    bed.nodes[1].kill_agent();
    rt.block_on(until(&mut rx, &mut seen, "node-2 reported gone", |s| {
        status_of(s, "node-2")
            .iter()
            .any(|r| r.starts_with("gone") || r.starts_with("unreachable"))
    }));
    bed.start(1);
    let before = seen.len();
    rt.block_on(until(&mut rx, &mut seen, "node-2 connected again", |s| {
        status_of(&s[before..], "node-2").contains(&"connected")
    }));
    bed.traffic(1);
    let before = seen.len();
    rt.block_on(until(
        &mut rx,
        &mut seen,
        "node-2's verdicts after its return",
        |s| verdicts(&s[before..], "node-2", "denied").next().is_some(),
    ));

    // node-2's new agent holds only what it saw since its start: two more rounds on
    // node-1, so that the nodes' rings hold more denials than asked for.
    bed.traffic(0);
    bed.traffic(0);
    rt.block_on(until(&mut rx, &mut seen, "node-1's later verdicts", |s| {
        verdicts(s, "node-1", "denied").count() >= 3
    }));

    // The relay's service: last N across both nodes, with filters applied at the source.
    let relay_tls = bed.client_tls(
        "relay-server",
        "URI:spiffe://cluster.local/ns/membrane-system/sa/membrane-relay,IP:127.0.0.1",
    );
    let monitor_id = "spiffe://cluster.local/ns/default/sa/operator";
    let bound = rt
        .block_on(membrane_relay::server::serve(
            relay.clone(),
            "127.0.0.1:0".parse().unwrap(),
            Some(&TlsFiles {
                flag: "--listen",
                ..relay_tls.clone()
            }),
            vec![monitor_id.into()],
        ))
        .unwrap();
    let operator = bed.client_tls("operator", &format!("URI:{monitor_id}"));
    let denied_only = GetEventsRequest {
        follow: false,
        last: 3,
        filter: Some(Filter {
            verdict: vec!["denied".into()],
            r#type: vec!["policy-verdict".into()],
            ..Default::default()
        }),
    };
    let got = rt
        .block_on(ask(
            bound,
            Some((&operator, "127.0.0.1")),
            denied_only.clone(),
        ))
        .unwrap();
    assert_eq!(got.len(), 3, "{got:#?}");
    assert!(
        got.iter()
            .all(|e| e.verdict.as_deref() == Some("denied") && e.kind == "policy-verdict"),
        "{got:#?}"
    );
    assert!(got.windows(2).all(|w| w[0].time <= w[1].time), "{got:#?}");
    let pod_filter = GetEventsRequest {
        follow: false,
        last: 100,
        filter: Some(Filter {
            pod: vec!["client2".into()],
            port: vec![8080],
            ..Default::default()
        }),
    };
    let got = rt
        .block_on(ask(bound, Some((&operator, "127.0.0.1")), pod_filter))
        .unwrap();
    assert!(!got.is_empty());
    assert!(
        got.iter()
            .all(|e| e.node == "node-2" && e.dst.as_deref() == Some("10.202.0.2:8080")),
        "{got:#?}"
    );

    // Another node's pod by name. node-1's agent cannot name server2, and node-1 recorded
    // more verdicts after its denied connect to server2 (two rounds of traffic): `last 1`
    // about server2 on node-1 is still that connect (the relay sends node-1 server2's
    // addresses with the filter), named by the relay.
    let server2 = |last: u64, follow: bool, node: &[&str]| GetEventsRequest {
        follow,
        last,
        filter: Some(Filter {
            pod: vec!["server2".into()],
            r#type: vec!["policy-verdict".into()],
            verdict: vec!["denied".into()],
            node: node.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        }),
    };
    let got = rt
        .block_on(ask(
            bound,
            Some((&operator, "127.0.0.1")),
            server2(1, false, &["node-1"]),
        ))
        .unwrap();
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(is_cross(&got[0]), "{got:#?}");
    assert_eq!(
        got[0].dst_pod.as_deref(),
        Some("default/server2"),
        "{got:#?}"
    );
    // Both nodes: node-1's record and node-2's own denial of client2 since its restart,
    // in time order.
    let got = rt
        .block_on(ask(
            bound,
            Some((&operator, "127.0.0.1")),
            server2(2, false, &[]),
        ))
        .unwrap();
    assert_eq!(got.len(), 2, "{got:#?}");
    assert!(is_cross(&got[0]), "{got:#?}");
    assert_eq!(
        (got[1].node.as_str(), got[1].dst.as_deref()),
        ("node-2", Some("10.202.0.2:9090")),
        "{got:#?}"
    );
    // `--last 1 --follow`: the same record, then a new one as it happens.
    let mut live = rt
        .block_on(open(
            bound,
            Some((&operator, "127.0.0.1")),
            server2(1, true, &["node-1"]),
        ))
        .unwrap();
    let next = |live: &mut tonic::Streaming<membrane_api::observer::proto::Event>| {
        let m = rt
            .block_on(tokio::time::timeout(LIMIT, live.message()))
            .expect("a followed event in time")
            .unwrap()
            .expect("the stream stays open");
        decode(m)
    };
    let first = next(&mut live);
    assert!(is_cross(&first), "{first:#?}");
    assert_eq!(bed.nodes[0].pod("client").connect(CROSS), "eperm");
    let second = next(&mut live);
    assert!(is_cross(&second) && second.time > first.time, "{second:#?}");
    assert_eq!(second.dst_pod.as_deref(), Some("default/server2"));
    drop(live);

    // Another identity is refused by the relay and by the agents; no certificate, by TLS.
    let stranger = bed.client_tls(
        "stranger",
        "URI:spiffe://cluster.local/ns/default/sa/stranger",
    );
    let e = rt
        .block_on(ask(
            bound,
            Some((&stranger, "127.0.0.1")),
            denied_only.clone(),
        ))
        .unwrap_err();
    assert!(
        e.contains("PermissionDenied") && e.contains("stranger"),
        "{e}"
    );
    let agent = SocketAddr::new(bed.ips[0], 4244);
    let e = rt
        .block_on(ask(
            agent,
            Some((&operator, &bed.ips[0].to_string())),
            denied_only.clone(),
        ))
        .unwrap_err();
    assert!(
        e.contains("PermissionDenied") && e.contains("operator"),
        "{e}"
    );
    let relay_client = bed.client_tls("relay-2", &format!("URI:{RELAY_ID}"));
    let ok = rt
        .block_on(ask(
            agent,
            Some((&relay_client, &bed.ips[0].to_string())),
            denied_only.clone(),
        ))
        .unwrap();
    assert!(ok.iter().all(|e| e.node == "node-1"), "{ok:#?}");
    // The agent's own record of the cross-node connect does not name node-2's pod: the
    // name above is the relay's.
    let own = rt
        .block_on(ask(
            agent,
            Some((&relay_client, &bed.ips[0].to_string())),
            GetEventsRequest {
                follow: false,
                last: 1000,
                filter: None,
            },
        ))
        .unwrap();
    let mine = own
        .iter()
        .find(|e| e.dst.as_deref() == Some(CROSS))
        .unwrap_or_else(|| panic!("node-1's ring lost the cross-node connect: {own:#?}"));
    assert_eq!(mine.dst_pod, None, "{mine:?}");
    assert!(rt.block_on(ask(agent, None, denied_only)).is_err());

    // Each node's metrics count its own verdicts.
    let out = std::process::Command::new("curl")
        .args(["-sf", &format!("http://{}:9962/metrics", bed.ips[0])])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            r#"membrane_policy_verdict_total{node="node-1",program="connect4",verdict="denied"}"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"membrane_drop_count_total{node="node-1""#),
        "{text}"
    );
}
