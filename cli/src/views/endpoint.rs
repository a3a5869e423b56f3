//! `proxy-config endpoint`: istioctl's endpoint table (`ENDPOINT`,
//! `STATUS`, `OUTLIER CHECK`, `CLUSTER`), from Envoy's `/clusters?format=json`
//! (what istioctl reads from a pod) or from the EDS section of a config dump
//! taken with `?include_eds`; and the `NAME`/`STATUS`/`LOCALITY`/`CLUSTER`
//! table `proxy-config all` prints from the dump.

use serde_json::Value;

use super::cluster::sort_by_key;
use super::dump::{arr, s, u, ConfigDump};
use super::gosort::go_sort;
use super::tabwriter::table;

/// istioctl's `--address`, `--port`, `--cluster`, `--status`.
#[derive(Debug, Default, Clone)]
pub struct EndpointFilter {
    /// `--address` (the IP, case-insensitive).
    pub address: String,
    /// `--port` (0 = any).
    pub port: u32,
    /// `--cluster` (case-insensitive equality).
    pub cluster: String,
    /// `--status` (HEALTHY, UNHEALTHY, ...; case-insensitive).
    pub status: String,
}

impl EndpointFilter {
    fn verify(&self, e: &Row) -> bool {
        (self.address.is_empty() || e.address.eq_ignore_ascii_case(&self.address))
            && (self.port == 0 || e.port == u64::from(self.port))
            && (self.cluster.is_empty() || e.cluster.eq_ignore_ascii_case(&self.cluster))
            && (self.status.is_empty() || e.status.eq_ignore_ascii_case(&self.status))
    }
}

#[derive(Debug)]
struct Row {
    address: String,
    port: u64,
    cluster: String,
    status: String,
    outlier_failed: bool,
}

fn socket(addr: Option<&Value>) -> (String, u64) {
    addr.and_then(|a| a.get("socket_address"))
        .map(|sa| (s(sa, "address").to_string(), u(sa, "port_value")))
        .unwrap_or_default()
}

/// The row of host `h` of cluster status `c`.
fn host_row(c: &Value, h: &Value) -> Row {
    let (address, port) = socket(h.get("address"));
    let hs = h.get("health_status").unwrap_or(&Value::Null);
    Row {
        address,
        port,
        cluster: s(c, "name").to_string(),
        status: status_name(hs.get("eds_health_status")),
        outlier_failed: hs.get("failed_outlier_check") == Some(&Value::Bool(true)),
    }
}

/// Rows of Envoy's `/clusters?format=json` (`cluster_statuses`).
fn from_clusters(v: &Value) -> Vec<Row> {
    arr(v, "cluster_statuses")
        .iter()
        .flat_map(|c| arr(c, "host_statuses").iter().map(|h| host_row(c, h)))
        .collect()
}

/// The cluster statuses istioctl prints for `-o json|yaml`: those with a host that
/// passes `filter` (so never a cluster without hosts), in Envoy's order.
pub fn cluster_statuses<'a>(clusters: &'a Value, filter: &EndpointFilter) -> Vec<&'a Value> {
    arr(clusters, "cluster_statuses")
        .iter()
        .filter(|c| {
            arr(c, "host_statuses")
                .iter()
                .any(|h| filter.verify(&host_row(c, h)))
        })
        .collect()
}

/// `HealthStatus` as its enum name (proto3 JSON omits UNKNOWN).
fn status_name(v: Option<&Value>) -> String {
    v.and_then(Value::as_str).unwrap_or("UNKNOWN").to_string()
}

/// Rows of the dump's load assignments: what EDS said (no outlier data in
/// a dump: OK).
fn from_dump(dump: &ConfigDump) -> Vec<Row> {
    let mut rows = Vec::new();
    for cla in dump.endpoints() {
        for llb in arr(cla, "endpoints") {
            for ep in arr(llb, "lb_endpoints") {
                let (address, port) = socket(ep.get("endpoint").and_then(|e| e.get("address")));
                rows.push(Row {
                    address,
                    port,
                    cluster: s(cla, "cluster_name").to_string(),
                    status: status_name(ep.get("health_status")),
                    outlier_failed: false,
                });
            }
        }
    }
    rows
}

/// The endpoint table from `/clusters?format=json` output (`clusters`) or
/// from a dump.
pub fn summary(source: Result<&Value, &ConfigDump>, filter: &EndpointFilter) -> String {
    let mut rows = match source {
        Ok(clusters) => from_clusters(clusters),
        Err(dump) => from_dump(dump),
    };
    rows.retain(|r| filter.verify(r));
    go_sort(&mut rows, |a, b| {
        if a.address != b.address {
            return a.address < b.address;
        }
        if a.port != b.port {
            return a.port < b.port;
        }
        a.cluster < b.cluster
    });
    let mut text = String::from("ENDPOINT\tSTATUS\tOUTLIER CHECK\tCLUSTER\n");
    for r in rows {
        let outlier = if r.outlier_failed { "FAILED" } else { "OK" };
        text.push_str(&format!(
            "{}:{}\t{}\t{outlier}\t{}\n",
            r.address, r.port, r.status, r.cluster
        ));
    }
    table(5, &text)
}

/// Istio's `LocalityToString`: `region`, `region/zone` or
/// `region/zone/subzone`, stopping at the first empty part after the region.
fn locality(l: Option<&Value>) -> String {
    let Some(l) = l else {
        return String::new();
    };
    let mut out = s(l, "region").to_string();
    for part in [s(l, "zone"), s(l, "sub_zone")] {
        if part.is_empty() {
            break;
        }
        out.push('/');
        out.push_str(part);
    }
    out
}

/// The dump's EDS as `proxy-config all` prints it (`endpoint/ADDR` names).
pub fn dump_summary(dump: &ConfigDump, with_type: bool) -> String {
    let mut clas: Vec<&Value> = dump
        .endpoints()
        .into_iter()
        .filter(|c| {
            arr(c, "endpoints")
                .iter()
                .any(|l| !arr(l, "lb_endpoints").is_empty())
        })
        .collect();
    sort_by_key(&mut clas, |c| s(c, "cluster_name"));
    let mut text = String::from("NAME\tSTATUS\tLOCALITY\tCLUSTER\n");
    for cla in clas {
        for llb in arr(cla, "endpoints") {
            for ep in arr(llb, "lb_endpoints") {
                let (a, p) = socket(ep.get("endpoint").and_then(|e| e.get("address")));
                let addr = if with_type {
                    format!("endpoint/{a}:{p}")
                } else {
                    format!("{a}:{p}")
                };
                text.push_str(&format!(
                    "{addr}\t{}\t{}\t{}\n",
                    status_name(ep.get("health_status")),
                    locality(llb.get("locality")),
                    s(cla, "cluster_name")
                ));
            }
        }
    }
    table(5, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lists_the_clusters_with_a_host_that_passes() {
        let host = |ip: &str, status: &str| {
            serde_json::json!({"address": {"socket_address": {"address": ip, "port_value": 80}},
                "health_status": {"eds_health_status": status}})
        };
        let clusters = serde_json::json!({"cluster_statuses": [
            {"name": "empty"},
            {"name": "a", "host_statuses": [host("10.0.0.1", "HEALTHY")]},
            {"name": "b", "host_statuses": [host("10.0.0.2", "HEALTHY"), host("10.0.0.3", "UNHEALTHY")]},
        ]});
        let names = |f: &EndpointFilter| -> Vec<&str> {
            cluster_statuses(&clusters, f)
                .iter()
                .map(|c| s(c, "name"))
                .collect()
        };
        // No filter: every cluster with a host (istioctl never lists one without).
        assert_eq!(names(&EndpointFilter::default()), ["a", "b"]);
        let unhealthy = EndpointFilter {
            status: "unhealthy".into(),
            ..Default::default()
        };
        // A cluster is listed whole once one of its hosts passes.
        assert_eq!(names(&unhealthy), ["b"]);
        let elsewhere = EndpointFilter {
            address: "10.9.9.9".into(),
            ..Default::default()
        };
        assert!(names(&elsewhere).is_empty());
    }
}
