//! The `/config_dump` section for what the proxy holds from the control plane: Cilium's
//! NPDS policies and NPHDS hosts as received, with each type's version and when it went
//! in force.
//!
//! Shape: Envoy's own message for "one xDS resource of any type, as a client holds it",
//! CSDS's `envoy.service.status.v3.ClientConfig` with one `GenericXdsConfig` per resource
//! (`type_url`, `name`, `version_info`, the resource as an `Any` in `xds_config`,
//! `last_updated`, `client_status: ACKED`). Cilium's own Envoy dumps its policies as
//! `cilium.NetworkPoliciesConfigDump`, which has no version or time; Envoy's ECDS section
//! carries both but types its resources as `TypedExtensionConfig`, which these are not.
//! The dump stays an `envoy.admin.v3.ConfigDump` by Envoy's definitions; the policies
//! inside decode with Cilium's. Tools that do not know the section skip it (istioctl
//! resolves an unknown `Any` to a placeholder and goes on).
//!
//! Rendering goes through a descriptor pool of the Cilium protos (and the Envoy files they
//! import), decoded per request and dropped after it, so a sidecar pays no memory for it
//! between dumps.

use membrane_api::type_url::{NETWORK_POLICY, NETWORK_POLICY_HOSTS};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::{json, Map, Value};

use crate::policy::npds::{Received, Subscription};

/// Why a resource could not be rendered (shown in its place; the dump goes on).
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// The embedded descriptors do not decode (a build defect).
    #[error("cilium descriptors: {0}")]
    Descriptors(String),
    /// The pool has no message of this name.
    #[error("no descriptor for {0}")]
    Unknown(String),
    /// The resource does not decode or print as its type.
    #[error("{0}: {1}")]
    Render(String, String),
}

/// The `ClientConfig` section for `received`.
pub fn section(received: &Received) -> Value {
    let pool = DescriptorPool::decode(membrane_api::descriptors::CILIUM)
        .map_err(|e| DumpError::Descriptors(e.to_string()));
    let mut configs = Vec::new();
    entries(&pool, NETWORK_POLICY, &received.npds, &mut configs, |p| {
        p.endpoint_ips.first().cloned().unwrap_or_default()
    });
    entries(
        &pool,
        NETWORK_POLICY_HOSTS,
        &received.nphds,
        &mut configs,
        |h| h.policy.to_string(),
    );
    json!({
        "@type": "type.googleapis.com/envoy.service.status.v3.ClientConfig",
        "node": {"id": received.node_id},
        "generic_xds_configs": configs,
    })
}

fn entries<T: Message>(
    pool: &Result<DescriptorPool, DumpError>,
    type_url: &str,
    sub: &Subscription<T>,
    out: &mut Vec<Value>,
    name: impl Fn(&T) -> String,
) {
    let updated = humantime::format_rfc3339_millis(sub.updated).to_string();
    for r in sub.resources.iter() {
        let config = pool
            .as_ref()
            .map_err(|e| e.to_string())
            .and_then(|p| any_json(p, type_url, &r.encode_to_vec()).map_err(|e| e.to_string()))
            .unwrap_or_else(|e| json!({"@type": type_url, "error": e}));
        out.push(json!({
            "type_url": type_url,
            "name": name(r),
            "version_info": sub.version,
            "xds_config": config,
            "last_updated": updated,
            "client_status": "ACKED",
        }));
    }
}

/// One encoded message as an `Any` prints in Envoy's admin JSON: `@type` first, then the
/// fields by their proto names.
fn any_json(pool: &DescriptorPool, type_url: &str, bytes: &[u8]) -> Result<Value, DumpError> {
    let name = type_url.rsplit('/').next().unwrap_or(type_url);
    let desc = pool
        .get_message_by_name(name)
        .ok_or_else(|| DumpError::Unknown(name.to_owned()))?;
    let render = |e: &dyn std::fmt::Display| DumpError::Render(name.to_owned(), e.to_string());
    let msg = DynamicMessage::decode(desc, bytes).map_err(|e| render(&e))?;
    let opts = SerializeOptions::new().use_proto_field_name(true);
    let v = msg
        .serialize_with_options(serde_json::value::Serializer, &opts)
        .map_err(|e| render(&e))?;
    let mut out = Map::new();
    out.insert("@type".into(), Value::String(type_url.to_owned()));
    if let Value::Object(mut m) = v {
        out.append(&mut m);
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use membrane_api::proto::{NetworkPolicy, NetworkPolicyHosts};
    use std::sync::Arc;
    use std::time::SystemTime;

    #[test]
    fn policies_and_hosts_print_as_generic_xds_configs() {
        let sub = |v: &str| (v.to_owned(), SystemTime::UNIX_EPOCH);
        let (nv, nt) = sub("7");
        let (hv, ht) = sub("3");
        let received = Received {
            node_id: "sidecar~10.0.0.1~a.default~default.svc.cluster.local".into(),
            npds: Subscription {
                version: nv,
                updated: nt,
                resources: Arc::new(vec![NetworkPolicy {
                    endpoint_ips: vec!["10.0.0.1".into()],
                    endpoint_id: 42,
                    ..Default::default()
                }]),
            },
            nphds: Subscription {
                version: hv,
                updated: ht,
                resources: Arc::new(vec![NetworkPolicyHosts {
                    policy: 1000,
                    host_addresses: vec!["10.0.0.2/32".into()],
                }]),
            },
        };
        let s = section(&received);
        let c = s["generic_xds_configs"].as_array().unwrap();
        assert_eq!(c.len(), 2, "{s}");
        assert_eq!(c[0]["name"], "10.0.0.1");
        assert_eq!(c[0]["version_info"], "7");
        assert_eq!(c[0]["last_updated"], "1970-01-01T00:00:00.000Z");
        assert_eq!(c[0]["xds_config"]["@type"], NETWORK_POLICY);
        assert_eq!(c[0]["xds_config"]["endpoint_id"], "42", "{s}");
        assert_eq!(c[1]["name"], "1000");
        assert_eq!(c[1]["xds_config"]["host_addresses"][0], "10.0.0.2/32");
    }
}
