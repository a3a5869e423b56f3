//! `proxy-config route`: istioctl's route summary, one row per route of
//! each virtual host (`NAME`, `VHOST NAME`, `DOMAINS`, `MATCH`, `VIRTUAL
//! SERVICE`), or per route configuration without `--verbose` (`NAME`,
//! `VIRTUAL HOSTS`).

use serde_json::Value;

use super::cluster::describe_management;
use super::dump::{arr, s, ConfigDump};
use super::gosort::go_sort;
use super::listener::describe_match;
use super::tabwriter::table;

/// Route configurations, in istioctl's order (numeric names ascending; its
/// comparator calls any pair with a non-numeric name unordered).
pub fn routes<'a>(dump: &'a ConfigDump, name: &str) -> Vec<&'a Value> {
    let mut rs = dump.routes();
    go_sort(&mut rs, |a, b| {
        match (s(a, "name").parse::<i64>(), s(b, "name").parse::<i64>()) {
            (Ok(x), Ok(y)) => x < y,
            _ => false,
        }
    });
    rs.into_iter()
        .filter(|r| name.is_empty() || s(r, "name") == name)
        .collect()
}

/// istioctl's `describeRouteDomains`: the first two domains without a
/// port, the short forms kept over `.svc` / `.svc.cluster.local` ones.
fn describe_domains(domains: &[Value]) -> String {
    let ds: Vec<&str> = domains.iter().map(|d| d.as_str().unwrap_or("")).collect();
    match ds.as_slice() {
        [] => return String::new(),
        [one] => return one.to_string(),
        _ => {}
    }
    let without_port: Vec<&str> = ds
        .iter()
        .copied()
        .filter(|d| !d.contains(':') || (d.matches(':').count() > 2 && d.ends_with(']')))
        .collect();
    let unique: std::collections::HashSet<&str> = without_port.iter().copied().collect();
    let short: Vec<&str> = without_port
        .iter()
        .copied()
        .filter(|h| {
            let full = h.strip_suffix(".svc.cluster.local");
            let part = h.strip_suffix(".svc");
            !(full.is_some_and(|f| unique.contains(f)) || part.is_some_and(|p| unique.contains(p)))
        })
        .collect();
    if short.len() > 2 {
        return format!("{} + {} more...", short[..2].join(", "), short.len() - 2);
    }
    short.join(", ")
}

fn is_passthrough(r: &Value) -> bool {
    r.get("route").map(|a| s(a, "cluster")) == Some("PassthroughCluster")
}

/// The summary table; `with_type` names each configuration `route/NAME`.
pub fn summary(dump: &ConfigDump, name: &str, verbose: bool, with_type: bool) -> String {
    let mut text = String::from(if verbose {
        "NAME\tVHOST NAME\tDOMAINS\tMATCH\tVIRTUAL SERVICE\n"
    } else {
        "NAME\tVIRTUAL HOSTS\n"
    });
    for rc in routes(dump, name) {
        let rname = if with_type {
            format!("route/{}", s(rc, "name"))
        } else {
            s(rc, "name").to_string()
        };
        let vhosts = arr(rc, "virtual_hosts");
        if !verbose {
            text.push_str(&format!("{rname}\t{}\n", vhosts.len()));
            continue;
        }
        for vh in vhosts {
            let domains = describe_domains(arr(vh, "domains"));
            let vname = s(vh, "name");
            for r in arr(vh, "routes").iter().filter(|r| !is_passthrough(r)) {
                let m = describe_match(r.get("match").unwrap_or(&Value::Null));
                let vs = describe_management(r.get("metadata"));
                text.push_str(&format!("{rname}\t{vname}\t{domains}\t{m}\t{vs}\n"));
            }
            if arr(vh, "routes").is_empty() {
                text.push_str(&format!("{rname}\t{vname}\t{domains}\t/*\t404\n"));
            }
        }
    }
    table(5, &text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn domains_are_shortened_as_istioctl_does() {
        let d = json!([
            "reviews.default.svc.cluster.local",
            "reviews.default.svc.cluster.local:9080",
            "reviews",
            "reviews:9080",
            "reviews.default.svc",
            "reviews.default",
            "10.0.0.1",
        ]);
        // .svc.cluster.local and .svc forms go when their short form is
        // there; the first two of the rest are shown.
        assert_eq!(
            describe_domains(d.as_array().unwrap()),
            "reviews, reviews.default + 1 more..."
        );
        assert_eq!(describe_domains(json!(["*"]).as_array().unwrap()), "*");
    }
}
