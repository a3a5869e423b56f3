//! The socket hooks and the packet path decide alike: over seeded random policies
//! (identity-specific and any-identity rules, port ranges, ALLOW/DENY/REDIRECT, TCP and
//! UDP, both directions), every egress flow's connect() from inside the pod (cgroup
//! connect4: EPERM or not) and every ingress TCP connection from a peer address (sk_lookup:
//! reset or accepted) get the same verdict as a crafted first packet of the same flow
//! through `mb_from_container` / `mb_to_container` (test run: drop or pass), with the
//! same policy map and the same identities.
//! Privileged; cleans up on drop.

mod common;
mod tc_common;

use membrane_datapath::policy_map::{Direction, MapVerdict, PolicyRule};
use tc_common::{packet::*, TcNode, DROP, PASS};

const POD: &str = "10.1.0.10";
const POD_ID: u32 = 1000;
/// Destinations (all on a local interface of the pod's namespace, so an allowed TCP
/// connect is refused at once instead of timing out) and their identities.
const DESTS: [(&str, &str, u32); 5] = [
    ("10.2.0.1", "10.2.0.1/32", 2000),
    ("10.2.0.2", "10.2.0.2/32", 2001),
    ("10.2.0.3", "10.2.0.3/32", 2000),
    ("10.3.0.5", "10.3.0.0/24", 3000),
    ("10.4.0.1", "", 2), // no entry: world
];
const IDENTITIES: [u32; 5] = [0, 2000, 2001, 3000, 2];
const PORT_LO: u16 = 1000;
const PORT_HI: u16 = 1040;
/// The pod's listening ports the ingress flows go to.
const INGRESS_PORTS: (u16, u16) = (998, 1042);

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A random policy: per (direction, protocol, identity), maybe a few disjoint port
/// ranges inside PORT_LO..=PORT_HI, each with a random verdict.
fn policy(rng: &mut Rng) -> Vec<PolicyRule> {
    let mut rules = Vec::new();
    for (direction, proto) in [
        (Direction::Egress, TCP),
        (Direction::Egress, UDP),
        (Direction::Ingress, TCP),
    ] {
        for id in IDENTITIES {
            if rng.below(10) < 4 {
                continue;
            }
            let mut cuts: Vec<u16> = (0..2 * (1 + rng.below(3)))
                .map(|_| PORT_LO + rng.below(u64::from(PORT_HI - PORT_LO + 1)) as u16)
                .collect();
            cuts.sort_unstable();
            cuts.dedup();
            for pair in cuts.chunks(2) {
                let (lo, hi) = (pair[0], *pair.get(1).unwrap_or(&pair[0]));
                let verdict = match rng.below(3) {
                    0 => MapVerdict::Allow,
                    1 => MapVerdict::Deny,
                    _ => MapVerdict::Redirect,
                };
                rules.push(PolicyRule {
                    direction,
                    remote_identity: id,
                    proto,
                    ports: (lo, hi),
                    verdict,
                });
            }
        }
    }
    rules
}

#[test]
fn connect_and_packet_verdicts_agree_over_generated_policies() {
    let mut n = TcNode::new(true);
    n.add(1, POD_ID, &[POD], true);
    let mut addrs: Vec<String> = DESTS.iter().map(|(a, _, _)| format!("{a}/32")).collect();
    addrs.push(format!("{POD}/32"));
    let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    n.eps[0].env.add_pod_iface(&addrs);
    let pod_ns = std::path::Path::new("/run/netns").join(&n.eps[0].env.netns);
    n.eps[0].dp.attach_netns(&pod_ns).expect("attach sk_lookup");
    // Listeners on every ingress port: an accepted connection is sk_lookup's "allowed",
    // a reset its "denied". The kernel completes handshakes into the backlog.
    let _listeners: Vec<std::net::TcpListener> = tc_common::in_netns(&pod_ns, || {
        (INGRESS_PORTS.0..=INGRESS_PORTS.1)
            .map(|p| std::net::TcpListener::bind((POD, p)).expect("listen"))
            .collect()
    });
    let mut ipcache: Vec<(&str, u32)> = vec![("10.1.0.10/32", POD_ID)];
    ipcache.extend(
        DESTS
            .iter()
            .filter(|d| !d.1.is_empty())
            .map(|(_, p, id)| (*p, *id)),
    );
    n.ipcache(&ipcache);
    let ep = &n.eps[0];

    let mut sport = 10_000u16;
    let (mut allowed, mut denied) = (0, 0);
    let (mut in_allowed, mut in_denied) = (0, 0);
    for seed in 1..=8u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let rules = policy(&mut rng);
        ep.dp.sync_policy(&rules).expect("sync policy");
        let mut flows = Vec::new();
        for (dst, _, _) in DESTS {
            for proto in [TCP, UDP] {
                for _ in 0..8 {
                    let port = PORT_LO - 2 + rng.below(u64::from(PORT_HI - PORT_LO + 5)) as u16;
                    flows.push((dst, proto, port));
                }
            }
        }
        let targets: Vec<String> = flows
            .iter()
            .map(|(dst, proto, port)| {
                let p = if *proto == TCP { "tcp" } else { "udp" };
                format!("--target={p}:{dst}:{port}")
            })
            .collect();
        let mut args = vec!["probes", "--rounds", "1", "--secs", "60"];
        args.extend(targets.iter().map(String::as_str));
        let out = ep.env.client(&args);
        let letters: Vec<char> = out
            .split_whitespace()
            .nth(2)
            .unwrap_or_else(|| panic!("probes printed {out:?}"))
            .chars()
            .collect();
        assert_eq!(letters.len(), flows.len(), "{out}");
        for ((dst, proto, port), letter) in flows.iter().zip(letters) {
            assert!(
                matches!(letter, 'A' | 'R' | 'D'),
                "seed {seed}: {dst}:{port}/{proto}: probe {letter}"
            );
            let socket_denies = letter == 'D';
            sport += 1;
            let frame = if *proto == TCP {
                tcp(POD, dst, sport, *port, SYN)
            } else {
                udp(POD, dst, sport, *port)
            };
            let verdict = ep.send(&frame);
            assert!(verdict == PASS || verdict == DROP);
            assert_eq!(
                verdict == DROP,
                socket_denies,
                "seed {seed}: flow to {dst}:{port} proto {proto}: connect says {letter}, packet path says {verdict}; rules {rules:#?}"
            );
            if socket_denies {
                denied += 1;
            } else {
                allowed += 1;
            }
        }

        // Ingress: TCP connections from each peer address to the pod, outside the
        // cgroup (so no connect4 decides them), each through sk_lookup.
        let mut inflows = Vec::new();
        for (src, _, _) in DESTS {
            for _ in 0..6 {
                let port = INGRESS_PORTS.0
                    + rng.below(u64::from(INGRESS_PORTS.1 - INGRESS_PORTS.0 + 1)) as u16;
                inflows.push((src, port));
            }
        }
        let targets: Vec<String> = inflows
            .iter()
            .map(|(src, port)| format!("--target=tcp:{POD}:{port}@{src}"))
            .collect();
        let mut args = vec!["probes", "--rounds", "1", "--secs", "60"];
        args.extend(targets.iter().map(String::as_str));
        let out = ep.env.client_outside_cgroup(&args);
        let letters: Vec<char> = out
            .split_whitespace()
            .nth(2)
            .unwrap_or_else(|| panic!("probes printed {out:?}"))
            .chars()
            .collect();
        assert_eq!(letters.len(), inflows.len(), "{out}");
        for ((src, port), letter) in inflows.iter().zip(letters) {
            assert!(
                matches!(letter, 'A' | 'R'),
                "seed {seed}: {src} -> :{port}: probe {letter}"
            );
            let socket_denies = letter == 'R';
            sport += 1;
            let verdict = ep.deliver(&tcp(src, POD, sport, *port, SYN));
            assert_eq!(
                verdict == DROP,
                socket_denies,
                "seed {seed}: ingress from {src} to port {port}: sk_lookup says {letter}, packet path says {verdict}; rules {rules:#?}"
            );
            if socket_denies {
                in_denied += 1;
            } else {
                in_allowed += 1;
            }
        }
    }
    // The generated policies exercise both outcomes, plenty of each.
    assert!(
        allowed > 50 && denied > 50,
        "allowed {allowed}, denied {denied}"
    );
    assert!(
        in_allowed > 20 && in_denied > 20,
        "ingress: allowed {in_allowed}, denied {in_denied}"
    );
}
