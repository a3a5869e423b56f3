//! Cilium's HTTP rules, compiled: method, path and host are RE2 regexes that must match the
//! whole value (the path includes the query), `headers` entries are `"Name"` (present) or
//! `"Name: value"` (exact), and `headerMatches` compare a value and may carry an action to
//! take on mismatch instead of denying.
//!
//! A `headerMatches` entry may take its value from a Kubernetes Secret. The engine reads
//! no secrets: the caller passes a [`SecretResolver`] with each request, and the rules of
//! what a secret means (exactly one data entry, usable as a header value, the inline
//! `value` as fallback, constant-time comparison, values redacted wherever they are
//! printed) live here, once.

use crate::model::HttpRule;
use regex::Regex;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Errors from compiling an HTTP rule; `field` is relative to the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct HttpRuleError {
    /// Field within the rule (`path`, `headerMatches[0].mismatch`, ...).
    pub field: String,
    /// What is wrong.
    pub message: String,
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

/// A Kubernetes Secret named by a `headerMatches` entry, its namespace resolved (a
/// reference without one means the policy's; `default` for cluster-wide policies).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretName {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl fmt::Display for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A Secret's data: entry name → decoded value.
pub type SecretData = BTreeMap<String, Vec<u8>>;

/// Where the values of the secrets header matches name come from (the proxy: its secret
/// store, which may change between requests).
pub trait SecretResolver {
    /// The data of Secret `name`, or `None` when no such Secret is known.
    fn secret(&self, name: &SecretName) -> Option<Arc<SecretData>>;
}

/// A resolver that knows no secrets: a header match against a secret falls back to its
/// inline `value`, or fails. For callers that cannot read secrets (`policy trace`).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSecrets;

impl SecretResolver for NoSecrets {
    fn secret(&self, _name: &SecretName) -> Option<Arc<SecretData>> {
        None
    }
}

/// Why a Secret cannot give a header match its value; the message names the secret (and
/// the entry) but never shows a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderSecretError {
    /// The resolver does not know the secret.
    #[error("secret {0}: not found")]
    NotFound(SecretName),
    /// The secret does not hold exactly one data entry.
    #[error("secret {secret}: has {count} data entries; a header match needs exactly one")]
    EntryCount {
        /// The secret.
        secret: SecretName,
        /// How many entries it has.
        count: usize,
    },
    /// The one entry cannot be a header value.
    #[error("secret {secret}: entry {entry:?}: {message}")]
    InvalidValue {
        /// The secret.
        secret: SecretName,
        /// The entry's name.
        entry: String,
        /// What is wrong (never the value itself).
        message: String,
    },
}

/// The value Secret `name` gives a header match: its only data entry, which must be a
/// non-empty UTF-8 HTTP field value with no control characters and no surrounding
/// whitespace (a trailing newline, common in secrets made from files, is refused rather
/// than silently never matching). Anything else is an error, and the match treats the
/// secret as unavailable.
pub fn header_secret_value(
    resolver: &dyn SecretResolver,
    name: &SecretName,
) -> Result<SecretValue, HeaderSecretError> {
    let data = resolver
        .secret(name)
        .ok_or_else(|| HeaderSecretError::NotFound(name.clone()))?;
    header_secret_from_data(name, data)
}

/// [`header_secret_value`] for data already at hand (a resolver that wants to report a
/// secret it cannot use applies the same rules with this).
pub fn header_secret_from_data(
    name: &SecretName,
    data: Arc<SecretData>,
) -> Result<SecretValue, HeaderSecretError> {
    let (entry, value) = match data.iter().next() {
        Some((k, v)) if data.len() == 1 => (k, v),
        _ => {
            return Err(HeaderSecretError::EntryCount {
                secret: name.clone(),
                count: data.len(),
            })
        }
    };
    let invalid = |message: String| HeaderSecretError::InvalidValue {
        secret: name.clone(),
        entry: entry.clone(),
        message,
    };
    let text = std::str::from_utf8(value).map_err(|_| invalid("not UTF-8 text".into()))?;
    if text.is_empty() {
        return Err(invalid("empty".into()));
    }
    if let Some(i) = text
        .bytes()
        .position(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
    {
        return Err(invalid(format!(
            "not a valid HTTP header value (control character at byte {i})"
        )));
    }
    if text.starts_with([' ', '\t']) || text.ends_with([' ', '\t']) {
        return Err(invalid(
            "not a valid HTTP header value (leading or trailing whitespace)".into(),
        ));
    }
    Ok(SecretValue(data))
}

/// A usable header-match secret: exactly one entry, valid as a header value.
#[derive(Clone)]
pub struct SecretValue(Arc<SecretData>);

impl SecretValue {
    /// The value.
    pub fn as_str(&self) -> &str {
        // Checked in `header_secret_value`: one entry, UTF-8.
        self.0
            .values()
            .next()
            .and_then(|v| std::str::from_utf8(v).ok())
            .unwrap_or("")
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A header value a mismatch action writes into the request. When it came from a secret
/// it prints as `[redacted]` (Debug and Display); only [`ActionValue::as_str`] reveals it,
/// for the request that is forwarded.
#[derive(Clone, PartialEq, Eq)]
pub struct ActionValue {
    value: String,
    secret: bool,
}

impl ActionValue {
    /// A value written in the policy itself.
    pub fn literal(value: impl Into<String>) -> Self {
        ActionValue {
            value: value.into(),
            secret: false,
        }
    }

    /// A value taken from a secret.
    pub fn secret(value: impl Into<String>) -> Self {
        ActionValue {
            value: value.into(),
            secret: true,
        }
    }

    /// The value to put in the request.
    pub fn as_str(&self) -> &str {
        &self.value
    }

    /// Whether it came from a secret (and so must never be logged).
    pub fn is_secret(&self) -> bool {
        self.secret
    }
}

impl fmt::Display for ActionValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.secret {
            true => f.write_str("[redacted]"),
            false => f.write_str(&self.value),
        }
    }
}

impl fmt::Debug for ActionValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.secret {
            true => f.write_str("[redacted]"),
            false => fmt::Debug::fmt(&self.value, f),
        }
    }
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
        value: ActionValue,
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
        value: ActionValue,
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
    secret: Option<SecretName>,
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
    /// Where secrets named by `headerMatches` are read, at the time of this request.
    pub secrets: &'a dyn SecretResolver,
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
    /// Compiles and validates one rule of a policy in `namespace` (`None`: cluster-wide),
    /// which is where secrets named without a namespace are looked for (`default` for
    /// cluster-wide policies).
    pub fn compile(rule: &HttpRule, namespace: Option<&str>) -> Result<Self, HttpRuleError> {
        let re = |field: &str, v: &Option<String>| -> Result<Option<Regex>, HttpRuleError> {
            match v {
                None => Ok(None),
                Some(p) => crate::regexp::compile(p)
                    .map(Some)
                    .map_err(|e| HttpRuleError {
                        field: field.to_owned(),
                        message: e.to_string(),
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
            // With both, `value` is what is matched while the secret is unavailable.
            let secret = match &m.secret {
                None => None,
                Some(s) => {
                    if s.name.is_empty() {
                        return Err(HttpRuleError {
                            field: format!("headerMatches[{i}].secret.name"),
                            message: "must not be empty".into(),
                        });
                    }
                    let namespace = s
                        .namespace
                        .as_deref()
                        .filter(|n| !n.is_empty())
                        .or(namespace)
                        .unwrap_or("default");
                    Some(SecretName {
                        namespace: namespace.to_owned(),
                        name: s.name.clone(),
                    })
                }
            };
            header_matches.push(HeaderMatchReq {
                name: m.name.to_ascii_lowercase(),
                value: m.value.clone().filter(|v| !v.is_empty()),
                secret,
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

    /// Secrets this rule's header matches depend on (read through the request's
    /// [`SecretResolver`]).
    pub fn secrets(&self) -> impl Iterator<Item = &SecretName> {
        self.header_matches.iter().filter_map(|m| m.secret.as_ref())
    }

    /// The secret of the `i`th `headerMatches` entry, if it names one.
    pub fn header_match_secret(&self, i: usize) -> Option<&SecretName> {
        self.header_matches.get(i).and_then(|m| m.secret.as_ref())
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
            // The value to match: the secret's while it is usable, else the inline value;
            // a secret that is unusable with no inline value fails the rule whatever the
            // mismatch action (nothing could be added or compared), as Cilium's proxy does.
            let secret = match &m.secret {
                Some(name) => match header_secret_value(req.secrets, name) {
                    Ok(v) => Some(v),
                    Err(_) if m.value.is_some() => None,
                    Err(_) => return None,
                },
                None => None,
            };
            let expected = match (&secret, &m.value) {
                (Some(s), _) => Some(s.as_str()),
                (None, Some(v)) => Some(v.as_str()),
                (None, None) => None,
            };
            let ok = match expected {
                // Constant time over the value, so timing does not reveal how much of a
                // guess was right (its length is not hidden).
                Some(v) => req
                    .headers
                    .any_value(&m.name, &mut |got| bool::from(got.ct_eq(v.as_bytes()))),
                None => req.headers.any_value(&m.name, &mut |_| true),
            };
            if ok {
                continue;
            }
            let value = || match &secret {
                Some(s) => ActionValue::secret(s.as_str()),
                None => ActionValue::literal(m.value.clone().unwrap_or_default()),
            };
            match m.mismatch {
                MismatchAction::Fail => return None,
                MismatchAction::Log => actions.push(HeaderAction::Log {
                    name: m.name.clone(),
                }),
                MismatchAction::Add => actions.push(HeaderAction::Add {
                    name: m.name.clone(),
                    value: value(),
                }),
                MismatchAction::Delete => actions.push(HeaderAction::Delete {
                    name: m.name.clone(),
                }),
                MismatchAction::Replace => actions.push(HeaderAction::Replace {
                    name: m.name.clone(),
                    value: value(),
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
mod tests;
