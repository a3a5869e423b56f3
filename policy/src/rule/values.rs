//! Parsers and checks for single field values: entities, CIDRs, DNS names and patterns,
//! service names, ICMP types.

use super::*;

/// Label selectors for an entity, as Cilium maps entities to reserved labels. `None` for an
/// unknown entity.
pub fn entity_selectors(entity: &str) -> Option<Vec<Selector>> {
    let reserved = |k: &str| Selector::with_label(SOURCE_RESERVED, k, "");
    Some(match entity {
        "all" => vec![Selector::wildcard()],
        "world" => vec![
            reserved("world"),
            reserved("world-ipv4"),
            reserved("world-ipv6"),
        ],
        "cluster" => vec![
            reserved("host"),
            reserved("remote-node"),
            reserved("init"),
            reserved("ingress"),
            reserved("health"),
            reserved("unmanaged"),
            reserved("kube-apiserver"),
            Selector::with_label(SOURCE_K8S, labels::POLICY_CLUSTER, DEFAULT_CLUSTER),
        ],
        "host" => vec![reserved("host")],
        "remote-node" => vec![reserved("remote-node")],
        "kube-apiserver" => vec![reserved("kube-apiserver")],
        "ingress" => vec![reserved("ingress")],
        "init" => vec![reserved("init")],
        "health" => vec![reserved("health")],
        "unmanaged" => vec![reserved("unmanaged")],
        "none" => vec![],
        _ => return None,
    })
}

/// Parses a prefix; `allow_bare_ip` accepts an address as a host prefix (fromCIDR does,
/// fromCIDRSet does not). Host bits must be zero, as Go's netip.ParsePrefix then Masked
/// would not silently fix them for us.
pub fn parse_cidr(s: &str, allow_bare_ip: bool) -> Result<IpNet, String> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    if allow_bare_ip {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(IpNet::from(ip));
        }
    }
    Err(format!(
        "{s:?} is not a CIDR prefix (expected e.g. 10.0.0.0/8 or 2001:db8::/32)"
    ))
}

/// Test manifests carry placeholders such as `NODE_WITHOUT_CILIUM_IP/32` that their harness
/// substitutes: an upper-case identifier, optionally with a prefix length.
pub(super) fn is_template_placeholder(s: &str) -> bool {
    let name = s.split_once('/').map_or(s, |(n, len)| {
        if len.bytes().all(|b| b.is_ascii_digit()) {
            n
        } else {
            ""
        }
    });
    name.len() >= 3
        && name.bytes().next().is_some_and(|b| b.is_ascii_uppercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        && name.contains('_')
}

/// `net` minus every prefix in `excepts`, as a minimal list of prefixes.
pub fn subtract(net: IpNet, excepts: &[IpNet]) -> Vec<IpNet> {
    let mut parts = vec![net];
    for ex in excepts {
        let mut next = Vec::new();
        for p in parts {
            if !p.contains(&ex.network()) && !ex.contains(&p.network()) {
                next.push(p);
            } else if ex.contains(&p) {
                // fully excluded
            } else {
                // p strictly contains ex: split p in halves until ex is isolated.
                let mut cur = p;
                while cur.prefix_len() < ex.prefix_len() {
                    let Ok(mut halves) = cur.subnets(cur.prefix_len() + 1) else {
                        break;
                    };
                    let (Some(a), Some(b)) = (halves.next(), halves.next()) else {
                        break;
                    };
                    if a.contains(&ex.network()) {
                        next.push(b);
                        cur = a;
                    } else {
                        next.push(a);
                        cur = b;
                    }
                }
            }
        }
        parts = next;
    }
    parts.sort();
    parts
}

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

/// ICMP type names Cilium accepts, per family.
const ICMP4_NAMES: &[(&str, u8)] = &[
    ("EchoReply", 0),
    ("DestinationUnreachable", 3),
    ("Redirect", 5),
    ("Echo", 8),
    ("EchoRequest", 8),
    ("RouterAdvertisement", 9),
    ("RouterSelection", 10),
    ("TimeExceeded", 11),
    ("ParameterProblem", 12),
    ("Timestamp", 13),
    ("TimestampReply", 14),
    ("Photuris", 40),
    ("ExtendedEchoRequest", 42),
    ("ExtendedEchoReply", 43),
];
const ICMP6_NAMES: &[(&str, u8)] = &[
    ("DestinationUnreachable", 1),
    ("PacketTooBig", 2),
    ("TimeExceeded", 3),
    ("ParameterProblem", 4),
    ("EchoRequest", 128),
    ("EchoReply", 129),
    ("MulticastListenerQuery", 130),
    ("MulticastListenerReport", 131),
    ("MulticastListenerDone", 132),
    ("RouterSolicitation", 133),
    ("RouterAdvertisement", 134),
    ("NeighborSolicitation", 135),
    ("NeighborAdvertisement", 136),
    ("RedirectMessage", 137),
    ("RouterRenumbering", 138),
    ("ICMPNodeInformationQuery", 139),
    ("ICMPNodeInformationResponse", 140),
    ("InverseNeighborDiscoverySolicitation", 141),
    ("InverseNeighborDiscoveryAdvertisement", 142),
    ("HomeAgentAddressDiscoveryRequest", 144),
    ("HomeAgentAddressDiscoveryReply", 145),
    ("MobilePrefixSolicitation", 146),
    ("MobilePrefixAdvertisement", 147),
    ("DuplicateAddressRequestCodeSuffix", 157),
    ("DuplicateAddressConfirmationCodeSuffix", 158),
    ("ExtendedEchoRequest", 160),
    ("ExtendedEchoReply", 161),
];

pub(super) fn icmp_type(t: &model::IntOrString, v6: bool) -> Result<u8, String> {
    match t {
        model::IntOrString::Int(n) => {
            u8::try_from(*n).map_err(|_| format!("{n} is not an ICMP type (0-255)"))
        }
        model::IntOrString::String(s) => {
            if let Ok(n) = s.parse::<u8>() {
                return Ok(n);
            }
            let table = if v6 { ICMP6_NAMES } else { ICMP4_NAMES };
            table
                .iter()
                .find(|(n, _)| n == s)
                .map(|(_, t)| *t)
                .ok_or_else(|| {
                    format!(
                        "{s:?} is not an ICMP{} type name or number",
                        if v6 { "v6" } else { "" }
                    )
                })
        }
    }
}
