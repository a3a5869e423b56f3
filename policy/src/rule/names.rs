//! DNS names and patterns, Kubernetes object names and IANA service names: the checks for
//! fields that name something, and the `toFQDNs` / DNS-rule selector built on them.

use super::compile::Cx;
use super::*;

/// IANA service name syntax (RFC 6335): 1-15 characters of letters, digits and hyphens, at
/// least one letter, no hyphen at either end or twice in a row.
pub fn is_iana_service_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_alphabetic())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

pub(super) fn is_dns_label_path(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

pub(super) fn valid_dns(s: &str, pattern: bool) -> bool {
    // The CRD's pattern: labels of [-a-zA-Z0-9_] (plus `*` in patterns), dot-separated,
    // an optional trailing dot.
    let body = s.strip_suffix('.').unwrap_or(s);
    !body.is_empty()
        && body.split('.').all(|l| {
            !l.is_empty()
                && l.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (pattern && b == b'*')
                })
        })
}

impl Cx {
    /// Checks one `matchName` / `matchPattern` selector; the name or pattern when valid.
    pub(super) fn fqdn(&mut self, path: &str, q: &model::FqdnSelector) -> Option<String> {
        match (&q.match_name, &q.match_pattern) {
            (Some(_), Some(_)) => {
                self.err(
                    path,
                    "matchName and matchPattern are mutually exclusive".into(),
                );
                None
            }
            (None, None) => {
                self.err(path, "one of matchName or matchPattern is required".into());
                None
            }
            (Some(n), None) => {
                if !valid_dns(n, false) {
                    self.err(
                        &format!("{path}.matchName"),
                        format!("{n:?} is not a valid DNS name"),
                    );
                    return None;
                }
                Some(n.clone())
            }
            (None, Some(p)) => {
                if !valid_dns(p, true) {
                    self.err(
                        &format!("{path}.matchPattern"),
                        format!("{p:?} is not a valid DNS name pattern"),
                    );
                    return None;
                }
                Some(p.clone())
            }
        }
    }
}
