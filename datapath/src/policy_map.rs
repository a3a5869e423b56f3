//! From the policy engine's resolved policy to `mb_policy` entries.
//!
//! The connect hooks and sockops decide a TCP connection at L3/L4 with one entry keyed by
//! (source identity, destination identity, port); see `bpf/lib/policy.h`. An entry allows
//! when both ends' policies do: the source's egress and the destination's ingress, each
//! read off the engine's [`ResolvedPolicy`] with [`ConnPolicy::l4_verdict`], the verdict
//! `membrane policy trace` gives without an HTTP request. What only the proxy can see stays
//! the proxy's: a port whose rules restrict HTTP is allowed here and decided per request
//! there, and so is one whose allow rules name TLS server names (the kernel sees no
//! ClientHello).
//!
//! Nothing here touches a map: [`Datapath::set_policy_entry`](crate::Datapath::set_policy_entry)
//! writes an entry at a revision.
//!
//! [`ConnPolicy::l4_verdict`]: membrane_policy::ConnPolicy::l4_verdict

use crate::abi::{self, MbPolicyKey, MbPolicyValue};
use membrane_policy::{Identity, Proto, ResolvedPolicy, Verdict};

/// One end of a connection as the policy engine resolved it.
#[derive(Debug, Clone, Copy)]
pub struct PolicyEnd<'a> {
    /// The endpoint's security identity.
    pub identity: Identity,
    /// Its resolved policy.
    pub policy: &'a ResolvedPolicy,
}

/// One `mb_policy` entry: the L3/L4 verdict for TCP connections from one identity to
/// another on one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PolicyEntry {
    /// The connecting endpoint's identity; 0 is any source.
    pub src_identity: u32,
    /// The destination's identity.
    pub dst_identity: u32,
    /// The destination port; 0 is any port.
    pub dport: u16,
    /// Allowed (else refused at connect time and never spliced).
    pub allow: bool,
}

impl PolicyEntry {
    /// The map key (`struct mb_policy_key`); the protocol is always TCP.
    pub fn key(&self) -> MbPolicyKey {
        MbPolicyKey {
            src_identity: self.src_identity,
            dst_identity: self.dst_identity,
            dport: self.dport,
            proto: 6,
            pad: 0,
        }
    }

    /// The map value (`struct mb_policy_value`) for a decision computed at `revision`.
    pub fn value(&self, revision: u32) -> MbPolicyValue {
        MbPolicyValue {
            revision,
            verdict: if self.allow {
                abi::VERDICT_ALLOW
            } else {
                abi::VERDICT_DENY
            },
            pad: [0; 3],
        }
    }
}

/// The entry for TCP connections from `src` to `dst` on `dport`.
pub fn tcp_entry(src: PolicyEnd<'_>, dst: PolicyEnd<'_>, dport: u16) -> PolicyEntry {
    let egress = src
        .policy
        .egress
        .connection(dst.identity, Proto::Tcp, dport)
        .l4_verdict();
    let ingress = dst
        .policy
        .ingress
        .connection(src.identity, Proto::Tcp, dport)
        .l4_verdict();
    PolicyEntry {
        src_identity: src.identity.0,
        dst_identity: dst.identity.0,
        dport,
        allow: egress == Verdict::Allowed && ingress == Verdict::Allowed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use membrane_policy::labels::LabelSet;
    use membrane_policy::resolve::NamedPorts;
    use membrane_policy::trace::pod_labels;
    use membrane_policy::{parse_file, Endpoint, Engine};

    const L3_L4: &str = include_str!("../../manifests/examples/starwars/sw_l3_l4_policy.yaml");
    const L7: &str = include_str!("../../manifests/examples/starwars/sw_l3_l4_l7_policy.yaml");

    /// An engine with the Star Wars pods and the policies of `yaml`.
    fn starwars(yaml: &str) -> Engine {
        let mut engine = Engine::default();
        for o in parse_file("starwars.yaml", yaml).unwrap() {
            engine.apply_policy(o.result.unwrap());
        }
        for (name, labels) in [
            ("deathstar", "k8s:org=empire,k8s:class=deathstar"),
            ("tiefighter", "k8s:org=empire,k8s:class=tiefighter"),
            ("xwing", "k8s:org=alliance,k8s:class=xwing"),
        ] {
            let endpoint = Endpoint {
                labels: pod_labels(LabelSet::parse(labels).unwrap()),
                named_ports: NamedPorts::new(),
            };
            engine.upsert_endpoint(name, endpoint).unwrap();
        }
        engine
    }

    fn entry(engine: &Engine, src: &str, dst: &str, dport: u16) -> PolicyEntry {
        let (src_policy, dst_policy) =
            (engine.resolved(src).unwrap(), engine.resolved(dst).unwrap());
        tcp_entry(
            PolicyEnd {
                identity: engine.identity_of(src).unwrap(),
                policy: &src_policy,
            },
            PolicyEnd {
                identity: engine.identity_of(dst).unwrap(),
                policy: &dst_policy,
            },
            dport,
        )
    }

    #[test]
    fn the_l3_l4_policy_admits_only_the_empire_on_port_80() {
        let e = starwars(L3_L4);
        assert!(entry(&e, "tiefighter", "deathstar", 80).allow);
        assert!(!entry(&e, "xwing", "deathstar", 80).allow);
        assert!(!entry(&e, "tiefighter", "deathstar", 81).allow);
        // No policy selects the ships: nothing restricts connections to them.
        assert!(entry(&e, "deathstar", "xwing", 80).allow);
    }

    #[test]
    fn l7_rules_are_left_to_the_proxy() {
        let e = starwars(L7);
        let t = entry(&e, "tiefighter", "deathstar", 80);
        assert!(t.allow);
        assert_eq!(t.src_identity, e.identity_of("tiefighter").unwrap().0);
        assert_eq!(t.dst_identity, e.identity_of("deathstar").unwrap().0);
        assert!(!entry(&e, "xwing", "deathstar", 80).allow);
    }

    #[test]
    fn entries_encode_as_the_kernel_reads_them() {
        let allow = PolicyEntry {
            src_identity: 0,
            dst_identity: 300,
            dport: 80,
            allow: true,
        };
        let k = allow.key();
        assert_eq!(
            (k.src_identity, k.dst_identity, k.dport, k.proto),
            (0, 300, 80, 6)
        );
        let v = allow.value(7);
        assert_eq!((v.revision, v.verdict), (7, abi::VERDICT_ALLOW));
        let deny = PolicyEntry {
            allow: false,
            ..allow
        };
        assert_eq!(deny.value(7).verdict, abi::VERDICT_DENY);
    }
}
