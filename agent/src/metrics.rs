//! The node's Prometheus metrics (`--metrics-addr`, Cilium's agent port 9962), counted
//! from the same event stream the observer serves: packets and connections dropped by
//! reason, policy verdicts, and the sidecars' L7 verdicts and denials by rule. Every
//! series carries the node, so one Prometheus scraping every agent sees each node apart.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use membrane_api::monitor::{Event, TYPE_L7, TYPE_LOST};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Labels of drops: the node and why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    node: String,
    reason: String,
}

/// Labels of verdicts: the node, the deciding program and the verdict.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    node: String,
    program: String,
    verdict: String,
}

/// Labels of L7 denials: the node and the deciding rule (`default` when none named one).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    node: String,
    rule: String,
}

/// The node's counters.
#[derive(Debug)]
pub struct Metrics {
    node: String,
    registry: Registry,
    drops: Family<DropLabels, Counter>,
    verdicts: Family<VerdictLabels, Counter>,
    l7: Family<VerdictLabels, Counter>,
    l7_denied: Family<RuleLabels, Counter>,
    lost: Family<DropLabels, Counter>,
}

impl Metrics {
    /// Counters for node `node`, registered under `membrane_`.
    pub fn new(node: &str) -> Self {
        let mut registry = Registry::with_prefix("membrane");
        let (drops, verdicts, l7, l7_denied, lost) = Default::default();
        registry.register(
            "drop_count",
            "Connections refused and packets dropped, by reason",
            Clone::clone(&drops),
        );
        registry.register(
            "policy_verdict",
            "L3/L4 policy verdicts, by deciding program and verdict",
            Clone::clone(&verdicts),
        );
        registry.register(
            "policy_l7",
            "HTTP requests the sidecars decided, by verdict",
            Clone::clone(&l7),
        );
        registry.register(
            "policy_l7_denied",
            "HTTP requests the sidecars denied, by deciding rule",
            Clone::clone(&l7_denied),
        );
        registry.register(
            "events_lost",
            "Monitor events lost, by where (ring-buffer-full, slow-subscriber)",
            Clone::clone(&lost),
        );
        Self {
            node: node.to_owned(),
            registry,
            drops,
            verdicts,
            l7,
            l7_denied,
            lost,
        }
    }

    /// Counts one event (a record folding `count` occurrences counts that many).
    pub fn count(&self, e: &Event) {
        let n = e.count.max(1);
        let node = self.node.clone();
        if e.kind == TYPE_LOST {
            self.lost
                .get_or_create(&DropLabels {
                    node,
                    reason: e.reason.clone(),
                })
                .inc_by(e.count);
            return;
        }
        if e.is_drop() {
            self.drops
                .get_or_create(&DropLabels {
                    node: node.clone(),
                    reason: e.reason.clone(),
                })
                .inc_by(n);
        }
        let verdict = e.verdict.clone().unwrap_or_default();
        if e.kind == "policy-verdict" {
            self.verdicts
                .get_or_create(&VerdictLabels {
                    node,
                    program: e.program.clone(),
                    verdict,
                })
                .inc_by(n);
        } else if e.kind == TYPE_L7 {
            self.l7
                .get_or_create(&VerdictLabels {
                    node: node.clone(),
                    program: e.program.clone(),
                    verdict: verdict.clone(),
                })
                .inc_by(n);
            if verdict == "denied" {
                let rule = e.l7.as_ref().and_then(|l| l.rule.clone());
                self.l7_denied
                    .get_or_create(&RuleLabels {
                        node,
                        rule: rule.unwrap_or_else(|| "default".to_owned()),
                    })
                    .inc_by(n);
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Serves `GET /metrics` on an already bound `listener` until the runtime ends.
pub fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // EMFILE and friends: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let metrics = metrics.clone();
                    async move {
                        let (status, body) = match req.uri().path() {
                            "/metrics" => (StatusCode::OK, metrics.render()),
                            p => (StatusCode::NOT_FOUND, format!("no {p}; try /metrics\n")),
                        };
                        let mut r = Response::new(Full::new(Bytes::from(body)));
                        *r.status_mut() = status;
                        Ok::<_, Infallible>(r)
                    }
                });
                let mut b = hyper::server::conn::http1::Builder::new();
                b.timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10));
                let _ = tokio::time::timeout(
                    Duration::from_secs(30),
                    b.serve_connection(TokioIo::new(stream), svc),
                )
                .await;
            });
        }
    });
}

/// Binds `addr` for [`serve`], naming the flag on failure.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("--metrics-addr {addr}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_verdicts_and_l7_denials_are_counted_per_node() {
        let m = Metrics::new("node-1");
        let deny = Event {
            kind: "policy-verdict".into(),
            program: "connect4".into(),
            verdict: Some("denied".into()),
            reason: "policy-denied".into(),
            ..Event::default()
        };
        m.count(&deny);
        m.count(&deny);
        m.count(&Event {
            kind: TYPE_L7.into(),
            program: "sidecar".into(),
            verdict: Some("denied".into()),
            l7: Some(membrane_api::monitor::L7 {
                rule: Some("default/rule1".into()),
                ..Default::default()
            }),
            ..Event::default()
        });
        let text = m.render();
        for line in [
            r#"membrane_drop_count_total{node="node-1",reason="policy-denied"} 3"#,
            r#"membrane_policy_verdict_total{node="node-1",program="connect4",verdict="denied"} 2"#,
            r#"membrane_policy_l7_denied_total{node="node-1",rule="default/rule1"} 1"#,
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }
}
