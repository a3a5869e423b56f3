//! `-o json` and `-o yaml`: the selected resources as istioctl prints them,
//! proto3 JSON with camelCase names (Go's protojson through
//! `json.MarshalIndent` with four spaces, which also escapes `<`, `>` and
//! `&`), or that JSON converted to YAML with sorted keys (as
//! `sigs.k8s.io/yaml` does).

use anyhow::{Context, Result};
use prost_reflect::{DeserializeOptions, DynamicMessage};
use serde::Serialize;
use serde_json::Value;

/// The message type of each kind of resource istioctl prints.
pub const CLUSTER: &str = "envoy.config.cluster.v3.Cluster";
/// Listener.
pub const LISTENER: &str = "envoy.config.listener.v3.Listener";
/// Route configuration.
pub const ROUTE: &str = "envoy.config.route.v3.RouteConfiguration";
/// Load assignment (EDS from a dump).
pub const ENDPOINT: &str = "envoy.config.endpoint.v3.ClusterLoadAssignment";
/// Envoy's `/clusters?format=json` entries.
pub const CLUSTER_STATUS: &str = "envoy.admin.v3.ClusterStatus";
/// The secrets section.
pub const SECRETS: &str = "envoy.admin.v3.SecretsConfigDump";
/// The bootstrap section.
pub const BOOTSTRAP: &str = "envoy.admin.v3.BootstrapConfigDump";

/// `v` (Envoy's snake_case JSON of a `type_name`) re-printed with protobuf's
/// JSON names, through Envoy's descriptors.
pub fn camel(type_name: &str, v: &Value) -> Result<Value> {
    serde_json::to_value(message(type_name, v)?)
        .with_context(|| format!("{type_name}: cannot print"))
}

/// Go's `json.MarshalIndent(v, "", "    ")` plus the newline `Fprintln`
/// adds.
pub fn go_json(v: &Value) -> String {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    v.serialize(&mut ser).expect("a Value always serializes");
    go_escape(&String::from_utf8(out).expect("serde_json writes UTF-8"))
}

/// Go's escaping of `<`, `>`, `&`, U+2028 and U+2029 (which only occur
/// inside strings in JSON text), and `Fprintln`'s newline.
fn go_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => escaped.push_str("\\u003c"),
            '>' => escaped.push_str("\\u003e"),
            '&' => escaped.push_str("\\u0026"),
            '\u{2028}' => escaped.push_str("\\u2028"),
            '\u{2029}' => escaped.push_str("\\u2029"),
            c => escaped.push(c),
        }
    }
    escaped.push('\n');
    escaped
}

/// The YAML form (`-o yaml`): keys sorted, as `JSONToYAML` writes them.
pub fn go_yaml(v: &Value) -> Result<String> {
    // serde_json's map is ordered by key here (no `preserve_order`).
    let mut y = serde_yaml_ng::to_string(v).context("cannot print YAML")?;
    y.push('\n');
    Ok(y)
}

/// `v` as a message of `type_name` (Envoy's snake_case JSON in).
fn message(type_name: &str, v: &Value) -> Result<DynamicMessage> {
    let pool = membrane_xds::configdump::pool().map_err(anyhow::Error::msg)?;
    let desc = pool
        .get_message_by_name(type_name)
        .with_context(|| format!("no descriptor for {type_name}"))?;
    DynamicMessage::deserialize_with_options(
        desc,
        v,
        &DeserializeOptions::new().deny_unknown_fields(false),
    )
    .with_context(|| format!("{type_name}: not a valid message"))
}

/// Prints `items` (each of `type_name`) in `format` (`json` or `yaml`).
/// JSON keeps the messages' field order, as protojson writes it; YAML
/// sorts keys, as `JSONToYAML` does.
pub fn print(type_name: &str, items: &[&Value], format: &str) -> Result<String> {
    let msgs = items
        .iter()
        .map(|v| message(type_name, v))
        .collect::<Result<Vec<_>>>()?;
    match format {
        "json" => {
            let mut out = Vec::new();
            let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
            let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
            msgs.serialize(&mut ser).context("cannot print JSON")?;
            Ok(go_escape(&String::from_utf8(out).context("JSON is UTF-8")?))
        }
        _ => {
            let list = msgs
                .iter()
                .map(|m| serde_json::to_value(m).context("cannot print"))
                .collect::<Result<Vec<_>>>()?;
            one(&Value::Array(list), format)
        }
    }
}

/// Prints one value (already in its output form) in `format`.
pub fn one(v: &Value, format: &str) -> Result<String> {
    match format {
        "json" => Ok(go_json(v)),
        "yaml" => go_yaml(v),
        other => anyhow::bail!("output format {other:?}: expected json, yaml or short"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_indented_and_escaped_as_go_does() {
        let v = serde_json::json!([{"a": "<x&y>", "b": []}]);
        assert_eq!(
            go_json(&v),
            "[\n    {\n        \"a\": \"\\u003cx\\u0026y\\u003e\",\n        \"b\": []\n    }\n]\n"
        );
    }

    #[test]
    fn clusters_print_with_protobuf_json_names() {
        let c = serde_json::json!({"name": "x", "type": "EDS", "connect_timeout": "1s",
            "eds_cluster_config": {"eds_config": {"ads": {}}}});
        let v = camel(CLUSTER, &c).unwrap();
        assert_eq!(v["connectTimeout"], "1s");
        assert!(v["edsClusterConfig"]["edsConfig"]["ads"].is_object(), "{v}");
    }
}
