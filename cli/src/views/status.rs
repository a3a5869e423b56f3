//! `membrane proxy-status`: istioctl's proxy-status table (Istio 1.27 and
//! later) over membrane-xds's `/debug/syncz`: one row per connected proxy
//! with `NAME`, `CLUSTER`, `ISTIOD`, `VERSION` and `SUBSCRIBED TYPES`; with
//! `--verbose`, one column per xDS type with its sync state (`SYNCED`,
//! `NOT SENT`, `STALE`, `ERROR`, `IGNORED` for a type the proxy never asked
//! for) and how long ago the control plane last sent it.

use std::collections::BTreeSet;
use std::time::SystemTime;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::Value;

use super::tabwriter::table;

/// `membrane proxy-status` arguments.
#[derive(Debug, Args)]
pub struct ProxyStatusArgs {
    /// Compare this proxy's configuration (`NAME.NAMESPACE`, `NAME` with -n, or a full
    /// node id) with what membrane-xds holds for it, cluster, listener and route, as
    /// istioctl does; the proxy's config dump comes from --admin or -f.
    pod: Option<String>,
    /// The pod's namespace, when POD names none.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// membrane-xds's debug endpoint.
    #[arg(long, env = "MEMBRANE_DEBUG_ADDR", default_value = "127.0.0.1:15014")]
    debug_addr: String,
    /// The proxy's admin endpoint (HOST:PORT, e.g. a port-forwarded 15000), whose
    /// `/config_dump` is compared.
    #[arg(long, requires = "pod", conflicts_with = "file")]
    admin: Option<String>,
    /// The proxy's config dump as a file (Envoy's `/config_dump` output), compared
    /// instead of asking its admin endpoint.
    #[arg(short = 'f', long = "file", requires = "pod")]
    file: Option<std::path::PathBuf>,
    /// One column per xDS type with its sync state (istioctl's `-v 1`).
    #[arg(short = 'v', long)]
    verbose: bool,
}

/// Istio's short names of the xDS types (`GetShortType`); any other type
/// keeps its URL.
pub fn short_type(url: &str) -> String {
    let name = url.rsplit('/').next().unwrap_or(url);
    match name {
        "envoy.config.cluster.v3.Cluster" => "CDS",
        "envoy.config.listener.v3.Listener" => "LDS",
        "envoy.config.route.v3.RouteConfiguration" => "RDS",
        "envoy.config.endpoint.v3.ClusterLoadAssignment" => "EDS",
        "envoy.extensions.transport_sockets.tls.v3.Secret" => "SDS",
        "istio.networking.nds.v1.NameTable" => "NDS",
        "istio.mesh.v1alpha1.ProxyConfig" => "PCDS",
        "envoy.config.core.v3.TypedExtensionConfig" => "ECDS",
        "istio.workload.Address" | "istio.workload.Workload" => "WDS",
        "istio.security.Authorization" => "WADS",
        _ => return url.to_string(),
    }
    .to_string()
}

/// The order istioctl lists subscribed types in: Envoy's four first.
fn type_rank(short: &str) -> (usize, String) {
    let known = [
        "CDS", "LDS", "EDS", "RDS", "ECDS", "SDS", "NDS", "PCDS", "WADS", "WDS",
    ];
    let i = known
        .iter()
        .position(|k| *k == short)
        .unwrap_or(known.len());
    (i, short.to_string())
}

/// Go's `time.Duration.String()` of a whole number of seconds.
pub fn go_duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// Parses Go's RFC 3339 time; the zero time (never) is `None`.
fn parse_time(s: &str) -> Option<SystemTime> {
    if s.starts_with("0001-") {
        return None;
    }
    humantime::parse_rfc3339_weak(s.trim_end_matches('Z')).ok()
}

/// A type's state as istiod computes it from the nonces, with how long ago
/// it was last sent.
fn state(r: &Value, now: SystemTime) -> String {
    let sent = r.get("sent").and_then(Value::as_str).unwrap_or("");
    let acked = r.get("acked").and_then(Value::as_str).unwrap_or("");
    let err = r.get("lastError").and_then(Value::as_str).unwrap_or("");
    let word = if sent.is_empty() {
        return "NOT SENT".to_string();
    } else if !err.is_empty() {
        "ERROR"
    } else if sent == acked {
        "SYNCED"
    } else {
        "STALE"
    };
    let at = r
        .get("sentTime")
        .and_then(Value::as_str)
        .and_then(parse_time);
    match at {
        Some(t) => {
            let ago = now.duration_since(t).unwrap_or_default();
            format!("{word} ({})", go_duration(ago.as_secs_f64().round() as u64))
        }
        None => word.to_string(),
    }
}

/// The table for the syncz list `syncz` from control plane `istiod`, at
/// `now`; `pod` keeps the proxies whose name contains it.
pub fn render(
    syncz: &[Value],
    istiod: &str,
    pod: Option<&str>,
    verbose: bool,
    now: SystemTime,
) -> String {
    let mut proxies: Vec<&Value> = syncz
        .iter()
        .filter(|p| {
            let name = p.get("proxy").and_then(Value::as_str).unwrap_or("");
            pod.is_none_or(|want| name.contains(want))
        })
        .collect();
    let name = |p: &Value| {
        p.get("proxy")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    proxies.sort_by_key(|p| name(p));
    let str_of = |p: &Value, k: &str| p.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let types_of = |p: &Value| -> Vec<(String, Value)> {
        p.get("resources")
            .and_then(Value::as_object)
            .map(|m| m.iter().map(|(t, r)| (short_type(t), r.clone())).collect())
            .unwrap_or_default()
    };
    let mut text = String::new();
    if verbose {
        let mut cols: BTreeSet<String> = ["CDS", "ECDS", "EDS", "LDS", "RDS"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for p in &proxies {
            cols.extend(types_of(p).into_iter().map(|(t, _)| t));
        }
        let cols: Vec<String> = cols.into_iter().collect();
        text.push_str(&format!(
            "NAME\tCLUSTER\t{}\tISTIOD\tVERSION\n",
            cols.join("\t")
        ));
        for p in &proxies {
            let types = types_of(p);
            let cells: Vec<String> = cols
                .iter()
                .map(|c| match types.iter().find(|(t, _)| t == c) {
                    Some((_, r)) => state(r, now),
                    None => "IGNORED".to_string(),
                })
                .collect();
            text.push_str(&format!(
                "{}\t{}\t{}\t{istiod}\t{}\n",
                name(p),
                str_of(p, "cluster_id"),
                cells.join("\t"),
                str_of(p, "istio_version")
            ));
        }
    } else {
        text.push_str("NAME\tCLUSTER\tISTIOD\tVERSION\tSUBSCRIBED TYPES\n");
        for p in &proxies {
            let mut types: Vec<String> = types_of(p).into_iter().map(|(t, _)| t).collect();
            types.sort_by_key(|t| type_rank(t));
            text.push_str(&format!(
                "{}\t{}\t{istiod}\t{}\t{} ({})\n",
                name(p),
                str_of(p, "cluster_id"),
                str_of(p, "istio_version"),
                types.len(),
                types.join(",")
            ));
        }
    }
    table(5, &text)
}

/// The control plane's name for the pod's proxy: a full node id as given, else
/// `NAME.NAMESPACE` (what istioctl sends as `proxyID`).
fn proxy_id(pod: &str, namespace: &str) -> String {
    if pod.contains('~') || pod.contains('.') {
        pod.to_string()
    } else {
        format!("{pod}.{namespace}")
    }
}

/// `membrane proxy-status POD`: the comparison's text.
fn compare(args: &ProxyStatusArgs, pod: &str) -> Result<String> {
    let proxy = match (&args.file, &args.admin) {
        (Some(f), _) => (
            f.display().to_string(),
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
        ),
        (None, Some(admin)) => (
            format!("{admin}/config_dump"),
            super::fetch::get(admin, "/config_dump")?,
        ),
        (None, None) => anyhow::bail!(
            "proxy-status {pod}: give the proxy's admin endpoint (--admin HOST:PORT) or its config dump (-f FILE)"
        ),
    };
    let path = format!(
        "/debug/config_dump?proxyID={}",
        super::encode(&proxy_id(pod, &args.namespace))
    );
    let istiod = super::fetch::get(&args.debug_addr, &path)?;
    super::compare::diff(
        (&format!("{}{path}", args.debug_addr), &istiod),
        (&proxy.0, &proxy.1),
    )
}

/// Runs `membrane proxy-status`.
pub fn run(args: ProxyStatusArgs) -> Result<std::process::ExitCode> {
    if let Some(pod) = &args.pod {
        return super::write_out(&compare(&args, pod)?);
    }
    let (body, headers) = super::fetch::get_with_headers(&args.debug_addr, "/debug/syncz")?;
    let list: Vec<Value> = serde_json::from_str(&body)
        .with_context(|| format!("{}/debug/syncz: not a JSON list", args.debug_addr))?;
    let istiod = headers
        .get("x-membrane-control-plane")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    super::write_out(&render(
        &list,
        &istiod,
        None,
        args.verbose,
        SystemTime::now(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    #[test]
    fn short_and_verbose_tables() {
        let now = humantime::parse_rfc3339("2026-01-01T00:01:00Z").unwrap();
        let syncz = json!([{
            "cluster_id": "Kubernetes", "proxy": "web-1.default", "istio_version": "1.27.1",
            "resources": {
                "type.googleapis.com/envoy.config.listener.v3.Listener":
                    {"sent": "a", "acked": "a", "sentTime": "2026-01-01T00:00:49.5Z"},
                "type.googleapis.com/envoy.config.cluster.v3.Cluster":
                    {"sent": "b", "acked": "a", "sentTime": "2026-01-01T00:00:00Z"},
                "type.googleapis.com/envoy.config.route.v3.RouteConfiguration":
                    {"sentTime": "0001-01-01T00:00:00Z"}
            }
        }]);
        let list = syncz.as_array().unwrap();
        assert_eq!(
            render(list, "istiod-1", None, false, now),
            "NAME              CLUSTER        ISTIOD       VERSION     SUBSCRIBED TYPES\n\
             web-1.default     Kubernetes     istiod-1     1.27.1      3 (CDS,LDS,RDS)\n"
        );
        assert_eq!(
            render(list, "istiod-1", None, true, now + Duration::from_secs(0)),
            "NAME              CLUSTER        CDS              ECDS        EDS         LDS              RDS          ISTIOD       VERSION\n\
             web-1.default     Kubernetes     STALE (1m0s)     IGNORED     IGNORED     SYNCED (11s)     NOT SENT     istiod-1     1.27.1\n"
        );
        assert_eq!(
            render(list, "x", Some("nope"), false, now).lines().count(),
            1
        );
    }

    #[test]
    fn durations_print_as_go() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(134), "2m14s");
        assert_eq!(go_duration(3600), "1h0m0s");
    }
}
