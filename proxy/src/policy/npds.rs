//! Cilium's NPDS/NPHDS (as served by `membrane-xds`) → an [`Enforcer`](super::Enforcer).
//! Decoding is `membrane-api`'s ([`decode`]: the endpoint's resolved policy and the
//! ipcache, in the engine's own form); what this module adds is the enforcer around them,
//! whose verdicts come from the engine's one implementation (`DirectionPolicy::connection`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use membrane_api::npds::decode;
use membrane_api::proto::{NetworkPolicy, NetworkPolicyHosts};
use membrane_policy::resolve::{DirectionPolicy, Remotes};
use membrane_policy::rule::L7 as PolicyL7;

use super::{Enforcer, Source};

/// NPHDS resources → the ipcache, as the decoder reads them.
pub use membrane_api::npds::decode::ipcache;
/// Why an NPDS/NPHDS update could not be put in force (the decoder's error); the message
/// is the NACK's `error_detail`, naming the resource and the field.
pub use membrane_api::npds::decode::DecodeError as NpdsError;

/// Builds the enforcer for the endpoint at `pod_ip` from the NPDS resources (the one
/// whose `endpoint_ips` names `pod_ip`) and the NPHDS resources. With no policy for this
/// endpoint everything is denied. Any field that cannot be enforced exactly rejects the
/// whole update.
pub fn build(
    pod_ip: IpAddr,
    policies: &[NetworkPolicy],
    hosts: &[NetworkPolicyHosts],
    summary: serde_json::Value,
) -> Result<Enforcer, NpdsError> {
    let decode::Decoded {
        policy,
        ipcache,
        found,
    } = decode::endpoint(pod_ip, policies, hosts)?;
    let local = ipcache.lookup(pod_ip).0;
    let mut summary = summary;
    summary["endpoint_ip"] = pod_ip.to_string().into();
    summary["endpoint_identity"] = local.into();
    summary["endpoint_policy_found"] = found.into();
    summary["ingress"] = describe(&policy.ingress);
    summary["egress"] = describe(&policy.egress);
    summary["ipcache"] = ipcache
        .entries()
        .map(|(p, id)| serde_json::json!({"prefix": p.to_string(), "identity": id.0}))
        .collect();
    Ok(Enforcer {
        ingress: policy.ingress,
        egress: policy.egress,
        ipcache,
        local,
        source: Source::Npds,
        summary,
        received: None,
    })
}

/// One xDS type's resources as the proxy accepted them: the version, when it went in
/// force, and the resources (shared with the client's own record, not copied).
#[derive(Debug, Clone)]
pub struct Subscription<T> {
    /// The response's `version_info`.
    pub version: String,
    /// When this version was put in force.
    pub updated: SystemTime,
    /// The resources, as decoded from the response.
    pub resources: Arc<Vec<T>>,
}

/// The NPDS and NPHDS resources an enforcer was built from, for `/config_dump`.
#[derive(Debug, Clone)]
pub struct Received {
    /// The node id the proxy subscribed as.
    pub node_id: String,
    /// `cilium.NetworkPolicy` resources.
    pub npds: Subscription<NetworkPolicy>,
    /// `cilium.NetworkPolicyHosts` resources.
    pub nphds: Subscription<NetworkPolicyHosts>,
}

fn describe(dp: &DirectionPolicy) -> serde_json::Value {
    dp.entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "ports": e.ports.to_string(),
                    "rules": e.rules.iter().map(|r| serde_json::json!({
                        "name": r.origin.rule,
                        "deny": r.deny,
                        "remotes": match &r.remotes {
                            Remotes::All => None,
                            Remotes::Set(ids) => Some(ids.iter().map(|i| i.0).collect::<Vec<_>>()),
                        },
                        "http": match &r.l7 {
                            PolicyL7::Http(h) => Some(h.iter().map(|x| x.to_string()).collect::<Vec<_>>()),
                            _ => None,
                        },
                        "unenforced_l7": match &r.l7 {
                            PolicyL7::Unenforced(kind) => Some(kind.as_str()),
                            _ => None,
                        },
                        "tls": r.tls.as_ref().map(|t| serde_json::json!({
                            "server_names": t.server_names,
                            "terminating": t.terminating.as_ref().map(|s| s.to_string()),
                            "originating": t.originating.as_ref().map(|s| s.to_string()),
                        })),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect()
}

#[cfg(test)]
mod tests;
