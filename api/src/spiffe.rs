//! SPIFFE ids (`spiffe://TRUST_DOMAIN/PATH`), parsed by the rules of the SPIFFE ID
//! specification, in the one place both ends use: the control plane checks its clients'
//! certificates with it, the sidecar its mesh peers'.
//!
//! The rules: the scheme is `spiffe` (lowercase); the trust domain is not empty and holds
//! only lowercase letters, digits, `.`, `-` and `_` (no port, no user info, no percent-
//! encoding); the path is empty or `/`-separated segments, each not empty, not `.` or
//! `..`, of letters, digits, `.`, `-` and `_` (no trailing `/`); no query or fragment; at
//! most 2048 bytes in all, the trust domain at most 255. Istio's workload form
//! `spiffe://TD/ns/NAMESPACE/sa/SERVICE_ACCOUNT` is [`SpiffeId::workload`].

use std::fmt;

/// Longest SPIFFE id, in bytes.
pub const MAX_ID_BYTES: usize = 2048;
/// Longest trust domain, in bytes.
pub const MAX_TRUST_DOMAIN_BYTES: usize = 255;

/// Why a string is not a SPIFFE id.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SpiffeError {
    /// The scheme is not `spiffe://`.
    #[error("{0:?}: not a spiffe:// URI")]
    Scheme(String),
    /// Longer than the specification allows.
    #[error("{id:?}: longer than {limit} bytes")]
    TooLong {
        /// The id (cut).
        id: String,
        /// The limit.
        limit: usize,
    },
    /// The trust domain is empty or holds a character it may not.
    #[error("{id:?}: trust domain {trust_domain:?}: {why}")]
    TrustDomain {
        /// The id.
        id: String,
        /// The trust domain as written.
        trust_domain: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A path segment is empty, `.`/`..`, or holds a character it may not.
    #[error("{id:?}: path segment {segment:?}: {why}")]
    Path {
        /// The id.
        id: String,
        /// The segment.
        segment: String,
        /// What is wrong.
        why: &'static str,
    },
}

/// A parsed SPIFFE id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    trust_domain: String,
    /// Empty, or `/seg/seg...`.
    path: String,
}

fn cut(s: &str) -> String {
    s.chars().take(80).collect()
}

impl SpiffeId {
    /// Parses `uri` by the specification's rules (module docs).
    pub fn parse(uri: &str) -> Result<Self, SpiffeError> {
        if uri.len() > MAX_ID_BYTES {
            return Err(SpiffeError::TooLong {
                id: cut(uri),
                limit: MAX_ID_BYTES,
            });
        }
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or_else(|| SpiffeError::Scheme(cut(uri)))?;
        let (td, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        let td_err = |why| SpiffeError::TrustDomain {
            id: uri.into(),
            trust_domain: td.into(),
            why,
        };
        if td.is_empty() {
            return Err(td_err("empty"));
        }
        if td.len() > MAX_TRUST_DOMAIN_BYTES {
            return Err(td_err("longer than 255 bytes"));
        }
        if !td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-_".contains(&b))
        {
            return Err(td_err(
                "may hold only lowercase letters, digits, '.', '-' and '_'",
            ));
        }
        if !path.is_empty() {
            for segment in path[1..].split('/') {
                let path_err = |why| SpiffeError::Path {
                    id: uri.into(),
                    segment: segment.into(),
                    why,
                };
                if segment.is_empty() {
                    return Err(path_err("empty (a doubled or trailing '/')"));
                }
                if segment == "." || segment == ".." {
                    return Err(path_err("relative segments are not allowed"));
                }
                if !segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-_".contains(&b))
                {
                    return Err(path_err("may hold only letters, digits, '.', '-' and '_'"));
                }
            }
        }
        Ok(SpiffeId {
            trust_domain: td.into(),
            path: path.into(),
        })
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The path (empty, or starting with `/`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Istio's workload form: `(namespace, service account)` of `/ns/NS/sa/SA`.
    pub fn workload(&self) -> Option<(&str, &str)> {
        let mut s = self.path.strip_prefix('/')?.split('/');
        match (s.next(), s.next(), s.next(), s.next(), s.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}{}", self.trust_domain, self.path)
    }
}

/// The URI SANs of a leaf certificate (DER), in order: where a SPIFFE id sits in an X.509
/// SVID. The error says what could not be read.
pub fn uri_sans(der: &[u8]) -> Result<Vec<String>, String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("subjectAltName: {e}"))?;
    Ok(san
        .iter()
        .flat_map(|s| s.value.general_names.iter())
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some((*u).to_owned()),
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_by_the_specification() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/deathstar").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.workload(), Some(("default", "deathstar")));
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/deathstar"
        );
        for ok in [
            "spiffe://example.org",
            "spiffe://my_domain-1.example/Path.To/x_y-Z",
            "spiffe://td/ns/a/sa/b/extra",
        ] {
            assert!(SpiffeId::parse(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            SpiffeId::parse("spiffe://td/ns/a/sa/b/extra")
                .unwrap()
                .workload(),
            None
        );
        assert_eq!(SpiffeId::parse("spiffe://td").unwrap().workload(), None);
        let cases = [
            ("https://cluster.local/ns/a/sa/b", "not a spiffe:// URI"),
            ("SPIFFE://cluster.local/ns/a/sa/b", "not a spiffe:// URI"),
            ("spiffe:///ns/a/sa/b", "trust domain \"\": empty"),
            ("spiffe://Cluster.Local/ns/a", "may hold only lowercase"),
            ("spiffe://td:8443/ns/a", "may hold only lowercase"),
            ("spiffe://user@td/ns/a", "may hold only lowercase"),
            ("spiffe://t%41/ns/a", "may hold only lowercase"),
            ("spiffe://td/ns//sa/b", "segment \"\": empty"),
            ("spiffe://td/ns/a/", "segment \"\": empty"),
            ("spiffe://td/", "segment \"\": empty"),
            ("spiffe://td/ns/../sa/b", "relative segments"),
            ("spiffe://td/./x", "relative segments"),
            ("spiffe://td/ns/a?x=1", "may hold only letters"),
            ("spiffe://td/ns/a#f", "may hold only letters"),
            ("spiffe://td/ns/a%20b", "may hold only letters"),
        ];
        for (bad, says) in cases {
            let err = SpiffeId::parse(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
        let long = format!("spiffe://td/{}", "a".repeat(MAX_ID_BYTES));
        assert!(matches!(
            SpiffeId::parse(&long),
            Err(SpiffeError::TooLong { .. })
        ));
        let long_td = format!("spiffe://{}/x", "a".repeat(256));
        assert!(SpiffeId::parse(&long_td)
            .unwrap_err()
            .to_string()
            .contains("longer than 255"));
    }
}
