//! Parsers for single field values: entities and ICMP types.

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
