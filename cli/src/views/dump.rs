//! An Envoy admin config dump (`/config_dump`, membrane-proxy's admin, or
//! membrane-xds's `/debug/config_dump`) as JSON, and the resources each of
//! istioctl's views reads from it, in the order istioctl reads them
//! (dynamic before static, as its `retrieveSorted*Slice` functions do).

use anyhow::{bail, Context, Result};
use serde_json::Value;

const BOOTSTRAP: &str = "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump";
const CLUSTERS: &str = "type.googleapis.com/envoy.admin.v3.ClustersConfigDump";
const LISTENERS: &str = "type.googleapis.com/envoy.admin.v3.ListenersConfigDump";
const ROUTES: &str = "type.googleapis.com/envoy.admin.v3.RoutesConfigDump";
const SECRETS: &str = "type.googleapis.com/envoy.admin.v3.SecretsConfigDump";
const ENDPOINTS: &str = "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump";

/// A parsed config dump.
#[derive(Debug)]
pub struct ConfigDump {
    configs: Vec<Value>,
}

/// A dynamic secret and the state istioctl prints for it.
#[derive(Debug)]
pub struct DynSecret<'a> {
    /// The secret's name.
    pub name: &'a str,
    /// `ACTIVE` or `WARMING`.
    pub state: &'static str,
    /// The `envoy.extensions.transport_sockets.tls.v3.Secret` JSON.
    pub secret: &'a Value,
}

impl ConfigDump {
    /// Parses `text` (from `what`, for the error) as an admin config dump.
    pub fn parse(what: &str, text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text)
            .with_context(|| format!("{what}: not JSON (expected an Envoy config dump)"))?;
        let Some(configs) = v.get("configs").and_then(Value::as_array) else {
            bail!("{what}: no \"configs\" array (expected an Envoy admin config dump)");
        };
        Ok(ConfigDump {
            configs: configs.clone(),
        })
    }

    fn section(&self, type_url: &str) -> Option<&Value> {
        self.configs
            .iter()
            .find(|c| c.get("@type").and_then(Value::as_str) == Some(type_url))
    }

    fn items<'a>(&'a self, type_url: &str, lists: &[(&str, &[&str])]) -> Vec<&'a Value> {
        let Some(s) = self.section(type_url) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (list, path) in lists {
            for item in s.get(*list).and_then(Value::as_array).into_iter().flatten() {
                let mut v = Some(item);
                for p in *path {
                    v = v.and_then(|x| x.get(*p));
                }
                if let Some(v) = v {
                    out.push(v);
                }
            }
        }
        out
    }

    /// The bootstrap (`BootstrapConfigDump.bootstrap`).
    pub fn bootstrap(&self) -> Result<&Value> {
        self.section(BOOTSTRAP)
            .and_then(|b| b.get("bootstrap"))
            .context("bootstrap dump not present")
    }

    /// The whole `BootstrapConfigDump`.
    pub fn bootstrap_dump(&self) -> Result<&Value> {
        self.section(BOOTSTRAP)
            .context("bootstrap dump not present")
    }

    /// Active clusters, dynamic then static.
    pub fn clusters(&self) -> Vec<&Value> {
        self.items(
            CLUSTERS,
            &[
                ("dynamic_active_clusters", &["cluster"]),
                ("static_clusters", &["cluster"]),
            ],
        )
    }

    /// Active listeners, dynamic then static.
    pub fn listeners(&self) -> Vec<&Value> {
        self.items(
            LISTENERS,
            &[
                ("dynamic_listeners", &["active_state", "listener"]),
                ("static_listeners", &["listener"]),
            ],
        )
    }

    /// Route configurations, dynamic then static.
    pub fn routes(&self) -> Vec<&Value> {
        self.items(
            ROUTES,
            &[
                ("dynamic_route_configs", &["route_config"]),
                ("static_route_configs", &["route_config"]),
            ],
        )
    }

    /// Cluster load assignments (present with `?include_eds`), dynamic then
    /// static.
    pub fn endpoints(&self) -> Vec<&Value> {
        self.items(
            ENDPOINTS,
            &[
                ("dynamic_endpoint_configs", &["endpoint_config"]),
                ("static_endpoint_configs", &["endpoint_config"]),
            ],
        )
    }

    /// The `SecretsConfigDump`, if the proxy has one.
    pub fn secrets_dump(&self) -> Option<&Value> {
        self.section(SECRETS)
    }

    /// Dynamic secrets, warming first, then active (istioctl's order).
    pub fn dynamic_secrets(&self) -> Vec<DynSecret<'_>> {
        let Some(s) = self.section(SECRETS) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (list, state) in [
            ("dynamic_warming_secrets", "WARMING"),
            ("dynamic_active_secrets", "ACTIVE"),
        ] {
            for item in s.get(list).and_then(Value::as_array).into_iter().flatten() {
                if let Some(secret) = item.get("secret") {
                    out.push(DynSecret {
                        name: item.get("name").and_then(Value::as_str).unwrap_or(""),
                        state,
                        secret,
                    });
                }
            }
        }
        out
    }
}

/// `v[key]` as a string, `""` when absent (a proto3 default).
pub fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// `v[key]` as an unsigned number (JSON number or proto3 string form), 0
/// when absent.
pub fn u(v: &Value, key: &str) -> u64 {
    match v.get(key) {
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        Some(Value::String(t)) => t.parse().unwrap_or(0),
        _ => 0,
    }
}

/// `v[key]` as an array (empty when absent).
pub fn arr<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}
