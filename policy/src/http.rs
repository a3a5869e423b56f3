//! Cilium's HTTP rules, compiled: method, path and host are RE2 regexes that must match the
//! whole value (the path includes the query), `headers` entries are `"Name"` (present) or
//! `"Name: value"` (exact), and `headerMatches` compare a value and may carry an action to
//! take on mismatch instead of denying.

use crate::model::HttpRule;
use regex::Regex;
use std::fmt;

/// Regex size limit: generous for real policies, bounded so a hostile policy cannot make the
/// proxy build an enormous automaton.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Errors from compiling an HTTP rule; `field` is relative to the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct HttpRuleError {
    /// Field within the rule (`path`, `headerMatches[0].mismatch`, ...).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Compiles a regex that must match the whole input, as Cilium's proxy does.
pub fn full_match_regex(pattern: &str) -> Result<Regex, String> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| {
            let detail = e.to_string();
            let last = detail
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim();
            format!("{pattern:?} is not a valid RE2 regular expression ({last})")
        })
}

/// What to do when a `headerMatches` entry does not match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MismatchAction {
    /// Deny the request (no `mismatch` given).
    Fail,
    /// Allow and log.
    Log,
    /// Allow and add the expected value.
    Add,
    /// Allow and delete the header.
    Delete,
    /// Allow and replace the header's value with the expected one.
    Replace,
}

/// A change a matched rule asks the proxy to make to the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderAction {
    /// Log that the header did not match.
    Log {
        /// Header name (lowercase).
        name: String,
    },
    /// Add `name: value`.
    Add {
        /// Header name (lowercase).
        name: String,
        /// Value to add.
        value: String,
    },
    /// Remove every `name` header.
    Delete {
        /// Header name (lowercase).
        name: String,
    },
    /// Replace every `name` header with one `name: value`.
    Replace {
        /// Header name (lowercase).
        name: String,
        /// New value.
        value: String,
    },
}

#[derive(Debug, Clone)]
struct HeaderReq {
    name: String,
    value: Option<String>,
}

#[derive(Debug, Clone)]
struct HeaderMatchReq {
    name: String,
    value: Option<String>,
    secret: Option<String>,
    mismatch: MismatchAction,
}

/// One compiled HTTP rule.
#[derive(Debug, Clone)]
pub struct CompiledHttpRule {
    method: Option<Regex>,
    path: Option<Regex>,
    host: Option<Regex>,
    headers: Vec<HeaderReq>,
    header_matches: Vec<HeaderMatchReq>,
    /// The rule as written, for explanations and translation to other proxies.
    pub source: HttpRule,
}

impl PartialEq for CompiledHttpRule {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}
impl Eq for CompiledHttpRule {}

impl fmt::Display for CompiledHttpRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.source;
        let mut parts = Vec::new();
        if let Some(m) = &r.method {
            parts.push(format!("method={m}"));
        }
        if let Some(p) = &r.path {
            parts.push(format!("path={p}"));
        }
        if let Some(h) = &r.host {
            parts.push(format!("host={h}"));
        }
        for h in r.headers.iter().flatten() {
            parts.push(format!("header[{h}]"));
        }
        for m in r.header_matches.iter().flatten() {
            parts.push(format!("headerMatch[{}]", m.name));
        }
        if parts.is_empty() {
            f.write_str("any request")
        } else {
            f.write_str(&parts.join(" "))
        }
    }
}

/// The parts of a request HTTP rules look at. The path is the request target's path and
/// query as the upstream will receive it.
pub struct HttpRequest<'a> {
    /// Method, e.g. `GET`.
    pub method: &'a str,
    /// Path with query, e.g. `/v1/x?y=1`.
    pub path: &'a str,
    /// Host or `:authority`, if present.
    pub host: Option<&'a str>,
    /// Header lookup.
    pub headers: &'a dyn HeaderSource,
}

/// Header access for rule matching; names are passed lowercase.
pub trait HeaderSource {
    /// True if some value of header `name` satisfies `pred`; an absent header never does.
    fn any_value(&self, name: &str, pred: &mut dyn FnMut(&[u8]) -> bool) -> bool;
}

impl HeaderSource for http::HeaderMap {
    fn any_value(&self, name: &str, pred: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        self.get_all(name).iter().any(|v| pred(v.as_bytes()))
    }
}

impl HeaderSource for Vec<(String, String)> {
    fn any_value(&self, name: &str, pred: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        self.iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .any(|(_, v)| pred(v.as_bytes()))
    }
}

impl CompiledHttpRule {
    /// Compiles and validates one rule.
    pub fn compile(rule: &HttpRule) -> Result<Self, HttpRuleError> {
        let re = |field: &str, v: &Option<String>| -> Result<Option<Regex>, HttpRuleError> {
            match v {
                None => Ok(None),
                Some(p) => full_match_regex(p)
                    .map(Some)
                    .map_err(|message| HttpRuleError {
                        field: field.to_owned(),
                        message,
                    }),
            }
        };
        let method = re("method", &rule.method)?;
        let path = re("path", &rule.path)?;
        let host = re("host", &rule.host)?;
        let mut headers = Vec::new();
        for (i, h) in rule.headers.iter().flatten().enumerate() {
            // "Name" means present; "Name: value" (split at the first space, trailing colon
            // dropped from the name) means that exact value.
            let (name, value) = match h.trim().split_once(' ') {
                Some((n, v)) => (n.trim_end_matches(':'), Some(v.trim().to_owned())),
                None => (h.trim().trim_end_matches(':'), None),
            };
            check_header_name(name).map_err(|message| HttpRuleError {
                field: format!("headers[{i}]"),
                message,
            })?;
            headers.push(HeaderReq {
                name: name.to_ascii_lowercase(),
                value,
            });
        }
        let mut header_matches = Vec::new();
        for (i, m) in rule.header_matches.iter().flatten().enumerate() {
            check_header_name(&m.name).map_err(|message| HttpRuleError {
                field: format!("headerMatches[{i}].name"),
                message,
            })?;
            let mismatch = match m.mismatch.as_deref() {
                None | Some("") => MismatchAction::Fail,
                Some("LOG") => MismatchAction::Log,
                Some("ADD") => MismatchAction::Add,
                Some("DELETE") => MismatchAction::Delete,
                Some("REPLACE") => MismatchAction::Replace,
                Some(other) => {
                    return Err(HttpRuleError {
                        field: format!("headerMatches[{i}].mismatch"),
                        message: format!("{other:?} is not one of LOG, ADD, DELETE, REPLACE"),
                    })
                }
            };
            if m.value.is_some() && m.secret.is_some() {
                return Err(HttpRuleError {
                    field: format!("headerMatches[{i}]"),
                    message: "value and secret are mutually exclusive".into(),
                });
            }
            header_matches.push(HeaderMatchReq {
                name: m.name.to_ascii_lowercase(),
                value: m.value.clone(),
                secret: m.secret.as_ref().map(|s| match &s.namespace {
                    Some(ns) => format!("{ns}/{}", s.name),
                    None => s.name.clone(),
                }),
                mismatch,
            });
        }
        Ok(CompiledHttpRule {
            method,
            path,
            host,
            headers,
            header_matches,
            source: rule.clone(),
        })
    }

    /// Secrets this rule's header matches depend on (not resolvable by the policy engine).
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        self.header_matches
            .iter()
            .filter_map(|m| m.secret.as_deref())
    }

    /// Tests a request. `Some(actions)` when the rule allows it (with any header actions a
    /// mismatch asked for), `None` when it does not.
    pub fn check(&self, req: &HttpRequest<'_>) -> Option<Vec<HeaderAction>> {
        if let Some(m) = &self.method {
            if !m.is_match(req.method) {
                return None;
            }
        }
        if let Some(p) = &self.path {
            if !p.is_match(req.path) {
                return None;
            }
        }
        if let Some(h) = &self.host {
            if !h.is_match(req.host.unwrap_or("")) {
                return None;
            }
        }
        for h in &self.headers {
            let ok = match &h.value {
                None => req.headers.any_value(&h.name, &mut |_| true),
                Some(v) => req
                    .headers
                    .any_value(&h.name, &mut |got| got == v.as_bytes()),
            };
            if !ok {
                return None;
            }
        }
        let mut actions = Vec::new();
        for m in &self.header_matches {
            let ok = match (&m.value, &m.secret) {
                (Some(v), _) => req
                    .headers
                    .any_value(&m.name, &mut |got| got == v.as_bytes()),
                // A secret's value is not known here: fail closed.
                (None, Some(_)) => false,
                (None, None) => req.headers.any_value(&m.name, &mut |_| true),
            };
            if ok {
                continue;
            }
            let value = m.value.clone().unwrap_or_default();
            match m.mismatch {
                MismatchAction::Fail => return None,
                MismatchAction::Log => actions.push(HeaderAction::Log {
                    name: m.name.clone(),
                }),
                MismatchAction::Add => actions.push(HeaderAction::Add {
                    name: m.name.clone(),
                    value,
                }),
                MismatchAction::Delete => actions.push(HeaderAction::Delete {
                    name: m.name.clone(),
                }),
                MismatchAction::Replace => actions.push(HeaderAction::Replace {
                    name: m.name.clone(),
                    value,
                }),
            }
        }
        Some(actions)
    }
}

fn check_header_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name must not be empty".into());
    }
    // RFC 9110 token characters.
    let ok = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid HTTP header name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::HeaderMatch;

    fn rule(
        method: Option<&str>,
        path: Option<&str>,
        host: Option<&str>,
        headers: &[&str],
    ) -> CompiledHttpRule {
        CompiledHttpRule::compile(&HttpRule {
            method: method.map(Into::into),
            path: path.map(Into::into),
            host: host.map(Into::into),
            headers: if headers.is_empty() {
                None
            } else {
                Some(headers.iter().map(|s| s.to_string()).collect())
            },
            header_matches: None,
        })
        .unwrap()
    }

    fn req<'a>(
        method: &'a str,
        path: &'a str,
        host: Option<&'a str>,
        headers: &'a Vec<(String, String)>,
    ) -> HttpRequest<'a> {
        HttpRequest {
            method,
            path,
            host,
            headers,
        }
    }

    #[test]
    fn regexes_match_the_whole_value() {
        let none: Vec<(String, String)> = vec![];
        let r = rule(Some("POST"), Some("/v1/request-landing"), None, &[]);
        let table = [
            ("POST", "/v1/request-landing", true),
            ("POST", "/v1/request-landing/extra", false),
            ("POST", "/x/v1/request-landing", false),
            ("POSTX", "/v1/request-landing", false),
            ("PUT", "/v1/request-landing", false),
            // the path includes the query, so a query is not silently ignored
            ("POST", "/v1/request-landing?x=1", false),
        ];
        for (m, p, want) in table {
            assert_eq!(r.check(&req(m, p, None, &none)).is_some(), want, "{m} {p}");
        }
        let any = rule(Some("GET"), Some("/v1/.*"), None, &[]);
        assert!(any.check(&req("GET", "/v1/x?y=1", None, &none)).is_some());
        // alternation binds inside the anchors
        let alt = rule(Some("GET|HEAD"), None, None, &[]);
        assert!(alt.check(&req("HEAD", "/", None, &none)).is_some());
        assert!(alt.check(&req("GETX", "/", None, &none)).is_none());
    }

    #[test]
    fn host_and_headers() {
        let r = rule(
            None,
            None,
            Some("api\\.example\\.com"),
            &["X-Token", "X-Mode: strict"],
        );
        let good = vec![
            ("x-token".to_string(), "a".to_string()),
            ("X-Mode".to_string(), "strict".to_string()),
        ];
        let bad_value = vec![
            ("x-token".to_string(), "a".to_string()),
            ("x-mode".to_string(), "lax".to_string()),
        ];
        let missing = vec![("x-mode".to_string(), "strict".to_string())];
        assert!(r
            .check(&req("GET", "/", Some("api.example.com"), &good))
            .is_some());
        assert!(r.check(&req("GET", "/", Some("evil.com"), &good)).is_none());
        assert!(r.check(&req("GET", "/", None, &good)).is_none());
        assert!(r
            .check(&req("GET", "/", Some("api.example.com"), &bad_value))
            .is_none());
        assert!(r
            .check(&req("GET", "/", Some("api.example.com"), &missing))
            .is_none());
    }

    #[test]
    fn header_match_mismatch_actions() {
        let mk = |mismatch: Option<&str>| {
            CompiledHttpRule::compile(&HttpRule {
                header_matches: Some(vec![HeaderMatch {
                    name: "X-Env".into(),
                    value: Some("prod".into()),
                    secret: None,
                    mismatch: mismatch.map(Into::into),
                }]),
                ..Default::default()
            })
            .unwrap()
        };
        let wrong = vec![("x-env".to_string(), "dev".to_string())];
        assert!(mk(None).check(&req("GET", "/", None, &wrong)).is_none());
        assert_eq!(
            mk(Some("LOG")).check(&req("GET", "/", None, &wrong)),
            Some(vec![HeaderAction::Log {
                name: "x-env".into()
            }])
        );
        assert_eq!(
            mk(Some("REPLACE")).check(&req("GET", "/", None, &wrong)),
            Some(vec![HeaderAction::Replace {
                name: "x-env".into(),
                value: "prod".into()
            }])
        );
        let right = vec![("x-env".to_string(), "prod".to_string())];
        assert_eq!(
            mk(Some("ADD")).check(&req("GET", "/", None, &right)),
            Some(vec![])
        );
        let e = CompiledHttpRule::compile(&HttpRule {
            header_matches: Some(vec![HeaderMatch {
                name: "x".into(),
                value: None,
                secret: None,
                mismatch: Some("DROP".into()),
            }]),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.field, "headerMatches[0].mismatch");
    }

    #[test]
    fn invalid_regex_is_rejected_with_its_field() {
        let e = CompiledHttpRule::compile(&HttpRule {
            path: Some("/v1/(".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.field, "path");
        assert!(e.message.contains("not a valid RE2"), "{}", e.message);
        // Perl-only constructs RE2 refuses are refused here too.
        assert!(CompiledHttpRule::compile(&HttpRule {
            path: Some("/(?=x)".into()),
            ..Default::default()
        })
        .is_err());
        assert!(CompiledHttpRule::compile(&HttpRule {
            path: Some("(a)\\1".into()),
            ..Default::default()
        })
        .is_err());
    }
}
