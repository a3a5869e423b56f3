//! The read side of the recorder: the records as the debug endpoints and
//! `istioctl proxy-status` ask for them (staleness report, Istio's syncz, CSDS
//! client configs).

use super::{ProxyRecord, Recorder, Staleness};
use crate::node::agent_node;
use crate::resource::{
    AGENT_ENDPOINT, AGENT_NODE, AGENT_SERVICE, CLUSTER, ENDPOINT, LISTENER, NETWORK_POLICY_HOSTS,
    ROUTE,
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

    /// Istio's `SyncStatus` list (`/debug/syncz`): nonces sent and ACKed per type.
    pub fn syncz(&self) -> Vec<serde_json::Value> {
        let p = self.lock();
        p.by_node
            .values()
            .filter(|r| r.connected)
            .map(|r| {
                let mut o = serde_json::Map::new();
                o.insert("cluster_id".into(), "Kubernetes".into());
                o.insert("proxy".into(), r.node_id.clone().into());
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
                        (NETWORK_POLICY_HOSTS, "ipcache"),
                    ] {
                        if let Some(tr) = r.types.get(t) {
                            if let Some(v) = &tr.acked_version {
                                o.insert(format!("{prefix}_acked_version"), v.clone().into());
                            }
                        }
                    }
                }
                o.insert(
                    "istio_version".into(),
                    concat!("membrane-", env!("CARGO_PKG_VERSION")).into(),
                );
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
                for (t, tr) in &r.types {
                    resources.insert(
                        t.clone(),
                        serde_json::json!({
                            "sent": tr.sent_nonce,
                            "acked": tr.acked_nonce,
                            "sentTime": tr.sent_at_ms,
                            "ackedTime": tr.acked_at_ms,
                        }),
                    );
                }
                o.insert("resources".into(), resources.into());
                serde_json::Value::Object(o)
            })
            .collect()
    }
}

/// The ADS debug type istiod serves and `istioctl proxy-status --xds-address`
/// reads: one `envoy.service.status.v3.ClientConfig` per connected proxy.
pub const DEBUG_SYNCZ: &str = "istio.io/debug/syncz";

impl Recorder {
    /// Every connected proxy as a `ClientConfig`, with one generic xDS config
    /// per subscribed type: SYNCED (latest version ACKed), NOT_SENT, ERROR
    /// (the proxy NACKed it) or STALE (sent, not ACKed yet).
    pub fn client_configs(&self) -> Vec<envoy_types::pb::envoy::service::status::v3::ClientConfig> {
        use envoy_types::pb::envoy::config::core::v3::Node;
        use envoy_types::pb::envoy::service::status::v3::{
            client_config::GenericXdsConfig, ClientConfig, ConfigStatus,
        };
        let p = self.lock();
        p.by_node
            .values()
            .filter(|r| r.connected)
            .map(|r| ClientConfig {
                // A node agent says so where istioctl shows the client's
                // build (the node id names it too: membrane-agent~NODE).
                node: Some(Node {
                    id: r.node_id.clone(),
                    user_agent_name: agent_node(&r.node_id)
                        .map(|_| "membrane-agent".to_string())
                        .unwrap_or_default(),
                    ..Default::default()
                }),
                generic_xds_configs: r
                    .watches
                    .keys()
                    .map(|t| {
                        let tr = r.types.get(t).cloned().unwrap_or_default();
                        let status = if tr.sent_version.is_none() {
                            ConfigStatus::NotSent
                        } else if tr.last_nack.is_some() {
                            ConfigStatus::Error
                        } else if tr.acked_version.is_some()
                            && tr.acked_version == tr.latest_version
                        {
                            ConfigStatus::Synced
                        } else {
                            ConfigStatus::Stale
                        };
                        GenericXdsConfig {
                            type_url: t.clone(),
                            version_info: tr.acked_version.or(tr.sent_version).unwrap_or_default(),
                            config_status: status as i32,
                            ..Default::default()
                        }
                    })
                    .collect(),
                ..Default::default()
            })
            .collect()
    }
}
