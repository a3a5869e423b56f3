//! The flow table's filters, as `membrane monitor` takes them (pod, namespace, identity,
//! verdict, type, port, method, path), parsed from a query string: every parameter is
//! checked, and a bad one is refused with what was wrong, never ignored.

use membrane_api::monitor::{Event, TYPE_L7, TYPE_LOST};
use thiserror::Error;

/// The most flows one reply carries.
pub const MAX_LIMIT: usize = 1000;
/// Flows one reply carries when the query names no `limit`.
pub const DEFAULT_LIMIT: usize = 100;

/// A query parameter the page (or anyone) sent that cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FilterError {
    /// Not one of the filters.
    #[error(
        "unknown query parameter {0:?} (expected pod, namespace, identity, verdict, type, \
         port, method, path or limit)"
    )]
    Unknown(String),
    /// Given twice.
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
}

/// Which records a `type` filter keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Every L3/L4 decision.
    PolicyVerdict,
    /// Denied verdicts (L3/L4 and L7) and dropped packets.
    Drop,
    /// Connections steered to the proxy.
    Capture,
    /// Splice decisions.
    Trace,
    /// Requests the sidecars decided.
    L7,
    /// Events skipped on the way.
    Lost,
}

/// The flow table's filters; an absent one keeps everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// `namespace/name` (that pod) or `name` (in any namespace), either side.
    pub pod: Option<String>,
    /// Either side's pod is in this namespace.
    pub namespace: Option<String>,
    /// Either side's security identity.
    pub identity: Option<u32>,
    /// `true`: denied (and dropped); `false`: allowed.
    pub denied: Option<bool>,
    /// The record's type.
    pub kind: Option<Kind>,
    /// Either side's port.
    pub port: Option<u16>,
    /// The request's method (L7 records only).
    pub method: Option<String>,
    /// The request's path starts with this (L7 records only).
    pub path: Option<String>,
}

impl Filter {
    /// The filters and the reply's size limit from a query string's pairs.
    pub fn parse(pairs: &[(String, String)]) -> Result<(Filter, usize), FilterError> {
        let mut f = Filter::default();
        let mut limit = None;
        let mut seen: Vec<&str> = Vec::new();
        for (name, value) in pairs {
            if seen.contains(&name.as_str()) {
                return Err(FilterError::Repeated(name.clone()));
            }
            seen.push(name);
            let bad = |name: &'static str, expected: &'static str| FilterError::Value {
                name,
                value: value.clone(),
                expected,
            };
            match name.as_str() {
                "pod" => f.pod = Some(pod(value).ok_or_else(|| bad("pod", POD))?),
                "namespace" => {
                    f.namespace = Some(
                        dns_label(value)
                            .then(|| value.clone())
                            .ok_or_else(|| bad("namespace", NAMESPACE))?,
                    )
                }
                "identity" => {
                    f.identity = Some(
                        value
                            .parse()
                            .map_err(|_| bad("identity", "a numeric identity (0-4294967295)"))?,
                    )
                }
                "verdict" => {
                    f.denied = Some(match value.as_str() {
                        "allowed" => false,
                        "denied" => true,
                        _ => return Err(bad("verdict", "allowed or denied")),
                    })
                }
                "type" => {
                    f.kind = Some(match value.as_str() {
                        "policy-verdict" => Kind::PolicyVerdict,
                        "drop" => Kind::Drop,
                        "capture" => Kind::Capture,
                        "trace" => Kind::Trace,
                        "l7" => Kind::L7,
                        "lost" => Kind::Lost,
                        _ => {
                            return Err(bad(
                                "type",
                                "policy-verdict, drop, capture, trace, l7 or lost",
                            ))
                        }
                    })
                }
                "port" => {
                    f.port = Some(
                        value
                            .parse()
                            .ok()
                            .filter(|p| *p != 0)
                            .ok_or_else(|| bad("port", "a port number (1-65535)"))?,
                    )
                }
                "method" => {
                    let token = !value.is_empty()
                        && value.len() <= 32
                        && value.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-');
                    f.method = Some(
                        token
                            .then(|| value.clone())
                            .ok_or_else(|| bad("method", "an HTTP method such as GET or PUT"))?,
                    )
                }
                "path" => {
                    let ok = value.starts_with('/')
                        && value.len() <= 1024
                        && !value.chars().any(char::is_control);
                    f.path = Some(
                        ok.then(|| value.clone())
                            .ok_or_else(|| bad("path", "a request path starting with /"))?,
                    )
                }
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
        Ok((f, limit.unwrap_or(DEFAULT_LIMIT)))
    }

    /// Whether `e` passes every filter given.
    pub fn matches(&self, e: &Event) -> bool {
        let pods = [e.src_pod.as_deref(), e.dst_pod.as_deref()];
        if let Some(want) = &self.pod {
            let hit = |p: &str| match want.contains('/') {
                true => p == want,
                false => p.rsplit('/').next() == Some(want.as_str()),
            };
            if !pods.into_iter().flatten().any(hit) {
                return false;
            }
        }
        if let Some(ns) = &self.namespace {
            let hit = |p: &str| p.split_once('/').map(|(n, _)| n) == Some(ns.as_str());
            if !pods.into_iter().flatten().any(hit) {
                return false;
            }
        }
        if let Some(id) = self.identity {
            if e.src_identity != id && e.dst_identity != id {
                return false;
            }
        }
        if let Some(denied) = self.denied {
            let allowed = !e.is_drop() && e.verdict.as_deref() == Some("allowed");
            if (denied && !e.is_drop()) || (!denied && !allowed) {
                return false;
            }
        }
        if let Some(k) = self.kind {
            let hit = match k {
                Kind::PolicyVerdict => e.kind == "policy-verdict",
                Kind::Drop => e.is_drop(),
                Kind::Capture => e.kind == "capture",
                Kind::Trace => e.kind == "trace",
                Kind::L7 => e.kind == TYPE_L7,
                Kind::Lost => e.kind == TYPE_LOST,
            };
            if !hit {
                return false;
            }
        }
        if let Some(port) = self.port {
            let of = |a: &Option<String>| {
                a.as_deref()
                    .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
                    .map(|a| a.port())
            };
            if of(&e.src) != Some(port) && of(&e.dst) != Some(port) {
                return false;
            }
        }
        if let Some(m) = &self.method {
            if !e
                .l7
                .as_ref()
                .is_some_and(|l| l.method.eq_ignore_ascii_case(m))
            {
                return false;
            }
        }
        if let Some(p) = &self.path {
            if !e
                .l7
                .as_ref()
                .is_some_and(|l| l.path.starts_with(p.as_str()))
            {
                return false;
            }
        }
        true
    }
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
fn pod(s: &str) -> Option<String> {
    let ok = match s.split_once('/') {
        Some((ns, name)) => dns_label(ns) && dns_subdomain(name),
        None => dns_subdomain(s),
    };
    ok.then(|| s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use membrane_api::monitor::L7;

    fn q(s: &[(&str, &str)]) -> Result<(Filter, usize), FilterError> {
        let pairs: Vec<(String, String)> = s
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect();
        Filter::parse(&pairs)
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
            (
                &[("path", "v1")],
                "path=\"v1\": a request path starting with /",
            ),
            (&[("limit", "0")], "limit=\"0\""),
            (&[("limit", "1001")], "limit=\"1001\""),
            (
                &[("port", "80"), ("port", "81")],
                "\"port\" given more than once",
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
        assert!(keeps(&[("type", "drop")], &put));
        assert!(!keeps(&[("type", "policy-verdict")], &put));
        assert!(keeps(&[("type", "l7")], &put));
        assert!(keeps(&[("port", "80")], &denied));
        assert!(!keeps(&[("port", "81")], &denied));
        assert!(keeps(&[("method", "PUT"), ("path", "/v1/")], &put));
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
