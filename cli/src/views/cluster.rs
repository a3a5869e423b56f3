//! `proxy-config cluster`: istioctl's cluster summary (`SERVICE FQDN`,
//! `PORT`, `SUBSET`, `DIRECTION`, `TYPE`, `DESTINATION RULE`), read from
//! Istio's cluster names `DIRECTION|PORT|SUBSET|FQDN`.

use serde_json::Value;

use super::dump::{s, ConfigDump};
use super::gosort::go_sort;
use super::tabwriter::table;

/// istioctl's `--fqdn`, `--port`, `--subset`, `--direction` (substring
/// matches on the cluster name, as istioctl does).
#[derive(Debug, Default, Clone)]
pub struct ClusterFilter {
    /// `--fqdn`.
    pub fqdn: String,
    /// `--port` (0 = any).
    pub port: u32,
    /// `--subset`.
    pub subset: String,
    /// `--direction`.
    pub direction: String,
}

impl ClusterFilter {
    /// Whether `name` passes (istioctl's `ClusterFilter.Verify`).
    pub fn verify(&self, name: &str) -> bool {
        (self.fqdn.is_empty() || name.contains(&self.fqdn))
            && (self.direction.is_empty() || name.contains(&self.direction))
            && (self.subset.is_empty() || name.contains(&self.subset))
            && (self.port == 0 || name.contains(&format!("|{}|", self.port)))
    }
}

/// Istio's `model.ParseSubsetKey`: (direction, subset, fqdn, port) of
/// `DIRECTION|PORT|SUBSET|FQDN` (or the DNS SRV form with `_.`).
pub fn parse_subset_key(key: &str) -> (String, String, String, i64) {
    let sep = if key.starts_with("outbound_.") || key.starts_with("inbound_.") {
        "_."
    } else {
        "|"
    };
    let mut out = (String::new(), String::new(), String::new(), 0);
    let Some((dir, rest)) = key.split_once(sep) else {
        return out;
    };
    out.0 = dir.to_string();
    let Some((port, rest)) = rest.split_once(sep) else {
        return out;
    };
    out.3 = port.parse().unwrap_or(0);
    let Some((subset, rest)) = rest.split_once(sep) else {
        return out;
    };
    out.1 = subset.to_string();
    if !rest.contains(sep) {
        out.2 = rest.to_string();
    }
    out
}

/// istioctl's `safelyParseSubsetKey`: names that are not Istio's keep
/// their whole name as the FQDN.
fn safe_key(name: &str) -> (String, String, String, i64) {
    if name.split('|').count() > 3 {
        parse_subset_key(name)
    } else {
        (String::new(), String::new(), name.to_string(), 0)
    }
}

/// Sorts by FQDN, subset, port, direction (istioctl's order).
pub fn sort_by_key<T>(items: &mut [T], name: impl Fn(&T) -> &str) {
    go_sort(items, |a, b| {
        let (ad, asub, an, ap) = safe_key(name(a));
        let (bd, bsub, bn, bp) = safe_key(name(b));
        if an != bn {
            return an < bn;
        }
        if asub != bsub {
            return asub < bsub;
        }
        if ap != bp {
            return ap < bp;
        }
        ad < bd
    });
}

/// Istio's `describeManagement`: the Istio config (`name.namespace`) a
/// resource came from, from its `istio` filter metadata.
pub fn describe_management(metadata: Option<&Value>) -> String {
    let config = metadata
        .and_then(|m| m.get("filter_metadata"))
        .and_then(|f| f.get("istio"))
        .and_then(|i| i.get("config"));
    let Some(config) = config else {
        return String::new();
    };
    let path = config.as_str().unwrap_or("");
    if path.starts_with("/apis/networking.istio.io/v1alpha3/namespaces/") {
        let pieces: Vec<&str> = path.split('/').collect();
        if pieces.len() != 8 {
            return String::new();
        }
        return format!("{}.{}", pieces[7], pieces[5]);
    }
    "<unknown>".to_string()
}

/// The clusters of `dump` that pass `filter`, sorted as istioctl sorts them.
pub fn clusters<'a>(dump: &'a ConfigDump, filter: &ClusterFilter) -> Vec<&'a Value> {
    let mut all = dump.clusters();
    sort_by_key(&mut all, |c| s(c, "name"));
    all.into_iter()
        .filter(|c| filter.verify(s(c, "name")))
        .collect()
}

/// The summary table; `with_type` prefixes each row with `cluster/NAME`
/// (istioctl's `proxy-config all`).
pub fn summary(dump: &ConfigDump, filter: &ClusterFilter, with_type: bool) -> String {
    let mut text = String::new();
    if with_type {
        text.push_str("NAME\t");
    }
    text.push_str("SERVICE FQDN\tPORT\tSUBSET\tDIRECTION\tTYPE\tDESTINATION RULE\n");
    for c in clusters(dump, filter) {
        let name = s(c, "name");
        // The discovery type; a custom `cluster_type` leaves the enum at
        // its default, STATIC, as Go's GetType() reports.
        let kind = c.get("type").and_then(Value::as_str).unwrap_or("STATIC");
        let dr = describe_management(c.get("metadata"));
        let (fqdn, port, subset, dir) = if name.split('|').count() > 3 {
            let (d, sub, f, p) = parse_subset_key(name);
            let sub = if sub.is_empty() { "-".to_string() } else { sub };
            (f, p.to_string(), sub, d)
        } else {
            (name.to_string(), "-".into(), "-".into(), "-".into())
        };
        if with_type {
            text.push_str(&format!("cluster/{name}\t"));
        }
        text.push_str(&format!("{fqdn}\t{port}\t{subset}\t{dir}\t{kind}\t{dr}\n"));
    }
    table(5, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subset_keys_parse_as_istio_does() {
        assert_eq!(
            parse_subset_key("outbound|9080|v1|reviews.default.svc.cluster.local"),
            (
                "outbound".into(),
                "v1".into(),
                "reviews.default.svc.cluster.local".into(),
                9080
            )
        );
        assert_eq!(
            parse_subset_key("outbound_.80_._.web.default.svc.cluster.local"),
            (
                "outbound".into(),
                "".into(),
                "web.default.svc.cluster.local".into(),
                80
            )
        );
        // A fifth part leaves the FQDN empty, as Go's early return does.
        assert_eq!(parse_subset_key("a|1|b|c|d").2, "");
    }

    #[test]
    fn destination_rules_render_as_name_dot_namespace() {
        let md = serde_json::json!({"filter_metadata": {"istio": {"config":
            "/apis/networking.istio.io/v1alpha3/namespaces/default/destination-rule/reviews"}}});
        assert_eq!(describe_management(Some(&md)), "reviews.default");
        let other = serde_json::json!({"filter_metadata": {"istio": {"config": "/x"}}});
        assert_eq!(describe_management(Some(&other)), "<unknown>");
        assert_eq!(describe_management(None), "");
    }
}
