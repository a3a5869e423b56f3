//! `proxy-config listener`: istioctl's listener summary, one row per filter
//! chain (`ADDRESSES`, `PORT`, `MATCH`, `DESTINATION`), or per listener
//! without `--verbose` (`ADDRESSES`, `PORT`, `TYPE`).

use serde_json::Value;

use super::dump::{arr, s, u, ConfigDump};
use super::gosort::go_sort;
use super::tabwriter::table;

const HCM: &str = "envoy.filters.network.http_connection_manager";
const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
const BLACKHOLE: &str = "BlackHoleCluster";

/// istioctl's `--address`, `--port`, `--type`.
#[derive(Debug, Default, Clone)]
pub struct ListenerFilter {
    /// `--address` (case-insensitive equality).
    pub address: String,
    /// `--port` (0 = any).
    pub port: u32,
    /// `--type` (HTTP, TCP, HTTP+TCP, UNKNOWN; case-insensitive).
    pub kind: String,
}

impl ListenerFilter {
    fn verify(&self, l: &Value) -> bool {
        (self.address.is_empty() || address(l).eq_ignore_ascii_case(&self.address))
            && (self.port == 0 || port(l) == u64::from(self.port))
            && (self.kind.is_empty() || kind(l).eq_ignore_ascii_case(&self.kind))
    }
}

fn address(l: &Value) -> String {
    let a = l.get("address").unwrap_or(&Value::Null);
    if let Some(sa) = a.get("socket_address") {
        return s(sa, "address").to_string();
    }
    if let Some(p) = a.get("pipe") {
        return s(p, "path").to_string();
    }
    if let Some(i) = a.get("envoy_internal_address") {
        return s(i, "server_listener_name").to_string();
    }
    String::new()
}

/// The listener's address and its additional addresses, as istioctl joins
/// them in `ADDRESSES`.
fn addresses(l: &Value) -> String {
    let a = l.get("address").unwrap_or(&Value::Null);
    let Some(sa) = a.get("socket_address") else {
        return address(l);
    };
    let mut out = vec![s(sa, "address").to_string()];
    for extra in arr(l, "additional_addresses") {
        let e = extra
            .get("address")
            .and_then(|a| a.get("socket_address"))
            .map(|sa| s(sa, "address"))
            .unwrap_or("");
        out.push(e.to_string());
    }
    out.join(",")
}

fn port(l: &Value) -> u64 {
    l.get("address")
        .and_then(|a| a.get("socket_address"))
        .map(|sa| u(sa, "port_value"))
        .unwrap_or(0)
}

fn chains(l: &Value) -> Vec<&Value> {
    let mut out: Vec<&Value> = arr(l, "filter_chains").iter().collect();
    if let Some(d) = l.get("default_filter_chain") {
        out.push(d);
    }
    out
}

fn typed(f: &Value) -> &Value {
    f.get("typed_config").unwrap_or(&Value::Null)
}

/// A TCP proxy to the black hole does not make a listener TCP (istioctl
/// looks for the name in the filter's config).
fn blackhole(f: &Value) -> bool {
    typed(f).to_string().contains(BLACKHOLE)
}

/// HTTP, TCP, HTTP+TCP or UNKNOWN (istioctl's `retrieveListenerType`).
fn kind(l: &Value) -> &'static str {
    let (mut http, mut tcp) = (0, 0);
    for c in chains(l) {
        for f in arr(c, "filters") {
            match s(f, "name") {
                HCM => http += 1,
                TCP_PROXY if !blackhole(f) => tcp += 1,
                _ => {}
            }
        }
    }
    match (http > 0, tcp > 0) {
        (true, false) => "HTTP",
        (true, true) => "HTTP+TCP",
        (false, true) => "TCP",
        (false, false) => "UNKNOWN",
    }
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    arr(v, key)
        .iter()
        .map(|x| x.as_str().unwrap_or("").to_string())
        .collect()
}

/// The MATCH column of a filter chain (istioctl's `retrieveListenerMatches`).
fn describe_chain_match(m: &Value) -> String {
    let mut d = Vec::new();
    let names = strings(m, "server_names");
    if !names.is_empty() {
        d.push(format!("SNI: {}", names.join(",")));
    }
    let trans = s(m, "transport_protocol");
    if !trans.is_empty() {
        d.push(format!("Trans: {trans}"));
    }
    let alpn = strings(m, "application_protocols");
    if !alpn.is_empty() {
        let known: [(&str, &[&str]); 4] = [
            (
                "App: HTTP TLS",
                &[
                    "http/1.0",
                    "http/1.1",
                    "h2c",
                    "istio-http/1.0",
                    "istio-http/1.1",
                    "istio-h2",
                ],
            ),
            (
                "App: Istio HTTP Plain",
                &["istio", "istio-http/1.0", "istio-http/1.1", "istio-h2"],
            ),
            ("App: TCP TLS", &["istio-peer-exchange", "istio"]),
            ("App: HTTP", &["http/1.0", "http/1.1", "h2c"]),
        ];
        match known.iter().find(|(_, p)| alpn == *p) {
            Some((descr, _)) => d.push(descr.to_string()),
            None => d.push(format!("App: {}", alpn.join(","))),
        }
    }
    let port = m
        .get("destination_port")
        .map(|p| format!(":{}", p.as_u64().unwrap_or(0)))
        .unwrap_or_default();
    let prefixes = arr(m, "prefix_ranges");
    if !prefixes.is_empty() {
        let pf: Vec<String> = prefixes
            .iter()
            .map(|p| format!("{}/{}", s(p, "address_prefix"), u(p, "prefix_len")))
            .collect();
        d.push(format!("Addr: {}{port}", pf.join(",")));
    } else if !port.is_empty() {
        d.push(format!("Addr: *{port}"));
    }
    if d.is_empty() {
        "ALL".to_string()
    } else {
        d.join("; ")
    }
}

/// `Cluster: NAME`, or the bare name of Istio's special clusters.
fn cluster_dest(cluster: &str) -> String {
    if cluster.contains("Cluster") {
        cluster.to_string()
    } else {
        format!("Cluster: {cluster}")
    }
}

/// The DESTINATION column (istioctl's `getFilterType`).
fn describe_destination(filters: &[Value]) -> String {
    for f in filters {
        match s(f, "name") {
            HCM => {
                let t = typed(f);
                if let Some(rc) = t.get("route_config") {
                    return describe_route_config(rc);
                }
                let rds = t
                    .get("rds")
                    .map(|r| s(r, "route_config_name"))
                    .unwrap_or("");
                if !rds.is_empty() {
                    return format!("Route: {rds}");
                }
                return "HTTP".to_string();
            }
            TCP_PROXY if !blackhole(f) => return cluster_dest(s(typed(f), "cluster")),
            _ => {}
        }
    }
    "Non-HTTP/Non-TCP".to_string()
}

fn describe_route_config(rc: &Value) -> String {
    if let Some(c) = match_all_cluster(rc) {
        return c;
    }
    let vhosts: Vec<String> = arr(rc, "virtual_hosts")
        .iter()
        .map(|vh| {
            let domains = strings(vh, "domains");
            let routes: Vec<String> = arr(vh, "routes")
                .iter()
                .map(|r| describe_match(r.get("match").unwrap_or(&Value::Null)))
                .collect();
            if domains.len() == 1 && domains[0] == "*" {
                routes.join(", ")
            } else {
                format!("{} {}", domains.join("/"), routes.join(", "))
            }
        })
        .collect();
    format!("Inline Route: {}", vhosts.join("; "))
}

/// One virtual host for `*` with one `/` prefix route to a cluster: just
/// the cluster.
fn match_all_cluster(rc: &Value) -> Option<String> {
    let [vh] = arr(rc, "virtual_hosts") else {
        return None;
    };
    if strings(vh, "domains") != ["*"] {
        return None;
    }
    let [r] = arr(vh, "routes") else {
        return None;
    };
    if r.get("match").map(|m| s(m, "prefix")) != Some("/") {
        return None;
    }
    let cluster = r.get("route")?.get("cluster")?.as_str()?;
    Some(cluster_dest(cluster))
}

/// istioctl's `describeMatch` of a route match (headers ignored).
pub fn describe_match(m: &Value) -> String {
    let mut conds = Vec::new();
    let prefix = s(m, "prefix");
    if !prefix.is_empty() {
        conds.push(format!("{prefix}*"));
    }
    let psp = s(m, "path_separated_prefix");
    if !psp.is_empty() {
        conds.push(format!("PathPrefix:{psp}"));
    }
    let path = s(m, "path");
    if !path.is_empty() {
        conds.push(path.to_string());
    }
    if let Some(re) = m.get("safe_regex") {
        conds.push(format!("regex {}", s(re, "regex")));
    }
    conds.join(" ")
}

/// Whether listener `l` passes `filter` (for `-o json|yaml`).
pub fn summary_filter(filter: &ListenerFilter, l: &Value) -> bool {
    filter.verify(l)
}

/// The summary table (`verbose`: one row per filter chain); `with_type`
/// adds istioctl's `NAME` column with `listener/NAME`.
pub fn summary(
    dump: &ConfigDump,
    filter: &ListenerFilter,
    verbose: bool,
    with_type: bool,
) -> String {
    let mut ls: Vec<&Value> = dump
        .listeners()
        .into_iter()
        .filter(|l| filter.verify(l))
        .collect();
    go_sort(&mut ls, |a, b| {
        if port(a) != port(b) {
            return port(a) < port(b);
        }
        if address(a) != address(b) {
            return address(a) < address(b);
        }
        kind(a) < kind(b)
    });
    let mut text = String::new();
    if with_type {
        text.push_str("NAME\t");
    }
    text.push_str(if verbose {
        "ADDRESSES\tPORT\tMATCH\tDESTINATION\n"
    } else {
        "ADDRESSES\tPORT\tTYPE\n"
    });
    for l in ls {
        let name = if with_type {
            format!("listener/{}\t", s(l, "name"))
        } else {
            String::new()
        };
        let (addrs, port) = (addresses(l), port(l));
        if verbose {
            let mut rows: Vec<(String, String)> = chains(l)
                .into_iter()
                .map(|c| {
                    let m = c.get("filter_chain_match").unwrap_or(&Value::Null);
                    (
                        describe_chain_match(m),
                        describe_destination(arr(c, "filters")),
                    )
                })
                .collect();
            go_sort(&mut rows, |a, b| a.1 > b.1);
            for (m, d) in rows {
                text.push_str(&format!("{name}{addrs}\t{port}\t{m}\t{d}\n"));
            }
        } else {
            text.push_str(&format!("{name}{addrs}\t{port}\t{}\n", kind(l)));
        }
    }
    table(1, &text)
}
