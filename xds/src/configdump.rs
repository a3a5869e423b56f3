//! What a proxy's snapshot holds, rendered as Envoy's admin `ConfigDump`
//! JSON (the shape `istioctl proxy-config` and Envoy's own `/config_dump`
//! use), plus Cilium's `NetworkPoliciesConfigDump` for NPDS.
//!
//! Resources are decoded from the exact bytes the server sends, through a
//! descriptor pool built from Envoy's published descriptors (shipped with
//! `envoy-types`) and ours for the Cilium protos, and printed with the
//! proto3 JSON mapping: snake_case field names as Envoy's admin prints them,
//! `Any` expanded with its `@type`, defaults omitted.

use std::sync::OnceLock;
use std::time::SystemTime;

use membrane_api::descriptors::{CILIUM as CILIUM_DESCRIPTORS, ENVOY as ENVOY_DESCRIPTORS};
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::{json, Map, Value};

use crate::resource::{self, Resource};
use crate::snapshot::Snapshot;

/// Envoy's and Cilium's message descriptors, decoded once on first use.
pub fn pool() -> Result<&'static DescriptorPool, String> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| {
        let mut pool = DescriptorPool::decode(ENVOY_DESCRIPTORS)
            .map_err(|e| format!("envoy descriptors: {e}"))?;
        pool.decode_file_descriptor_set(CILIUM_DESCRIPTORS)
            .map_err(|e| format!("cilium descriptors: {e}"))?;
        Ok(pool)
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// The proto3 JSON of one encoded message of `type_url`, with its `@type`
/// (as an `Any` prints).
pub fn any_to_json(type_url: &str, value: &[u8]) -> Result<Value, String> {
    let pool = pool()?;
    let name = type_url.rsplit('/').next().unwrap_or(type_url);
    let desc = pool
        .get_message_by_name(name)
        .ok_or_else(|| format!("unknown message type {name}"))?;
    let msg = DynamicMessage::decode(desc, value).map_err(|e| format!("{name}: {e}"))?;
    let opts = SerializeOptions::new().use_proto_field_name(true);
    let mut v = msg
        .serialize_with_options(serde_json::value::Serializer, &opts)
        .map_err(|e| format!("{name}: {e}"))?;
    if let Value::Object(m) = &mut v {
        let mut out = Map::with_capacity(m.len() + 1);
        out.insert("@type".into(), Value::String(type_url.to_string()));
        out.append(m);
        return Ok(Value::Object(out));
    }
    Ok(v)
}

/// A resource as JSON; a resource that cannot be rendered says why, in
/// place, rather than failing the whole dump.
pub fn resource_json(r: &Resource) -> Value {
    any_to_json(&r.body.type_url, &r.body.value)
        .unwrap_or_else(|e| json!({ "@type": r.body.type_url, "error": e }))
}

/// RFC 3339 UTC with milliseconds, as protobuf's `Timestamp` prints.
fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Envoy's `ConfigDump` for `snap`: one entry per xDS type the snapshot
/// holds, in Envoy's order (clusters, listeners, routes, endpoints), then
/// Cilium's NPDS dump, then the sidecar's `membrane.mesh.v1.MeshTls`. `version_of(type_url)` is the version to report for a
/// type: what was last sent to the proxy, or the snapshot's own.
pub fn config_dump(snap: &Snapshot, version_of: impl Fn(&str) -> String) -> Value {
    let updated = timestamp(snap.created);
    let items = |t: &str| -> Vec<&Resource> {
        snap.resources(t)
            .map(|s| s.items.values().collect())
            .unwrap_or_default()
    };
    let mut configs = Vec::new();
    let clusters = items(resource::CLUSTER);
    if !clusters.is_empty() {
        let v = version_of(resource::CLUSTER);
        configs.push(json!({
            "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
            "version_info": v,
            "dynamic_active_clusters": clusters.iter().map(|r| json!({
                "version_info": v,
                "cluster": resource_json(r),
                "last_updated": updated,
            })).collect::<Vec<_>>(),
        }));
    }
    let listeners = items(resource::LISTENER);
    if !listeners.is_empty() {
        let v = version_of(resource::LISTENER);
        configs.push(json!({
            "@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
            "version_info": v,
            "dynamic_listeners": listeners.iter().map(|r| json!({
                "name": r.name,
                "active_state": {
                    "version_info": v,
                    "listener": resource_json(r),
                    "last_updated": updated,
                },
            })).collect::<Vec<_>>(),
        }));
    }
    let routes = items(resource::ROUTE);
    if !routes.is_empty() {
        let v = version_of(resource::ROUTE);
        configs.push(json!({
            "@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
            "dynamic_route_configs": routes.iter().map(|r| json!({
                "version_info": v,
                "route_config": resource_json(r),
                "last_updated": updated,
            })).collect::<Vec<_>>(),
        }));
    }
    let endpoints = items(resource::ENDPOINT);
    if !endpoints.is_empty() {
        let v = version_of(resource::ENDPOINT);
        configs.push(json!({
            "@type": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
            "dynamic_endpoint_configs": endpoints.iter().map(|r| json!({
                "version_info": v,
                "endpoint_config": resource_json(r),
                "last_updated": updated,
            })).collect::<Vec<_>>(),
        }));
    }
    let policies = items(resource::NETWORK_POLICY);
    if !policies.is_empty() {
        let strip = |r: &Resource| {
            let mut v = resource_json(r);
            if let Value::Object(m) = &mut v {
                m.remove("@type");
            }
            v
        };
        configs.push(json!({
            "@type": "type.googleapis.com/cilium.NetworkPoliciesConfigDump",
            "networkpolicies": policies.into_iter().map(strip).collect::<Vec<_>>(),
        }));
    }
    // The sidecar's PeerAuthentication mode, as the message itself (membrane's own type;
    // a client without its descriptor skips it as any unknown `Any`).
    for r in items(resource::MESH_TLS) {
        configs.push(resource_json(r));
    }
    json!({ "configs": configs })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::dir::parse;
    use crate::translate::Translator;

    /// The dump parses back as Envoy's `ConfigDump` message (the same check
    /// a protojson client such as istioctl makes), and holds the RBAC
    /// filter of the Star Wars L7 policy.
    #[test]
    fn starwars_dump_is_an_envoy_config_dump() {
        let state = parse("sw.yaml", crate::translate::tests::STARWARS)
            .unwrap()
            .state;
        let t = Translator::new().translate(&state);
        let (_, snap) = t
            .snapshots
            .iter()
            .find(|(k, _)| k.contains("deathstar"))
            .expect("a deathstar sidecar");
        let dump = config_dump(snap, |t| snap.type_version(t));
        let text = parses_as_config_dump(&dump);

        let types: Vec<&str> = dump["configs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["@type"].as_str().unwrap())
            .collect();
        assert!(types.contains(&"type.googleapis.com/envoy.admin.v3.ListenersConfigDump"));
        assert!(
            // The path regex, in the anchored form the translation writes.
            text.contains("\"^(?:/v1/request-landing)$\""),
            "the RBAC path rule is rendered: {text}"
        );
        assert!(text.contains("type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"));

        // The mesh-wide snapshot carries NPDS: Cilium's dump, also valid.
        let shared = &t.snapshots[crate::node::SHARED_KEY];
        let dump = config_dump(shared, |t| shared.type_version(t));
        let text = parses_as_config_dump(&dump);
        assert!(text.contains("cilium.NetworkPoliciesConfigDump"), "{text}");
        assert!(text.contains("\"endpoint_ips\""), "{text}");
    }

    fn parses_as_config_dump(dump: &Value) -> String {
        let desc = pool()
            .unwrap()
            .get_message_by_name("envoy.admin.v3.ConfigDump")
            .unwrap();
        let text = dump.to_string();
        let mut de = serde_json::Deserializer::from_str(&text);
        DynamicMessage::deserialize(desc, &mut de).expect("a valid envoy.admin.v3.ConfigDump");
        text
    }

    #[test]
    fn an_undecodable_resource_is_reported_in_place() {
        let v = any_to_json(resource::LISTENER, &[0xff, 0xff, 0xff]);
        assert!(v.is_err());
        let v = any_to_json("type.googleapis.com/no.such.Type", &[]).unwrap_err();
        assert!(v.contains("unknown message type no.such.Type"), "{v}");
    }
}
