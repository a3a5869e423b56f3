//! Istio's capture annotations (`traffic.sidecar.istio.io/*`) turned into
//! [`DatapathSettings`]: which outbound destinations and inbound ports the sidecar
//! captures. Same meaning as Istio's iptables setup:
//!
//! - `includeOutboundIPRanges`: prefixes captured; `*` = all (the default),
//!   empty = no outbound capture.
//! - `excludeOutboundIPRanges`, `excludeOutboundPorts`: never captured;
//!   they win over an inclusion.
//! - `includeInboundPorts`: ports captured; `*` = all (the default), empty =
//!   no inbound capture.
//! - `excludeInboundPorts`: not captured when all ports are; the sidecar's
//!   own 15020, 15021 and 15090 are always excluded.
//!
//! Everything is parsed before anything is applied: a bad value is an error
//! naming the annotation and the value, and the settings stay as they were.

use std::collections::BTreeMap;

use ipnet::IpNet;

use crate::{DatapathSettings, InboundPorts};

/// Annotation prefix.
pub const PREFIX: &str = "traffic.sidecar.istio.io/";
/// `traffic.sidecar.istio.io/excludeOutboundPorts`.
pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
/// `traffic.sidecar.istio.io/excludeOutboundIPRanges`.
pub const EXCLUDE_OUTBOUND_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
/// `traffic.sidecar.istio.io/includeOutboundIPRanges`.
pub const INCLUDE_OUTBOUND_RANGES: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";
/// `traffic.sidecar.istio.io/excludeInboundPorts`.
pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
/// `traffic.sidecar.istio.io/includeInboundPorts`.
pub const INCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeInboundPorts";
/// The sidecar's own inbound ports, never captured: 15020 (merged
/// metrics), 15021 (health), 15090 (Envoy's Prometheus).
pub const ALWAYS_EXCLUDED_INBOUND: [u16; 3] = [15020, 15021, 15090];

/// A bad annotation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A value that does not parse.
    #[error("{annotation}: {value:?}: {what}")]
    Invalid {
        /// The annotation's full name.
        annotation: String,
        /// The value found.
        value: String,
        /// What was expected.
        what: String,
    },
    /// A line of an annotations file that is not `key="value"`.
    #[error("line {line}: {text:?}: expected key=\"value\" (the downward API annotations format)")]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
    },
}

/// `*` or a list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Include<T> {
    /// `*`: everything.
    All,
    /// Only these (empty: nothing).
    Only(Vec<T>),
}

/// The capture annotations of one pod, parsed; `None` = not set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CaptureAnnotations {
    /// `excludeOutboundPorts`.
    pub exclude_outbound_ports: Option<Vec<u16>>,
    /// `excludeOutboundIPRanges`.
    pub exclude_outbound_ranges: Option<Vec<IpNet>>,
    /// `includeOutboundIPRanges`.
    pub include_outbound_ranges: Option<Include<IpNet>>,
    /// `excludeInboundPorts`.
    pub exclude_inbound_ports: Option<Vec<u16>>,
    /// `includeInboundPorts`.
    pub include_inbound_ports: Option<Include<u16>>,
}

fn items(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn ports(annotation: &str, value: &str) -> Result<Vec<u16>, Error> {
    items(value)
        .map(|p| match p.parse::<u16>() {
            Ok(n) if n != 0 => Ok(n),
            _ => Err(Error::Invalid {
                annotation: annotation.to_owned(),
                value: value.to_owned(),
                what: format!("{p:?} is not a port number (1-65535)"),
            }),
        })
        .collect()
}

fn ranges(annotation: &str, value: &str) -> Result<Vec<IpNet>, Error> {
    items(value)
        .map(|r| {
            r.parse::<IpNet>()
                .or_else(|_| r.parse::<std::net::IpAddr>().map(IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| Error::Invalid {
                    annotation: annotation.to_owned(),
                    value: value.to_owned(),
                    what: format!("{r:?} is not an IP range in CIDR form"),
                })
        })
        .collect()
}

fn include<T>(
    value: &str,
    parse: impl Fn(&str) -> Result<Vec<T>, Error>,
) -> Result<Include<T>, Error> {
    if value.trim() == "*" {
        return Ok(Include::All);
    }
    parse(value).map(Include::Only)
}

impl CaptureAnnotations {
    /// Parse the capture annotations out of a pod's annotations; others
    /// are ignored, an unknown `traffic.sidecar.istio.io/` one too (Istio
    /// has more, e.g. for the interception mode).
    pub fn parse(annotations: &BTreeMap<String, String>) -> Result<Self, Error> {
        let get = |k: &str| annotations.get(k).map(String::as_str);
        let mut a = Self::default();
        if let Some(v) = get(EXCLUDE_OUTBOUND_PORTS) {
            a.exclude_outbound_ports = Some(ports(EXCLUDE_OUTBOUND_PORTS, v)?);
        }
        if let Some(v) = get(EXCLUDE_OUTBOUND_RANGES) {
            a.exclude_outbound_ranges = Some(ranges(EXCLUDE_OUTBOUND_RANGES, v)?);
        }
        if let Some(v) = get(INCLUDE_OUTBOUND_RANGES) {
            a.include_outbound_ranges = Some(include(v, |v| ranges(INCLUDE_OUTBOUND_RANGES, v))?);
        }
        if let Some(v) = get(EXCLUDE_INBOUND_PORTS) {
            a.exclude_inbound_ports = Some(ports(EXCLUDE_INBOUND_PORTS, v)?);
        }
        if let Some(v) = get(INCLUDE_INBOUND_PORTS) {
            a.include_inbound_ports = Some(include(v, |v| ports(INCLUDE_INBOUND_PORTS, v))?);
        }
        Ok(a)
    }

    /// Apply to settings: outbound lists to the capture (when capture is
    /// on), inbound ports always (the always-excluded ones included).
    pub fn apply(&self, s: &mut DatapathSettings) {
        if let Some(c) = s.capture.as_mut() {
            if let Some(p) = &self.exclude_outbound_ports {
                c.exclude_ports = p.clone();
            }
            if let Some(r) = &self.exclude_outbound_ranges {
                c.exclude_cidrs = r.clone();
            }
            match &self.include_outbound_ranges {
                None | Some(Include::All) => c.include_cidrs = None,
                Some(Include::Only(r)) => c.include_cidrs = Some(r.clone()),
            }
        }
        if matches!(&self.include_outbound_ranges, Some(Include::Only(r)) if r.is_empty()) {
            s.capture = None;
        }
        match &self.include_inbound_ports {
            Some(Include::Only(p)) if p.is_empty() => {
                s.capture_inbound = false;
                s.inbound_ports = InboundPorts::Only(Vec::new());
            }
            Some(Include::Only(p)) => {
                let mut p = p.clone();
                p.retain(|x| !ALWAYS_EXCLUDED_INBOUND.contains(x));
                p.sort_unstable();
                p.dedup();
                s.inbound_ports = InboundPorts::Only(p);
            }
            None | Some(Include::All) => {
                let mut p = self.exclude_inbound_ports.clone().unwrap_or_default();
                p.extend(ALWAYS_EXCLUDED_INBOUND);
                p.sort_unstable();
                p.dedup();
                s.inbound_ports = InboundPorts::AllExcept(p);
            }
        }
    }
}

/// Parse a Kubernetes downward API annotations file: one `key="value"` per
/// line, the value quoted with Go's escapes (`\"`, `\\`, `\n`, `\t`).
pub fn parse_downward_api(text: &str) -> Result<BTreeMap<String, String>, Error> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = || Error::Syntax {
            line: i + 1,
            text: line.to_owned(),
        };
        let (k, v) = line.split_once('=').ok_or_else(bad)?;
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .ok_or_else(bad)?;
        let mut value = String::with_capacity(v.len());
        let mut chars = v.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                value.push(c);
                continue;
            }
            match chars.next() {
                Some('n') => value.push('\n'),
                Some('t') => value.push('\t'),
                Some(c @ ('"' | '\\')) => value.push(c),
                _ => return Err(bad()),
            }
        }
        out.insert(k.trim().to_owned(), value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Capture;

    fn parse(pairs: &[(&str, &str)]) -> Result<CaptureAnnotations, Error> {
        let m = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        CaptureAnnotations::parse(&m)
    }

    fn captured() -> DatapathSettings {
        DatapathSettings {
            capture: Some(Capture::default()),
            capture_inbound: true,
            ..DatapathSettings::default()
        }
    }

    #[test]
    fn defaults_capture_everything_but_the_sidecar_ports() {
        let mut s = captured();
        parse(&[]).unwrap().apply(&mut s);
        assert_eq!(s.capture.as_ref().unwrap().include_cidrs, None);
        assert_eq!(
            s.inbound_ports,
            InboundPorts::AllExcept(vec![15020, 15021, 15090])
        );
        assert!(s.capture_inbound);
    }

    #[test]
    fn lists_and_wildcards() {
        let mut s = captured();
        parse(&[
            (EXCLUDE_OUTBOUND_PORTS, "8081, 9000"),
            (EXCLUDE_OUTBOUND_RANGES, "10.78.0.0/16,fd00::1"),
            (INCLUDE_OUTBOUND_RANGES, "10.0.0.0/8"),
            (EXCLUDE_INBOUND_PORTS, "8443"),
        ])
        .unwrap()
        .apply(&mut s);
        let c = s.capture.as_ref().unwrap();
        assert_eq!(c.exclude_ports, vec![8081, 9000]);
        assert_eq!(
            c.exclude_cidrs,
            vec![
                "10.78.0.0/16".parse().unwrap(),
                "fd00::1/128".parse().unwrap()
            ]
        );
        assert_eq!(c.include_cidrs, Some(vec!["10.0.0.0/8".parse().unwrap()]));
        assert_eq!(
            s.inbound_ports,
            InboundPorts::AllExcept(vec![8443, 15020, 15021, 15090])
        );

        let mut s = captured();
        parse(&[(INCLUDE_INBOUND_PORTS, "8080,15021")])
            .unwrap()
            .apply(&mut s);
        assert_eq!(s.inbound_ports, InboundPorts::Only(vec![8080]));
        let mut s = captured();
        parse(&[(INCLUDE_OUTBOUND_RANGES, "*"), (INCLUDE_INBOUND_PORTS, "*")])
            .unwrap()
            .apply(&mut s);
        assert_eq!(s.capture.as_ref().unwrap().include_cidrs, None);
        assert!(matches!(s.inbound_ports, InboundPorts::AllExcept(_)));
    }

    #[test]
    fn empty_includes_switch_capture_off() {
        let mut s = captured();
        parse(&[(INCLUDE_OUTBOUND_RANGES, ""), (INCLUDE_INBOUND_PORTS, "")])
            .unwrap()
            .apply(&mut s);
        assert_eq!(s.capture, None);
        assert!(!s.capture_inbound);
    }

    #[test]
    fn bad_values_name_the_annotation_and_the_value() {
        let e = parse(&[(EXCLUDE_OUTBOUND_PORTS, "80,8o")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "traffic.sidecar.istio.io/excludeOutboundPorts: \"80,8o\": \"8o\" is not a port number (1-65535)"
        );
        let e = parse(&[(INCLUDE_OUTBOUND_RANGES, "10.0.0.0/33")]).unwrap_err();
        assert!(e.to_string().contains("includeOutboundIPRanges"), "{e}");
        assert!(parse(&[(EXCLUDE_INBOUND_PORTS, "0")]).is_err());
        assert!(parse(&[(INCLUDE_INBOUND_PORTS, "*,80")]).is_err());
    }

    #[test]
    fn downward_api_file() {
        let m = parse_downward_api(
            "kubernetes.io/config.seen=\"2026-01-01\"\n\
             traffic.sidecar.istio.io/excludeOutboundPorts=\"8081\"\n\
             note=\"say \\\"hi\\\"\"\n",
        )
        .unwrap();
        assert_eq!(m[EXCLUDE_OUTBOUND_PORTS], "8081");
        assert_eq!(m["note"], "say \"hi\"");
        assert_eq!(
            parse_downward_api("a=b\n").unwrap_err(),
            Error::Syntax {
                line: 1,
                text: "a=b".to_owned()
            }
        );
    }
}
