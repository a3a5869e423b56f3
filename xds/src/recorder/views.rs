//! The read side of the recorder: the records as the debug endpoints and
//! `istioctl proxy-status` ask for them (staleness report, Istio's syncz, CSDS
//! client configs).

use super::{ProxyRecord, Recorder, Staleness};
use crate::node::{agent_node, istio_proxy_id};
use crate::resource::{
    AGENT_ENDPOINT, AGENT_NODE, AGENT_PREFILTER, AGENT_SERVICE, CLUSTER, ENDPOINT, LISTENER,
    NETWORK_POLICY_HOSTS, ROUTE,
};

impl Recorder {
    /// Every proxy's record.
    pub fn proxies(&self) -> Vec<ProxyRecord> {
        self.lock().by_node.values().cloned().collect()
    }

    /// One proxy's record.
    pub fn proxy(&self, node: &str) -> Option<ProxyRecord> {
        self.lock().by_node.get(node).cloned()
    }

    /// Which proxies are stale (latest version not ACKed), since when, why.
    pub fn stale(&self) -> Vec<Staleness> {
        let p = self.lock();
        let mut out = Vec::new();
        for rec in p.by_node.values() {
            for (t, tr) in &rec.types {
                let Some(latest) = &tr.latest_version else {
                    continue;
                };
                if !rec.watches.contains_key(t) {
                    continue; // never asked for this type
                }
                if tr.acked_version.as_ref() == Some(latest) {
                    continue;
                }
                let (reason, nack_error) = match (&tr.last_nack, &tr.sent_version) {
                    (Some(n), _) => (
                        format!("proxy rejected version {} (nonce {})", n.version, n.nonce),
                        Some(n.error.clone()),
                    ),
                    _ if !rec.connected => ("proxy is disconnected".to_string(), None),
                    (None, Some(v)) if v == latest => (
                        format!(
                            "version {v} sent (nonce {}), no ACK yet",
                            tr.sent_nonce.clone().unwrap_or_default()
                        ),
                        None,
                    ),
                    (None, _) => (
                        "latest version not sent yet (previous response awaiting ACK)".to_string(),
                        None,
                    ),
                };
                out.push(Staleness {
                    proxy: rec.node_id.clone(),
                    type_url: t.clone(),
                    latest_version: latest.clone(),
                    acked_version: tr.acked_version.clone(),
                    since_ms: tr.latest_at_ms.unwrap_or_default(),
                    reason,
                    nack_error,
                });
            }
        }
        out
    }

    /// Istio's `SyncStatus` list (`/debug/syncz`), field for field as
    /// istiod's Go struct marshals it: the proxy's Istio id (`POD.NAMESPACE`),
    /// the nonces sent and ACKed of the four Envoy types (and ECDS, never
    /// sent here, so absent as Go's `omitempty` leaves it), and `resources`
    /// with every watched type's `sent`, `acked`, `sentTime` and `lastError`.
    /// Node agents also carry membrane's own fields (`node_name`, the
    /// versions each agent type was last ACKed at), which Go's decoder
    /// ignores.
    pub fn syncz(&self) -> Vec<serde_json::Value> {
        let p = self.lock();
        let mut out: Vec<(String, serde_json::Value)> = p
            .by_node
            .values()
            .filter(|r| r.connected)
            .map(|r| {
                let mut o = serde_json::Map::new();
                o.insert("cluster_id".into(), CLUSTER_ID.into());
                o.insert("proxy".into(), istio_proxy_id(&r.node_id).into());
                let kind = r.node_id.split('~').next().unwrap_or_default();
                if kind == "sidecar" || kind == "router" {
                    o.insert("proxy_type".into(), kind.into());
                }
                // Node agents beside the sidecars: which node, and what each of
                // their types was last sent and ACKed at (the ACK is what the
                // agent enforces).
                if let Some(node) = agent_node(&r.node_id) {
                    o.insert("proxy_type".into(), "agent".into());
                    o.insert("node_name".into(), node.into());
                    for (t, prefix) in [
                        (AGENT_ENDPOINT, "agent_endpoint"),
                        (AGENT_SERVICE, "agent_service"),
                        (AGENT_NODE, "agent_node"),
                        (AGENT_PREFILTER, "agent_prefilter"),
                        (NETWORK_POLICY_HOSTS, "ipcache"),
                    ] {
                        if let Some(tr) = r.types.get(t) {
                            if let Some(v) = &tr.acked_version {
                                o.insert(format!("{prefix}_acked_version"), v.clone().into());
                            }
                        }
                    }
                }
                o.insert("istio_version".into(), ISTIO_VERSION.into());
                for (t, prefix) in [
                    (CLUSTER, "cluster"),
                    (LISTENER, "listener"),
                    (ROUTE, "route"),
                    (ENDPOINT, "endpoint"),
                ] {
                    if let Some(tr) = r.types.get(t) {
                        if let Some(n) = &tr.sent_nonce {
                            o.insert(format!("{prefix}_sent"), n.clone().into());
                        }
                        if let Some(n) = &tr.acked_nonce {
                            o.insert(format!("{prefix}_acked"), n.clone().into());
                        }
                    }
                }
                let mut resources = serde_json::Map::new();
                for t in r.watches.keys() {
                    let tr = r.types.get(t).cloned().unwrap_or_default();
                    let mut s = serde_json::Map::new();
                    if let Some(n) = tr.sent_nonce {
                        s.insert("sent".into(), n.into());
                    }
                    if let Some(n) = tr.acked_nonce {
                        s.insert("acked".into(), n.into());
                    }
                    // Go's time.Time has no empty value: never sent is the zero time.
                    s.insert("sentTime".into(), go_time(tr.sent_at).into());
                    if let Some(n) = tr.last_nack {
                        s.insert("lastError".into(), n.error.into());
                    }
                    resources.insert(t.clone(), s.into());
                }
                if !resources.is_empty() {
                    o.insert("resources".into(), resources.into());
                }
                (r.node_id.clone(), serde_json::Value::Object(o))
            })
            .collect();
        // istiod lists its clients sorted by connection; by node id here.
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.into_iter().map(|(_, v)| v).collect()
    }
}

/// The cluster id membrane reports for every proxy: Istio's default for a
/// single cluster (`Kubernetes`).
pub const CLUSTER_ID: &str = "Kubernetes";

/// The version membrane reports where Istio reports the proxy's Istio
/// version (node metadata `ISTIO_VERSION`): membrane's own release.
pub const ISTIO_VERSION: &str = concat!("membrane-", env!("CARGO_PKG_VERSION"));

/// Go's `time.Time` JSON (RFC 3339 with nanoseconds, trailing zeros cut),
/// in UTC; `None` is Go's zero time.
pub fn go_time(t: Option<std::time::SystemTime>) -> String {
    let Some(t) = t else {
        return "0001-01-01T00:00:00Z".to_string();
    };
    let s = humantime::format_rfc3339_nanos(t).to_string();
    // "2026-12-07T11:01:31.123000000Z" -> "2026-12-07T11:01:31.123Z"
    match s.strip_suffix('Z').and_then(|b| b.split_once('.')) {
        Some((secs, frac)) => {
            let frac = frac.trim_end_matches('0');
            if frac.is_empty() {
                format!("{secs}Z")
            } else {
                format!("{secs}.{frac}Z")
            }
        }
        None => s,
    }
}

/// The ADS debug type istiod serves and `istioctl proxy-status --xds-address`
/// reads: one `envoy.service.status.v3.ClientConfig` per connected proxy.
pub const DEBUG_SYNCZ: &str = "istio.io/debug/syncz";

impl Recorder {
    /// Every connected proxy as a `ClientConfig`, as istiod's status
    /// generator builds them: the node with its Istio id and the metadata
    /// istioctl reads (`CLUSTER_ID`, `ISTIO_VERSION`), and one generic xDS
    /// config per subscribed type: SYNCED (the last response sent was
    /// ACKed), NOT_SENT, ERROR (the proxy NACKed it) or STALE (sent, not
    /// ACKed yet), with when it was last sent.
    pub fn client_configs(&self) -> Vec<envoy_types::pb::envoy::service::status::v3::ClientConfig> {
        use envoy_types::pb::envoy::config::core::v3::Node;
        use envoy_types::pb::envoy::service::status::v3::{
            client_config::GenericXdsConfig, ClientConfig, ConfigStatus,
        };
        use envoy_types::pb::google::protobuf::{value::Kind, Struct, Timestamp, Value};
        let text = |s: &str| Value {
            kind: Some(Kind::StringValue(s.to_string())),
        };
        let p = self.lock();
        p.by_node
            .values()
            .filter(|r| r.connected)
            .map(|r| ClientConfig {
                // A node agent says so where istioctl shows the client's
                // build (the node id names it too: membrane-agent~NODE).
                node: Some(Node {
                    id: istio_proxy_id(&r.node_id),
                    user_agent_name: agent_node(&r.node_id)
                        .map(|_| "membrane-agent".to_string())
                        .unwrap_or_default(),
                    metadata: Some(Struct {
                        fields: [
                            ("CLUSTER_ID".to_string(), text(CLUSTER_ID)),
                            ("ISTIO_VERSION".to_string(), text(ISTIO_VERSION)),
                        ]
                        .into_iter()
                        .collect(),
                    }),
                    ..Default::default()
                }),
                generic_xds_configs: r
                    .watches
                    .keys()
                    .map(|t| {
                        let tr = r.types.get(t).cloned().unwrap_or_default();
                        let status = if tr.sent_nonce.is_none() {
                            ConfigStatus::NotSent
                        } else if tr.last_nack.is_some() {
                            ConfigStatus::Error
                        } else if tr.acked_nonce == tr.sent_nonce {
                            ConfigStatus::Synced
                        } else {
                            ConfigStatus::Stale
                        };
                        let last_updated = tr.sent_at.map(|t| {
                            let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                            Timestamp {
                                seconds: d.as_secs() as i64,
                                nanos: d.subsec_nanos() as i32,
                            }
                        });
                        GenericXdsConfig {
                            type_url: t.clone(),
                            version_info: tr.acked_version.or(tr.sent_version).unwrap_or_default(),
                            config_status: status as i32,
                            last_updated,
                            ..Default::default()
                        }
                    })
                    .collect(),
                ..Default::default()
            })
            .collect()
    }
}
