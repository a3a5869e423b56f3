//! The flow table's filters, `membrane monitor --all-nodes`'s own (pod, namespace,
//! identity, verdict, type, port, method, path, node: [`membrane_api::observer::Filter`],
//! which the agents and the relay apply too), parsed from a query string. Every parameter
//! is checked, and a bad one is refused with what was wrong, never ignored. A parameter
//! given twice keeps either value, as a repeated flag does.

use membrane_api::observer::{proto, Filter, FilterError as ObserverError};
use thiserror::Error;

/// The most flows one reply carries.
pub const MAX_LIMIT: usize = 1000;
/// Flows one reply carries when the query names no `limit`.
pub const DEFAULT_LIMIT: usize = 100;

/// The record types a `type` filter may name.
const TYPES: [&str; 7] = [
    "policy-verdict",
    "drop",
    "capture",
    "trace",
    "l7",
    "lost",
    membrane_api::observer::TYPE_NODE_STATUS,
];

/// A query parameter the page (or anyone) sent that cannot be used.
#[derive(Debug, Error)]
pub enum FilterError {
    /// Not one of the filters.
    #[error(
        "unknown query parameter {0:?} (expected pod, namespace, identity, verdict, type, \
         port, method, path, node or limit)"
    )]
    Unknown(String),
    /// `limit` given twice.
    #[error("query parameter {0:?} given more than once")]
    Repeated(String),
    /// A value that does not parse.
    #[error("query parameter {name}={value:?}: {expected}")]
    Value {
        /// The parameter.
        name: &'static str,
        /// What it was.
        value: String,
        /// What it should have been.
        expected: &'static str,
    },
    /// A value the stream's filter refuses (a path that is no regular expression).
    #[error("query parameter {0}")]
    Filter(#[from] ObserverError),
}

/// The stream's filter and the reply's size limit from a query string's pairs.
pub fn parse(pairs: &[(String, String)]) -> Result<(Filter, usize), FilterError> {
    let mut f = proto::Filter::default();
    let mut limit = None;
    for (name, value) in pairs {
        let bad = |name: &'static str, expected: &'static str| FilterError::Value {
            name,
            value: value.clone(),
            expected,
        };
        let v = value.clone();
        match name.as_str() {
            "pod" if pod(value) => f.pod.push(v),
            "pod" => return Err(bad("pod", POD)),
            "namespace" if dns_label(value) => f.namespace.push(v),
            "namespace" => return Err(bad("namespace", NAMESPACE)),
            "node" if dns_subdomain(value) => f.node.push(v),
            "node" => return Err(bad("node", "a node name")),
            "identity" => f.identity.push(
                value
                    .parse()
                    .map_err(|_| bad("identity", "a numeric identity (0-4294967295)"))?,
            ),
            "verdict" if v == "allowed" || v == "denied" => f.verdict.push(v),
            "verdict" => return Err(bad("verdict", "allowed or denied")),
            "type" if TYPES.contains(&value.as_str()) => f.r#type.push(v),
            "type" => {
                return Err(bad(
                    "type",
                    "policy-verdict, drop, capture, trace, l7, lost or node-status",
                ))
            }
            "port" => f.port.push(
                value
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .map(u32::from)
                    .ok_or_else(|| bad("port", "a port number (1-65535)"))?,
            ),
            "method" if method(value) => f.http_method.push(v),
            "method" => return Err(bad("method", "an HTTP method such as GET or PUT")),
            "path" if !value.is_empty() && value.len() <= 1024 => f.http_path.push(v),
            "path" => return Err(bad("path", "a regular expression of request paths")),
            "limit" if limit.is_some() => return Err(FilterError::Repeated(name.clone())),
            "limit" => {
                limit = Some(
                    value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| bad("limit", "a number of flows from 1 to 1000"))?,
                )
            }
            other => return Err(FilterError::Unknown(other.to_owned())),
        }
    }
    Ok((Filter::new(&f)?, limit.unwrap_or(DEFAULT_LIMIT)))
}

/// An HTTP method token.
fn method(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-')
}

const POD: &str = "a pod name, or namespace/name";
const NAMESPACE: &str = "a namespace name (lowercase letters, digits and '-')";

/// A Kubernetes DNS label (namespaces).
fn dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS subdomain (pod names).
fn dns_subdomain(s: &str) -> bool {
    (1..=253).contains(&s.len()) && s.split('.').all(dns_label)
}

/// `name` or `namespace/name`, each checked as Kubernetes checks it.
fn pod(s: &str) -> bool {
    match s.split_once('/') {
        Some((ns, name)) => dns_label(ns) && dns_subdomain(name),
        None => dns_subdomain(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use membrane_api::monitor::{Event, L7, TYPE_L7};

    fn q(s: &[(&str, &str)]) -> Result<(Filter, usize), FilterError> {
        let pairs: Vec<(String, String)> = s
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect();
        parse(&pairs)
    }

    #[test]
    fn every_bad_parameter_is_refused_by_name() {
        let table: &[(&[(&str, &str)], &str)] = &[
            (&[("colour", "red")], "unknown query parameter \"colour\""),
            (&[("port", "0")], "port=\"0\": a port number"),
            (&[("port", "80x")], "port=\"80x\""),
            (&[("port", "65536")], "port=\"65536\""),
            (&[("identity", "-1")], "identity=\"-1\""),
            (
                &[("verdict", "maybe")],
                "verdict=\"maybe\": allowed or denied",
            ),
            (&[("type", "drops")], "type=\"drops\""),
            (&[("pod", "Deathstar")], "pod=\"Deathstar\""),
            (&[("pod", "a/b/c")], "pod=\"a/b/c\""),
            (&[("namespace", "")], "namespace=\"\""),
            (&[("method", "GET /")], "method=\"GET /\""),
            (&[("path", "(")], "http path filter \"(\""),
            (&[("path", "")], "path=\"\": a regular expression"),
            (&[("node", "Node 1")], "node=\"Node 1\""),
            (&[("limit", "0")], "limit=\"0\""),
            (&[("limit", "1001")], "limit=\"1001\""),
            (
                &[("limit", "1"), ("limit", "2")],
                "\"limit\" given more than once",
            ),
        ];
        for (pairs, want) in table {
            let e = q(pairs).unwrap_err().to_string();
            assert!(e.contains(want), "{pairs:?}: {e}");
        }
    }

    fn flow(kind: &str, verdict: Option<&str>) -> Event {
        Event {
            kind: kind.to_owned(),
            verdict: verdict.map(str::to_owned),
            src_pod: Some("default/xwing".to_owned()),
            dst_pod: Some("default/deathstar-2".to_owned()),
            src_identity: 300,
            dst_identity: 301,
            node: "node-2".to_owned(),
            src: Some("10.200.0.3:40000".to_owned()),
            dst: Some("10.201.0.11:80".to_owned()),
            ..Event::default()
        }
    }

    #[test]
    fn filters_keep_what_they_name_and_only_that() {
        let denied = flow("drop", Some("denied"));
        let allowed = flow("policy-verdict", Some("allowed"));
        let mut put = flow(TYPE_L7, Some("denied"));
        put.l7 = Some(L7 {
            method: "PUT".to_owned(),
            path: "/v1/exhaust-port".to_owned(),
            status: 403,
            ..L7::default()
        });
        let keeps = |pairs: &[(&str, &str)], e: &Event| q(pairs).unwrap().0.matches(e);
        assert!(keeps(&[], &allowed));
        assert!(keeps(&[("pod", "deathstar-2")], &denied));
        assert!(keeps(&[("pod", "default/xwing")], &denied));
        assert!(!keeps(&[("pod", "other/xwing")], &denied));
        assert!(!keeps(&[("pod", "deathstar")], &denied));
        assert!(keeps(&[("namespace", "default")], &denied));
        assert!(!keeps(&[("namespace", "kube-system")], &denied));
        assert!(keeps(&[("identity", "301")], &denied));
        assert!(!keeps(&[("identity", "302")], &denied));
        assert!(keeps(&[("verdict", "denied")], &denied));
        assert!(!keeps(&[("verdict", "denied")], &allowed));
        assert!(keeps(&[("verdict", "allowed")], &allowed));
        assert!(!keeps(&[("verdict", "allowed")], &put));
        assert!(keeps(&[("type", "drop")], &denied));
        assert!(!keeps(&[("type", "drop")], &put));
        // Repeated: either value.
        assert!(keeps(&[("type", "drop"), ("type", "l7")], &put));
        assert!(!keeps(&[("type", "policy-verdict")], &put));
        assert!(keeps(&[("type", "l7")], &put));
        assert!(keeps(&[("port", "80")], &denied));
        assert!(!keeps(&[("port", "81")], &denied));
        assert!(keeps(&[("method", "PUT"), ("path", "^/v1/")], &put));
        assert!(keeps(&[("node", "node-2")], &put));
        assert!(!keeps(&[("node", "node-1")], &put));
        assert!(!keeps(&[("method", "POST")], &put));
        assert!(!keeps(&[("method", "PUT")], &denied));
        assert!(!keeps(&[("path", "/v2")], &put));
    }

    #[test]
    fn the_limit_defaults_and_is_bounded() {
        assert_eq!(q(&[]).unwrap().1, DEFAULT_LIMIT);
        assert_eq!(q(&[("limit", "1000")]).unwrap().1, 1000);
    }
}
