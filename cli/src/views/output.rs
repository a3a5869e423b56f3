//! `-o json` and `-o yaml`: the selected resources as istioctl prints them.
//!
//! istioctl (Istio 1.27) prints every message through Istio's `protomarshal`, which
//! calls Go's legacy `jsonpb` (not `protojson`: Istio keeps jsonpb on purpose, see
//! `pkg/util/protomarshal`), so there is no `protojson` whitespace randomization to
//! undo, and the key order is jsonpb's: fields in declaration order, a set oneof member
//! where its oneof's first field is declared, `@type` first in an `Any`. Two shapes:
//!
//! - clusters, listeners, routes and endpoints: its `MessageSlice` writes each message
//!   with compact jsonpb, joins them into a JSON array, and `json.MarshalIndent(.., "",
//!   "    ")` re-indents that text (keys keep their order; empty objects and arrays
//!   become `{}` and `[]`);
//! - `bootstrap` and `secret`: jsonpb itself with a four-space indent
//!   (`ToJSONWithIndent`), quirks included (`{` and `}` with an empty line between for
//!   an empty message, a `Struct`'s entries two levels in).
//!
//! Then `fmt.Fprintln`'s newline. `-o yaml` is that JSON through `sigs.k8s.io/yaml`'s
//! `JSONToYAML`, which sorts keys.

use anyhow::{bail, Context, Result};
use prost_reflect::{DeserializeOptions, DynamicMessage};
use serde_json::Value;

use super::jsonpb;

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

/// Go's `json.Indent(dst, src, "", indent)` of JSON text: a line per member and
/// element, `": "` after keys, `{}` and `[]` kept on one line, strings untouched.
pub fn go_indent(text: &str, indent: &str) -> String {
    fn newline(out: &mut String, indent: &str, depth: usize) {
        out.push('\n');
        for _ in 0..depth {
            out.push_str(indent);
        }
    }
    let mut out = String::with_capacity(text.len() * 2);
    let (mut depth, mut need_indent) = (0usize, false);
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        if matches!(c, ' ' | '\t' | '\n' | '\r') {
            continue;
        }
        // The line break after an opening bracket waits for what follows it, so
        // that an empty object or array stays `{}` or `[]`.
        if need_indent && c != '}' && c != ']' {
            need_indent = false;
            depth += 1;
            newline(&mut out, indent, depth);
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                need_indent = true;
            }
            ',' => {
                out.push(c);
                newline(&mut out, indent, depth);
            }
            ':' => out.push_str(": "),
            '}' | ']' => {
                if need_indent {
                    need_indent = false;
                } else {
                    depth = depth.saturating_sub(1);
                    newline(&mut out, indent, depth);
                }
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
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

/// Prints `items` (each of `type_name`) in `format` (`json` or `yaml`), as istioctl's
/// `MessageSlice` through `json.MarshalIndent`.
pub fn print(type_name: &str, items: &[&Value], format: &str) -> Result<String> {
    let mut list = String::from("[");
    for (i, v) in items.iter().enumerate() {
        if i > 0 {
            list.push(',');
        }
        list.push_str(&jsonpb::print(&message(type_name, v)?, ""));
    }
    list.push(']');
    finish(go_indent(&list, "    "), format)
}

/// Prints one message of `type_name` in `format`, as istioctl's `ToJSONWithIndent(..,
/// "    ")` (bootstrap, secrets).
pub fn indented(type_name: &str, v: &Value, format: &str) -> Result<String> {
    finish(jsonpb::print(&message(type_name, v)?, "    "), format)
}

/// `json` as printed (`Fprintln`), or converted to YAML.
fn finish(json: String, format: &str) -> Result<String> {
    match format {
        "json" => Ok(json + "\n"),
        "yaml" => go_yaml(&serde_json::from_str(&json).context("jsonpb printed bad JSON")?),
        other => bail!("output format {other:?}: expected json, yaml or short"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indent_is_gos() {
        assert_eq!(
            go_indent(r#"[{"a":"x,{\"y\":[]}","b":[],"c":{},"d":[1,{"e":true}]}]"#, "    "),
            "[\n    {\n        \"a\": \"x,{\\\"y\\\":[]}\",\n        \"b\": [],\n        \"c\": {},\n        \"d\": [\n            1,\n            {\n                \"e\": true\n            }\n        ]\n    }\n]"
        );
        assert_eq!(go_indent("[]", "    "), "[]");
    }

    #[test]
    fn clusters_print_as_istioctl_prints_them() {
        // Declaration order (`alt_stat_name` is field 28, declared second), a oneof
        // member in its oneof's place, 64-bit numbers quoted, an empty message `{}`.
        let c = serde_json::json!({"name": "x", "type": "EDS", "connect_timeout": "1s",
            "alt_stat_name": "a<b", "per_connection_buffer_limit_bytes": 7,
            "eds_cluster_config": {"eds_config": {"ads": {}}},
            "upstream_connection_options": {"tcp_keepalive": {"keepalive_time": 3}},
            "max_requests_per_connection": 9, "lb_policy": "LEAST_REQUEST"});
        let text = print(CLUSTER, &[&c], "json").unwrap();
        assert_eq!(
            text,
            "[\n    {\n        \"name\": \"x\",\n        \"altStatName\": \"a\\u003cb\",\n        \"type\": \"EDS\",\n        \"edsClusterConfig\": {\n            \"edsConfig\": {\n                \"ads\": {}\n            }\n        },\n        \"connectTimeout\": \"1s\",\n        \"perConnectionBufferLimitBytes\": 7,\n        \"lbPolicy\": \"LEAST_REQUEST\",\n        \"maxRequestsPerConnection\": 9,\n        \"upstreamConnectionOptions\": {\n            \"tcpKeepalive\": {\n                \"keepaliveTime\": 3\n            }\n        }\n    }\n]\n"
        );
        let y = print(CLUSTER, &[&c], "yaml").unwrap();
        assert!(y.starts_with("- altStatName: a<b\n"), "{y}");
        assert!(print(CLUSTER, &[&c], "xml").is_err());
    }
}
