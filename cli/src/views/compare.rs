//! `membrane proxy-status POD`: istioctl's comparison of what the control plane holds
//! for a proxy with what the proxy holds (`istioctl/pkg/writer/compare`). For clusters,
//! listeners and routes in turn, each side's dynamic resources are sorted by name (route
//! configurations' virtual hosts too), stripped of versions and update times, printed as
//! Go's jsonpb does with four-space indents and diffed (go-difflib's unified diff, seven
//! lines of context, "Istiod X" against "Envoy X"): `Clusters Match`, or `Clusters Don't
//! Match` and the diff. Routes add when the proxy last loaded RDS. A side without a
//! section diffs as istioctl's error text for it.

use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use prost_reflect::DynamicMessage;
use serde_json::{json, Value};

use super::difflib::{split_lines, unified_diff};
use super::gosort::go_sort;
use super::jsonpb;

const CLUSTERS: &str = "type.googleapis.com/envoy.admin.v3.ClustersConfigDump";
const LISTENERS: &str = "type.googleapis.com/envoy.admin.v3.ListenersConfigDump";
const ROUTES: &str = "type.googleapis.com/envoy.admin.v3.RoutesConfigDump";

/// A config dump's sections, as istioctl finds them (the last of a type wins).
struct Dump(Vec<Value>);

impl Dump {
    fn parse(what: &str, text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text)
            .with_context(|| format!("{what}: not JSON (expected an Envoy config dump)"))?;
        let Some(configs) = v.get("configs").and_then(Value::as_array) else {
            bail!("{what}: no \"configs\" array (expected an Envoy admin config dump)");
        };
        Ok(Dump(configs.clone()))
    }

    fn section(&self, type_url: &str) -> Result<&Value, String> {
        self.0
            .iter()
            .rev()
            .find(|c| c.get("@type").and_then(Value::as_str) == Some(type_url))
            .ok_or_else(|| format!("config dump has no configuration type {type_url}"))
    }

    fn list(&self, type_url: &str, key: &str) -> Result<Vec<Value>, String> {
        let s = self.section(type_url)?;
        Ok(s.get(key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }

    /// `GetDynamicClusterDump(true)`.
    fn clusters(&self) -> Result<Value, String> {
        let mut dac = self.list(CLUSTERS, "dynamic_active_clusters")?;
        for c in &mut dac {
            strip(c, &["version_info", "last_updated"]);
        }
        go_sort(&mut dac, |a, b| {
            name_at(a, "cluster") < name_at(b, "cluster")
        });
        Ok(json!({ "dynamic_active_clusters": dac }))
    }

    /// `GetDynamicListenerDump(true)`: active listeners only, draining states dropped.
    fn listeners(&self) -> Result<Value, String> {
        let mut dal: Vec<Value> = self
            .list(LISTENERS, "dynamic_listeners")?
            .into_iter()
            .filter(|l| l.get("active_state").is_some())
            .collect();
        for l in &mut dal {
            strip(l, &["draining_state", "name"]);
            if let Some(a) = l.get_mut("active_state") {
                strip(a, &["version_info", "last_updated"]);
            }
        }
        fn listener_name(l: &Value) -> &str {
            name_at(l.get("active_state").unwrap_or(&Value::Null), "listener")
        }
        go_sort(&mut dal, |a, b| listener_name(a) < listener_name(b));
        Ok(json!({ "dynamic_listeners": dal }))
    }

    /// `GetDynamicRouteDump(true)`, virtual hosts sorted by name within each.
    fn routes(&self) -> Result<Value, String> {
        let mut drc = self.list(ROUTES, "dynamic_route_configs")?;
        go_sort(&mut drc, |a, b| {
            name_at(a, "route_config") < name_at(b, "route_config")
        });
        for r in &mut drc {
            strip(r, &["version_info", "last_updated"]);
            if let Some(vhs) = r
                .get_mut("route_config")
                .and_then(|c| c.get_mut("virtual_hosts"))
                .and_then(Value::as_array_mut)
            {
                go_sort(vhs, |a, b| {
                    a.get("name").and_then(Value::as_str) < b.get("name").and_then(Value::as_str)
                });
            }
        }
        Ok(json!({ "dynamic_route_configs": drc }))
    }

    /// The latest `last_updated` of the dynamic route configurations, if any.
    fn routes_last_updated(&self) -> Result<Option<SystemTime>> {
        let drc = self
            .list(ROUTES, "dynamic_route_configs")
            .map_err(anyhow::Error::msg)?;
        let latest = drc
            .iter()
            .filter_map(|r| r.get("last_updated").and_then(Value::as_str))
            .filter_map(|t| humantime::parse_rfc3339_weak(t.trim_end_matches('Z')).ok())
            .max();
        Ok(latest.filter(|t| *t > SystemTime::UNIX_EPOCH))
    }
}

fn strip(v: &mut Value, keys: &[&str]) {
    if let Some(m) = v.as_object_mut() {
        for k in keys {
            m.remove(*k);
        }
    }
}

fn name_at<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key)
        .and_then(|r| r.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// How one type's comparable part is taken out of a dump (istioctl's error text if not).
type Section = fn(&Dump) -> Result<Value, String>;

/// One side's text for a type: the section printed as jsonpb does, or istioctl's error.
fn text(section: Result<Value, String>, type_name: &str) -> Result<String> {
    match section {
        Err(e) => Ok(e),
        Ok(v) => {
            let pool = membrane_xds::configdump::pool().map_err(anyhow::Error::msg)?;
            let desc = pool
                .get_message_by_name(type_name)
                .with_context(|| format!("no descriptor for {type_name}"))?;
            let msg = DynamicMessage::deserialize_with_options(
                desc,
                &v,
                &prost_reflect::DeserializeOptions::new().deny_unknown_fields(false),
            )
            .with_context(|| format!("{type_name}: not a valid message"))?;
            Ok(jsonpb::print(&msg, "    "))
        }
    }
}

/// Go's `time.RFC1123` (`Mon, 02 Jan 2006 15:04:05 MST`) in `tz`.
pub fn rfc1123_in(t: SystemTime, tz: &jiff::tz::TimeZone) -> String {
    let ts = jiff::Timestamp::try_from(t).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    ts.to_zoned(tz.clone())
        .strftime("%a, %d %b %Y %H:%M:%S %Z")
        .to_string()
}

/// istioctl's `Comparator.Diff()` text for the control plane's dump `istiod` and the
/// proxy's dump `envoy` (each `(where it came from, text)`), with when RDS was last loaded
/// in the local zone (the `TZ` variable, else `/etc/localtime`), as istioctl prints it.
pub fn diff(istiod: (&str, &str), envoy: (&str, &str)) -> Result<String> {
    diff_in(istiod, envoy, &jiff::tz::TimeZone::system())
}

/// [`diff`] with times printed in `tz`.
pub fn diff_in(
    istiod: (&str, &str),
    envoy: (&str, &str),
    tz: &jiff::tz::TimeZone,
) -> Result<String> {
    let i = Dump::parse(istiod.0, istiod.1)?;
    let e = Dump::parse(envoy.0, envoy.1)?;
    let mut out = String::new();
    let kinds: [(&str, Section, &str); 3] = [
        (
            "Clusters",
            Dump::clusters,
            "envoy.admin.v3.ClustersConfigDump",
        ),
        (
            "Listeners",
            Dump::listeners,
            "envoy.admin.v3.ListenersConfigDump",
        ),
        ("Routes", Dump::routes, "envoy.admin.v3.RoutesConfigDump"),
    ];
    for (kind, get, type_name) in kinds {
        let a = split_lines(&text(get(&i), type_name)?);
        let b = split_lines(&text(get(&e), type_name)?);
        let d = unified_diff(
            &a,
            &b,
            &format!("Istiod {kind}"),
            &format!("Envoy {kind}"),
            7,
        );
        let when = if kind == "Routes" {
            e.routes_last_updated()?
                .map(|t| format!(" (RDS last loaded at {})", rfc1123_in(t, tz)))
                .unwrap_or_default()
        } else {
            String::new()
        };
        if d.is_empty() {
            out.push_str(&format!("{kind} Match{when}\n"));
        } else {
            out.push_str(&format!("{kind} Don't Match{when}\n{d}\n"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump(cluster_timeout: &str) -> String {
        json!({"configs": [
            {"@type": CLUSTERS, "dynamic_active_clusters": [
                {"version_info": "v9", "last_updated": "2026-01-01T00:00:00Z", "cluster": {
                    "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                    "name": "b", "connect_timeout": cluster_timeout}},
                {"cluster": {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                    "name": "a", "connect_timeout": "1s"}}
            ]},
            {"@type": LISTENERS},
            {"@type": ROUTES, "dynamic_route_configs": [
                {"last_updated": "2026-03-04T05:06:07.5Z",
                 "route_config": {"@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration", "name": "80"}}
            ]}
        ]})
        .to_string()
    }

    fn diff(istiod: (&str, &str), envoy: (&str, &str)) -> Result<String> {
        diff_in(istiod, envoy, &jiff::tz::TimeZone::UTC)
    }

    #[test]
    fn rds_time_is_in_the_zone_given_with_its_abbreviation() {
        let cet = jiff::tz::TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").unwrap();
        let out = diff_in(("istiod", &dump("1s")), ("envoy", &dump("1s")), &cet).unwrap();
        assert!(
            out.ends_with("(RDS last loaded at Wed, 04 Mar 2026 06:06:07 CET)\n"),
            "{out}"
        );
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_783_000_000);
        assert_eq!(rfc1123_in(t, &cet), "Thu, 02 Jul 2026 15:46:40 CEST");
    }

    #[test]
    fn equal_dumps_match_and_a_difference_is_a_unified_diff() {
        let same = diff(("istiod", &dump("1s")), ("envoy", &dump("1s"))).unwrap();
        assert_eq!(
            same,
            "Clusters Match\nListeners Match\nRoutes Match (RDS last loaded at Wed, 04 Mar 2026 05:06:07 UTC)\n"
        );
        let other = diff(("istiod", &dump("1s")), ("envoy", &dump("2s"))).unwrap();
        // (The cluster list sorted by name: "a" first, so "b" is the second entry.)
        let want = "Clusters Don't Match\n--- Istiod Clusters\n+++ Envoy Clusters\n@@ -7,12 +7,12 @@\n                 \"connectTimeout\": \"1s\"\n             }\n         },\n         {\n             \"cluster\": {\n                 \"@type\": \"type.googleapis.com/envoy.config.cluster.v3.Cluster\",\n                 \"name\": \"b\",\n-                \"connectTimeout\": \"1s\"\n+                \"connectTimeout\": \"2s\"\n             }\n         }\n     ]\n }\n\n";
        assert!(other.starts_with(want), "{other}");
        assert!(other.ends_with(
            "Listeners Match\nRoutes Match (RDS last loaded at Wed, 04 Mar 2026 05:06:07 UTC)\n"
        ));
        // A proxy without clusters: istioctl's error text is what it diffs against.
        let none = json!({"configs": [{"@type": LISTENERS}, {"@type": ROUTES}]}).to_string();
        let out = diff(("istiod", &dump("1s")), ("envoy", &none)).unwrap();
        assert!(out.contains("+config dump has no configuration type type.googleapis.com/envoy.admin.v3.ClustersConfigDump\n"), "{out}");
    }
}
