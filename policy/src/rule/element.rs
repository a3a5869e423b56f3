//! The four kinds of rule element (`ingress`, `ingressDeny`, `egress`, `egressDeny`) seen
//! through one trait, so one walk compiles them all.

use super::compile::Effect;
use super::peers::PeerFields;
use super::ports::Ports;
use super::*;
use crate::resolve::Direction;

/// What compilation needs from each of the four kinds of rule element (`ingress`,
/// `ingressDeny`, `egress`, `egressDeny`), so one walk serves them all.
pub(super) trait Element {
    /// The list's field name.
    const LIST: &'static str;
    /// The direction of the list's traffic.
    const DIRECTION: Direction;
    /// Whether the list allows or denies.
    const EFFECT: Effect;
    fn peers(&self) -> PeerFields<'_>;
    fn ports(&self) -> Ports<'_>;
    fn icmps(&self) -> Option<&[model::IcmpRule]>;
    fn authentication(&self) -> Option<&model::Authentication> {
        None
    }
}

impl Element for model::IngressRule {
    const LIST: &'static str = "ingress";
    const DIRECTION: Direction = Direction::Ingress;
    const EFFECT: Effect = Effect::Allow;
    fn peers(&self) -> PeerFields<'_> {
        PeerFields {
            endpoints: self.from_endpoints.as_ref(),
            requires: self.from_requires.as_ref(),
            cidr: self.from_cidr.as_ref(),
            cidr_set: self.from_cidr_set.as_ref(),
            entities: self.from_entities.as_ref(),
            nodes: self.from_nodes.as_ref(),
            groups: self.from_groups.as_ref(),
            ..Default::default()
        }
    }
    fn ports(&self) -> Ports<'_> {
        Ports::Allow(self.to_ports.as_deref().unwrap_or(&[]))
    }
    fn icmps(&self) -> Option<&[model::IcmpRule]> {
        self.icmps.as_deref()
    }
    fn authentication(&self) -> Option<&model::Authentication> {
        self.authentication.as_ref()
    }
}

impl Element for model::IngressDenyRule {
    const LIST: &'static str = "ingressDeny";
    const DIRECTION: Direction = Direction::Ingress;
    const EFFECT: Effect = Effect::Deny;
    fn peers(&self) -> PeerFields<'_> {
        PeerFields {
            endpoints: self.from_endpoints.as_ref(),
            requires: self.from_requires.as_ref(),
            cidr: self.from_cidr.as_ref(),
            cidr_set: self.from_cidr_set.as_ref(),
            entities: self.from_entities.as_ref(),
            nodes: self.from_nodes.as_ref(),
            groups: self.from_groups.as_ref(),
            ..Default::default()
        }
    }
    fn ports(&self) -> Ports<'_> {
        Ports::Deny(self.to_ports.as_deref().unwrap_or(&[]))
    }
    fn icmps(&self) -> Option<&[model::IcmpRule]> {
        self.icmps.as_deref()
    }
}

impl Element for model::EgressRule {
    const LIST: &'static str = "egress";
    const DIRECTION: Direction = Direction::Egress;
    const EFFECT: Effect = Effect::Allow;
    fn peers(&self) -> PeerFields<'_> {
        PeerFields {
            endpoints: self.to_endpoints.as_ref(),
            requires: self.to_requires.as_ref(),
            cidr: self.to_cidr.as_ref(),
            cidr_set: self.to_cidr_set.as_ref(),
            entities: self.to_entities.as_ref(),
            nodes: self.to_nodes.as_ref(),
            groups: self.to_groups.as_ref(),
            services: self.to_services.as_ref(),
            fqdns: self.to_fqdns.as_ref(),
        }
    }
    fn ports(&self) -> Ports<'_> {
        Ports::Allow(self.to_ports.as_deref().unwrap_or(&[]))
    }
    fn icmps(&self) -> Option<&[model::IcmpRule]> {
        self.icmps.as_deref()
    }
    fn authentication(&self) -> Option<&model::Authentication> {
        self.authentication.as_ref()
    }
}

impl Element for model::EgressDenyRule {
    const LIST: &'static str = "egressDeny";
    const DIRECTION: Direction = Direction::Egress;
    const EFFECT: Effect = Effect::Deny;
    fn peers(&self) -> PeerFields<'_> {
        PeerFields {
            endpoints: self.to_endpoints.as_ref(),
            requires: self.to_requires.as_ref(),
            cidr: self.to_cidr.as_ref(),
            cidr_set: self.to_cidr_set.as_ref(),
            entities: self.to_entities.as_ref(),
            nodes: self.to_nodes.as_ref(),
            groups: self.to_groups.as_ref(),
            services: self.to_services.as_ref(),
            ..Default::default()
        }
    }
    fn ports(&self) -> Ports<'_> {
        Ports::Deny(self.to_ports.as_deref().unwrap_or(&[]))
    }
    fn icmps(&self) -> Option<&[model::IcmpRule]> {
        self.icmps.as_deref()
    }
}

/// The prefix of an element's peer fields in that direction (`fromEndpoints`, `toCIDR`).
pub(super) fn peer_prefix(direction: Direction) -> &'static str {
    match direction {
        Direction::Ingress => "from",
        Direction::Egress => "to",
    }
}
