//! What the agent socket answers about the node: status, endpoints, the ipcache, services
//! and an endpoint's policy map read back from the kernel (the CLI's `membrane status`,
//! `endpoint`, `identity`, `service` and `bpf policy get`).

use std::collections::BTreeMap;

use membrane_datapath::api::Registration;
use membrane_datapath::Datapath;

use crate::node::{dp_err, ipcache_of, Node, NodeError};
use crate::resources::{Kind, Spec};

type Result<T> = std::result::Result<T, NodeError>;

impl Node {
    /// `membrane status`.
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "node": self.name,
            "bpffs": self.bpffs,
            "state_dir": self.store.dir(),
            "control_plane": self.xds,
            "endpoints": self.regs.len(),
            "resources": Kind::ALL.iter().map(|k| (k.name(), self.held.get(k).map(|h| h.len()))).collect::<BTreeMap<_, _>>(),
            "packet_path": self.packet_status(),
            "sidecar_records": self.records.json(),
        })
    }

    fn endpoint_json(&self, key: &str, reg: &Registration) -> serde_json::Value {
        let spec = self.spec(key).flatten();
        serde_json::json!({
            "endpoint": key,
            "namespace": reg.namespace,
            "pod": reg.pod,
            "container_id": reg.container_id,
            "netns": reg.netns,
            "cgroup": reg.cgroup,
            "ips": spec.map(|s| s.ips.clone()).unwrap_or_else(|| reg.ips.clone()),
            "identity": spec.map(|s| s.identity),
            "sidecar": spec.map(|s| s.sidecar),
            "labels": spec.map(|s| s.labels.clone()),
            "policy_revision": spec.map(|s| s.revision),
            "ingress_enforced": spec.map(|s| s.enforced.0),
            "egress_enforced": spec.map(|s| s.enforced.1),
            "ingress_selected_by": spec.map(|s| s.selected_by.0.clone()),
            "egress_selected_by": spec.map(|s| s.selected_by.1.clone()),
            "policy_rules": spec.map(|s| s.rules.len()),
            "state": self.states.get(key),
            "pins": self.endpoint_dir(key),
        })
    }

    /// `membrane endpoint list`.
    pub fn endpoints(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.regs
                .iter()
                .map(|(k, r)| self.endpoint_json(k, r))
                .collect(),
        )
    }

    /// `membrane endpoint get NS/POD`.
    pub fn endpoint(&self, key: &str) -> Result<serde_json::Value> {
        let reg = self
            .regs
            .get(key)
            .ok_or_else(|| NodeError::NoEndpoint(key.to_owned()))?;
        Ok(self.endpoint_json(key, reg))
    }

    /// `membrane bpf policy get NS/POD`: the policy map read back from the kernel.
    pub fn policy(&self, key: &str) -> Result<serde_json::Value> {
        if !self.regs.contains_key(key) {
            return Err(NodeError::NoEndpoint(key.to_owned()));
        }
        let dp = Datapath::open(self.endpoint_dir(key)).map_err(dp_err(key, "open pins"))?;
        let rules = dp
            .policy_rules()
            .map_err(dp_err(key, "read the policy map"))?;
        let settings = dp.settings().map_err(dp_err(key, "read settings"))?;
        Ok(serde_json::json!({
            "endpoint": key,
            "identity": settings.pod_identity,
            "policy_enforce": settings.policy_enforce,
            "rules": rules,
        }))
    }

    /// `membrane identity list`: the ipcache, read back from an endpoint's map (every
    /// endpoint holds the same), else as received. With the packet path, each row also
    /// names its tunnel endpoint (the node ipcache read back).
    pub fn identities(&self) -> serde_json::Value {
        if let Some(Ok(entries)) = self.packet.as_ref().map(|p| p.dp.ipcache()) {
            if self.held.contains_key(&Kind::Hosts) {
                let rows: Vec<serde_json::Value> = entries
                    .iter()
                    .map(|e| {
                        serde_json::json!({
                            "prefix": e.prefix.to_string(),
                            "identity": e.identity,
                            "tunnel": e.tunnel,
                        })
                    })
                    .collect();
                return serde_json::json!({ "source": "kernel", "entries": rows });
            }
        }
        let from_kernel = self
            .regs
            .keys()
            .find_map(|k| Datapath::open(self.endpoint_dir(k)).ok()?.ipcache().ok());
        let (source, entries) = match from_kernel {
            Some(e) => ("kernel", e),
            None => (
                "control-plane",
                self.held
                    .get(&Kind::Hosts)
                    .and_then(|h| ipcache_of(h).ok())
                    .unwrap_or_default(),
            ),
        };
        let rows: Vec<serde_json::Value> = entries
            .iter()
            .map(|(net, id)| serde_json::json!({"prefix": net.to_string(), "identity": id}))
            .collect();
        serde_json::json!({ "source": source, "entries": rows })
    }

    /// `membrane service list`: the services as received, with what the maps hold.
    pub fn services(&self) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = self
            .held
            .get(&Kind::Service)
            .map(|h| {
                h.iter()
                    .filter_map(|(n, (_, _, s))| match s {
                        Spec::Service(s) => Some(serde_json::json!({
                            "name": n,
                            "frontend": s.frontend.to_string(),
                            "protocol": s.protocol,
                            "backends": s.backends.iter().map(|b| b.to_string()).collect::<Vec<_>>(),
                        })),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        serde_json::Value::Array(rows)
    }
}
