//! Istio's `PROXY_CONFIG`: the pod's ProxyConfig (the mesh config's `defaultConfig` merged
//! with the pod's `proxy.istio.io/config` annotation) as istiod's injection template
//! renders it, JSON (`protoToJSON`) or YAML (the annotation's and the mesh config's own
//! form). Only the fields a membrane sidecar acts on are read; Istio has many more
//! (tracing, Envoy bootstrap settings), which are ignored.

use std::time::Duration;

use serde::Deserialize;

/// The ProxyConfig fields the sidecar uses.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfig {
    /// The control plane, `HOST:PORT` (Istio's default `istiod.istio-system.svc:15012`),
    /// or with a `http://`/`https://` scheme.
    pub discovery_address: Option<String>,
    /// The admin port (Istio's 15000).
    pub proxy_admin_port: Option<u16>,
    /// The status port: merged metrics, app probes, readiness (Istio's 15020).
    pub status_port: Option<u16>,
    /// Worker threads; 0: one per core.
    pub concurrency: Option<u32>,
    /// How long a terminating sidecar drains (Istio's default 5s).
    #[serde(default, deserialize_with = "proto_duration")]
    pub termination_drain_duration: Option<Duration>,
    /// TLS to the control plane when the address has no scheme.
    pub control_plane_auth_policy: Option<AuthPolicy>,
    /// The app starts only once the sidecar is ready (the injector's postStart hook waits
    /// for `/healthz/ready`); recorded for the log.
    pub hold_application_until_proxy_starts: Option<bool>,
}

/// Istio's `controlPlaneAuthPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuthPolicy {
    /// Plaintext.
    None,
    /// Mutual TLS with the workload certificate.
    MutualTls,
}

/// Why `PROXY_CONFIG` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyConfigError {
    /// Neither JSON nor YAML of a ProxyConfig.
    #[error("not a ProxyConfig in JSON ({json}) or YAML ({yaml})")]
    Syntax {
        /// The JSON parser's complaint.
        json: String,
        /// The YAML parser's complaint.
        yaml: String,
    },
    /// A field with a value it cannot have.
    #[error("{field}: {what}")]
    Field {
        /// The field.
        field: &'static str,
        /// What is wrong.
        what: String,
    },
}

/// A whole mesh config whose `defaultConfig` is the ProxyConfig, as `istio` ConfigMap's
/// `mesh` key holds it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MeshConfig {
    default_config: ProxyConfig,
}

/// Parses `text` (JSON or YAML; a ProxyConfig, or a mesh config with `defaultConfig`).
/// Empty text is the empty ProxyConfig (every default).
pub fn parse(text: &str) -> Result<ProxyConfig, ProxyConfigError> {
    if text.trim().is_empty() {
        return Ok(ProxyConfig::default());
    }
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(json) => serde_yaml_ng::from_str(text).map_err(|yaml| ProxyConfigError::Syntax {
            json: json.to_string(),
            yaml: yaml.to_string(),
        })?,
    };
    if !value.is_object() {
        return Err(ProxyConfigError::Syntax {
            json: "not an object".into(),
            yaml: "not a mapping".into(),
        });
    }
    let pc = if value.get("defaultConfig").is_some() {
        serde_json::from_value::<MeshConfig>(value).map(|m| m.default_config)
    } else {
        serde_json::from_value::<ProxyConfig>(value)
    }
    .map_err(|e| ProxyConfigError::Field {
        field: "ProxyConfig",
        what: e.to_string(),
    })?;
    for (field, port) in [
        ("proxyAdminPort", pc.proxy_admin_port),
        ("statusPort", pc.status_port),
    ] {
        if port == Some(0) {
            return Err(ProxyConfigError::Field {
                field,
                what: "must be a port, 1-65535".into(),
            });
        }
    }
    if let Some(a) = &pc.discovery_address {
        if a.trim().is_empty() || a.chars().any(char::is_whitespace) {
            return Err(ProxyConfigError::Field {
                field: "discoveryAddress",
                what: format!("{a:?} is not HOST:PORT"),
            });
        }
    }
    Ok(pc)
}

/// A protobuf JSON duration, `"5s"`, `"0.5s"`, `"1.000340012s"`.
fn proto_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let Some(s) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    parse_proto_duration(&s)
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not a duration like \"5s\"")))
}

fn parse_proto_duration(s: &str) -> Option<Duration> {
    let num = s.trim().strip_suffix('s')?;
    let (secs, frac) = num.split_once('.').unwrap_or((num, ""));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    Some(Duration::new(secs.parse().ok()?, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_as_istiod_renders_it() {
        let pc = parse(
            r#"{"discoveryAddress":"istiod.istio-system.svc:15012","proxyAdminPort":15000,"statusPort":15020,"terminationDrainDuration":"0.5s","controlPlaneAuthPolicy":"MUTUAL_TLS","holdApplicationUntilProxyStarts":true,"tracing":{"zipkin":{"address":"zipkin:9411"}},"concurrency":2}"#,
        )
        .unwrap();
        assert_eq!(
            pc.discovery_address.as_deref(),
            Some("istiod.istio-system.svc:15012")
        );
        assert_eq!(pc.status_port, Some(15020));
        assert_eq!(pc.concurrency, Some(2));
        assert_eq!(
            pc.termination_drain_duration,
            Some(Duration::from_millis(500))
        );
        assert_eq!(pc.control_plane_auth_policy, Some(AuthPolicy::MutualTls));
        assert_eq!(pc.hold_application_until_proxy_starts, Some(true));
    }

    #[test]
    fn yaml_and_the_mesh_configs_default_config() {
        let pc = parse(
            "discoveryAddress: membrane-xds.membrane.svc:15010\ncontrolPlaneAuthPolicy: NONE\n",
        )
        .unwrap();
        assert_eq!(
            pc.discovery_address.as_deref(),
            Some("membrane-xds.membrane.svc:15010")
        );
        assert_eq!(pc.control_plane_auth_policy, Some(AuthPolicy::None));
        let mesh = parse("defaultConfig:\n  discoveryAddress: x:15012\n  statusPort: 16020\naccessLogFile: /dev/stdout\n").unwrap();
        assert_eq!(mesh.discovery_address.as_deref(), Some("x:15012"));
        assert_eq!(mesh.status_port, Some(16020));
        assert_eq!(parse("").unwrap(), ProxyConfig::default());
        assert_eq!(parse("{}").unwrap(), ProxyConfig::default());
    }

    #[test]
    fn bad_values_name_what_is_wrong() {
        let err = |t: &str| parse(t).unwrap_err().to_string();
        assert!(
            err("{not json").contains("not a ProxyConfig"),
            "{}",
            err("{not json")
        );
        assert!(err("[1, 2]").contains("not an object"));
        assert!(err(r#"{"statusPort": 70000}"#).contains("70000"));
        assert!(err(r#"{"statusPort": 0}"#).starts_with("statusPort"));
        assert!(err(r#"{"terminationDrainDuration": "5 minutes"}"#).contains("5 minutes"));
        assert!(err(r#"{"controlPlaneAuthPolicy": "SOMETIMES"}"#).contains("SOMETIMES"));
        assert!(err(r#"{"discoveryAddress": ""}"#).starts_with("discoveryAddress"));
    }

    #[test]
    fn proto_durations() {
        assert_eq!(parse_proto_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(
            parse_proto_duration("1.000000001s"),
            Some(Duration::new(1, 1))
        );
        for bad in ["5", "s", ".5s", "1.0000000001s", "-1s", "5ms"] {
            assert_eq!(parse_proto_duration(bad), None, "{bad}");
        }
    }
}
