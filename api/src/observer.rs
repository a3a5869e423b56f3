//! The monitor stream on the network (`membrane.observer.v1`,
//! `proto/membrane/observer/v1/observer.proto`): the `Observer` service each node agent
//! serves on 4244 and membrane-relay serves merged on 4245, the conversion between
//! [`Event`] and its message (both directions side by side, tested against each other),
//! and the stream's filters ([`Filter`]), which the agents and the relay apply so that a
//! client receives only what it asked for.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use regex::Regex;

pub mod peer;

use crate::monitor::{Event, L7};

/// Generated observer types and service (package `membrane.observer.v1`).
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("membrane.observer.v1");
}

/// `type` of the relay's record about a node: `reason` says what happened
/// (`connected`, `unreachable: ...`, `gone: ...`, `removed`).
pub const TYPE_NODE_STATUS: &str = "node-status";

/// Port of a node agent's observer service (Hubble's).
pub const AGENT_PORT: u16 = 4244;
/// Port of membrane-relay's observer service (Hubble Relay's).
pub const RELAY_PORT: u16 = 4245;

/// A filter that cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// `--http-path` is not a regular expression.
    #[error("http path filter {0:?}: {1}")]
    Path(String, String),
    /// `--verdict` is neither `allowed` nor `denied`.
    #[error("verdict filter {0:?}: expected allowed or denied")]
    Verdict(String),
    /// A key of `names` is not an address.
    #[error("names: {0:?} is not an IP address")]
    Name(String),
}

/// [`Event`] → its message.
pub fn encode(e: &Event) -> proto::Event {
    let Event {
        node,
        time,
        kind,
        program,
        proto,
        verdict,
        reason,
        src_identity,
        dst_identity,
        src,
        dst,
        to,
        src_pod,
        dst_pod,
        revision,
        cookie,
        count,
        l7,
    } = e.clone();
    proto::Event {
        node,
        time,
        r#type: kind,
        program,
        proto: proto.into(),
        verdict,
        reason,
        src_identity,
        dst_identity,
        src,
        dst,
        to,
        src_pod,
        dst_pod,
        revision,
        cookie,
        count,
        l7: l7.map(|l| {
            let L7 {
                direction,
                protocol,
                method,
                path,
                host,
                status,
                rule,
                peer_spiffe_id,
            } = l;
            proto::L7 {
                direction,
                protocol,
                method,
                path,
                host,
                status: status.into(),
                rule,
                peer_spiffe_id,
            }
        }),
    }
}

/// A message → [`Event`]. A protocol number or status out of range becomes 0 (unknown),
/// as the record's readers treat a value they do not know.
pub fn decode(m: proto::Event) -> Event {
    let proto::Event {
        node,
        time,
        r#type,
        program,
        proto,
        verdict,
        reason,
        src_identity,
        dst_identity,
        src,
        dst,
        to,
        src_pod,
        dst_pod,
        revision,
        cookie,
        count,
        l7,
    } = m;
    Event {
        node,
        time,
        kind: r#type,
        program,
        proto: u8::try_from(proto).unwrap_or(0),
        verdict,
        reason,
        src_identity,
        dst_identity,
        src,
        dst,
        to,
        src_pod,
        dst_pod,
        revision,
        cookie,
        count,
        l7: l7.map(|l| {
            let proto::L7 {
                direction,
                protocol,
                method,
                path,
                host,
                status,
                rule,
                peer_spiffe_id,
            } = l;
            L7 {
                direction,
                protocol,
                method,
                path,
                host,
                status: u16::try_from(status).unwrap_or(0),
                rule,
                peer_spiffe_id,
            }
        }),
    }
}

/// A checked filter: every non-empty list must match, any value of a list may.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pods: Vec<String>,
    namespaces: Vec<String>,
    identities: Vec<u32>,
    verdicts: Vec<String>,
    types: Vec<String>,
    ports: Vec<u16>,
    methods: Vec<String>,
    paths: Vec<Regex>,
    nodes: Vec<String>,
    names: HashMap<IpAddr, String>,
}

impl Filter {
    /// Checks the message's filter (regexes compile, verdicts are known, ports fit).
    pub fn new(f: &proto::Filter) -> Result<Self, FilterError> {
        let proto::Filter {
            pod,
            namespace,
            identity,
            verdict,
            r#type,
            port,
            http_method,
            http_path,
            node,
            names,
        } = f.clone();
        for v in &verdict {
            if v != "allowed" && v != "denied" {
                return Err(FilterError::Verdict(v.clone()));
            }
        }
        let paths = http_path
            .iter()
            .map(|p| Regex::new(p).map_err(|e| FilterError::Path(p.clone(), e.to_string())))
            .collect::<Result<_, _>>()?;
        let names = names
            .into_iter()
            .map(|(ip, pod)| match ip.parse::<IpAddr>() {
                Ok(a) => Ok((a, pod)),
                Err(_) => Err(FilterError::Name(ip)),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            pods: pod,
            namespaces: namespace,
            identities: identity,
            verdicts: verdict,
            types: r#type,
            // A port above 65535 matches nothing, as no flow has one.
            ports: port.iter().filter_map(|p| u16::try_from(*p).ok()).collect(),
            methods: http_method,
            paths,
            nodes: node,
            names,
        })
    }

    /// True when the filter has a `pod` or `namespace` list (which only named ends can
    /// match).
    pub fn selects_pods(&self) -> bool {
        !self.pods.is_empty() || !self.namespaces.is_empty()
    }

    /// True when an end named `pod` (`namespace/name`) matches the `pod` or the
    /// `namespace` list: the pods whose addresses the relay puts in `names`.
    pub fn picks(&self, pod: &str) -> bool {
        self.pods.iter().any(|w| pod_is(pod, w)) || self.namespaces.iter().any(|w| in_ns(pod, w))
    }

    /// An end's pod: the name the event carries, else the one `names` gives its address.
    fn end<'a>(&'a self, pod: &'a Option<String>, addr: &Option<String>) -> Option<&'a str> {
        pod.as_deref().or_else(|| {
            let ip = end_ip(addr.as_deref()?)?;
            self.names.get(&ip).map(String::as_str)
        })
    }

    /// True when `e` passes. The relay's `node-status` records and `lost` records are
    /// about the stream itself: only a `type` or `node` filter holds them back.
    pub fn matches(&self, e: &Event) -> bool {
        let any = |list: &[String], f: &dyn Fn(&str) -> bool| {
            list.is_empty() || list.iter().any(|v| f(v))
        };
        if !any(&self.types, &|t| t == e.kind) || !any(&self.nodes, &|n| n == e.node) {
            return false;
        }
        if e.kind == TYPE_NODE_STATUS || e.kind == crate::monitor::TYPE_LOST {
            return true;
        }
        let pods = [self.end(&e.src_pod, &e.src), self.end(&e.dst_pod, &e.dst)];
        let either_is = |want: &str| pods.iter().flatten().any(|p| pod_is(p, want));
        let either_in = |want: &str| pods.iter().flatten().any(|p| in_ns(p, want));
        let verdict_is = |want: &str| match want {
            "denied" => e.is_drop(),
            _ => e.verdict.as_deref() == Some(want),
        };
        let l7 = e.l7.as_ref();
        any(&self.pods, &either_is)
            && any(&self.namespaces, &either_in)
            && (self.identities.is_empty()
                || self
                    .identities
                    .iter()
                    .any(|i| *i == e.src_identity || *i == e.dst_identity))
            && any(&self.verdicts, &verdict_is)
            && (self.ports.is_empty() || dst_port(e).is_some_and(|p| self.ports.contains(&p)))
            && any(&self.methods, &|m| {
                l7.is_some_and(|l| l.method.eq_ignore_ascii_case(m))
            })
            && (self.paths.is_empty()
                || l7.is_some_and(|l| self.paths.iter().any(|r| r.is_match(&l.path))))
    }
}

/// `pod` (`namespace/name`) is `want`: `namespace/name`, or a bare name in any namespace.
fn pod_is(pod: &str, want: &str) -> bool {
    match want.contains('/') {
        true => pod == want,
        false => pod.rsplit('/').next() == Some(want),
    }
}

/// `pod` (`namespace/name`) is in namespace `want`.
fn in_ns(pod: &str, want: &str) -> bool {
    pod.split('/').next() == Some(want)
}

/// The address of an event's end (`src`, `dst`): `IP:PORT`, `[IP]:PORT` or a bare `IP`.
pub fn end_ip(addr: &str) -> Option<IpAddr> {
    addr.parse::<SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| addr.parse::<IpAddr>())
        .ok()
}

/// The destination port of `e`: `dst` as `IP:PORT` or `[IP]:PORT`.
pub fn dst_port(e: &Event) -> Option<u16> {
    let dst = e.dst.as_deref()?;
    dst.parse::<SocketAddr>().ok().map(|a| a.port())
}

#[cfg(test)]
mod tests;
