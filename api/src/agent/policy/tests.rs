//! The entries of small, readable policies, written out (the property test in
//! `api/tests/agent_entries.rs` checks them against the engine at large).

use super::*;
use membrane_policy::resolve::Endpoint;
use membrane_policy::{AllowLocalhost, Engine, LabelSet};

fn labels(text: &str) -> LabelSet {
    LabelSet::parse(&format!(
        "{text},k8s:io.kubernetes.pod.namespace=default,k8s:io.cilium.k8s.policy.cluster=default"
    ))
    .expect("fixed labels parse")
}

/// The deathstar's resolved policy under `policy`, and the identities of the tiefighter
/// (`org=empire`), the xwing (`org=alliance`) and the deathstar itself (`org=empire` too).
/// The host is a peer like any other here (`--allow-localhost policy`): these tests pin
/// the rules' own entries; the host's are tested apart.
fn deathstar(policy: &str) -> (ResolvedPolicy, u32, u32, u32) {
    deathstar_with(policy, AllowLocalhost::Policy)
}

fn deathstar_with(policy: &str, setting: AllowLocalhost) -> (ResolvedPolicy, u32, u32, u32) {
    let mut engine = Engine::default();
    engine.set_allow_localhost(setting);
    for obj in membrane_policy::parse_file("p.yaml", policy).expect("parses") {
        engine.apply_policy(obj.result.expect("valid"));
    }
    let tie = engine
        .ensure_identity(&labels("k8s:org=empire,k8s:class=tiefighter"))
        .expect("identity")
        .0;
    let xwing = engine
        .ensure_identity(&labels("k8s:org=alliance,k8s:class=xwing"))
        .expect("identity")
        .0;
    let ep = Endpoint {
        labels: labels("k8s:org=empire,k8s:class=deathstar"),
        named_ports: NamedPorts::new(),
    };
    let (own, _) = engine
        .upsert_endpoint("default/deathstar", ep)
        .expect("endpoint");
    let p = engine.resolved("default/deathstar").expect("resolved");
    (ResolvedPolicy::clone(&p), tie.0, xwing.0, own.0)
}

fn entry(
    direction: Direction,
    remote: u32,
    protocol: u32,
    ports: (u32, u32),
    v: Verdict,
) -> PolicyEntry {
    PolicyEntry {
        direction: direction as i32,
        remote_identity: remote,
        protocol,
        port: ports.0,
        end_port: ports.1,
        verdict: v as i32,
    }
}

const HEAD: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: default}\nspec:\n  endpointSelector: {matchLabels: {class: deathstar}}\n";

#[test]
fn star_wars_l4_and_l7_policies_as_entries() {
    let none = NamedPorts::new();
    // L3/L4: only the empire lands, on TCP 80. Egress is not enforced.
    let (p, tie, _, own) = deathstar(&format!(
        "{HEAD}  ingress:\n  - fromEndpoints: [{{matchLabels: {{org: empire}}}}]\n    toPorts: [{{ports: [{{port: \"80\", protocol: TCP}}]}}]\n"
    ));
    let ingress = direction_entries(&p.ingress, Direction::Ingress, &none);
    let mut want = vec![
        entry(Direction::Ingress, tie, 6, (80, 80), Verdict::Allow),
        entry(Direction::Ingress, own, 6, (80, 80), Verdict::Allow),
    ];
    want.sort_by_key(|e| e.remote_identity);
    assert_eq!(ingress, want);
    let egress = direction_entries(&p.egress, Direction::Egress, &none);
    assert_eq!(
        egress,
        [6, 17, 132, 1, 58]
            .map(|proto| entry(Direction::Egress, 0, proto, (1, 65535), Verdict::Allow))
            .to_vec()
    );
    let ep = endpoint_policy(&p, &none, &none);
    assert!(ep.ingress_enforced && !ep.egress_enforced);
    assert_eq!(
        ep.ingress_selected_by,
        vec!["CiliumNetworkPolicy/default/p"]
    );
    assert_eq!(
        ep.entries.len(),
        7,
        "two ingress entries, five egress (ICMP and ICMPv6 too)"
    );

    // L7: the same peers, redirected to the sidecar.
    let (p, tie, _, own) = deathstar(&format!(
        "{HEAD}  ingress:\n  - fromEndpoints: [{{matchLabels: {{org: empire}}}}]\n    toPorts:\n    - ports: [{{port: \"80\", protocol: TCP}}]\n      rules: {{http: [{{method: POST, path: /v1/request-landing}}]}}\n"
    ));
    let ingress = direction_entries(&p.ingress, Direction::Ingress, &none);
    let mut want = vec![
        entry(Direction::Ingress, tie, 6, (80, 80), Verdict::Redirect),
        entry(Direction::Ingress, own, 6, (80, 80), Verdict::Redirect),
    ];
    want.sort_by_key(|e| e.remote_identity);
    assert_eq!(ingress, want);
}

#[test]
fn a_deny_carves_its_peer_out_of_an_allow_to_everyone() {
    let none = NamedPorts::new();
    // Everyone (a rule naming no peer: identities present and future) may reach
    // 8000-8090 over TCP, UDP and SCTP, except the alliance on TCP 8080.
    let (p, _, xwing, _) = deathstar(&format!(
        "{HEAD}  ingress:\n  - toPorts: [{{ports: [{{port: \"8000\", endPort: 8090, protocol: ANY}}]}}]\n  ingressDeny:\n  - fromEndpoints: [{{matchLabels: {{org: alliance}}}}]\n    toPorts: [{{ports: [{{port: \"8080\", protocol: TCP}}]}}]\n"
    ));
    let got = direction_entries(&p.ingress, Direction::Ingress, &none);
    let any = |proto| entry(Direction::Ingress, 0, proto, (8000, 8090), Verdict::Allow);
    assert_eq!(
        got,
        vec![
            any(6),
            entry(Direction::Ingress, xwing, 6, (8080, 8080), Verdict::Deny),
            any(17),
            any(132),
        ]
    );
}

#[test]
fn named_ports_resolve_on_the_side_the_direction_names() {
    // Egress to the peers' `http`, which only the cluster-wide map resolves.
    let (p, _, _, _) = deathstar(&format!(
        "{HEAD}  egress:\n  - toPorts: [{{ports: [{{port: http, protocol: TCP}}]}}]\n"
    ));
    let peers: NamedPorts = [("http".to_string(), [80, 8080].into())].into();
    let got = direction_entries(&p.egress, Direction::Egress, &peers);
    assert_eq!(
        got,
        vec![
            entry(Direction::Egress, 0, 6, (80, 80), Verdict::Allow),
            entry(Direction::Egress, 0, 6, (8080, 8080), Verdict::Allow),
        ]
    );
    // Unresolved, the name covers nothing: everything is denied (no entry).
    let got = direction_entries(&p.egress, Direction::Egress, &NamedPorts::new());
    assert_eq!(got, vec![]);
}

#[test]
fn the_host_gets_entries_of_its_own_under_allow_localhost() {
    let none = NamedPorts::new();
    let host = Identity::HOST.0;
    // The L3/L4 Star Wars policy: the host reaches every port of every protocol.
    let l3l4 = format!(
        "{HEAD}  ingress:\n  - fromEndpoints: [{{matchLabels: {{org: empire}}}}]\n    toPorts: [{{ports: [{{port: \"80\", protocol: TCP}}]}}]\n"
    );
    for setting in [AllowLocalhost::Auto, AllowLocalhost::Always] {
        let (p, tie, _, own) = deathstar_with(&l3l4, setting);
        let got = direction_entries(&p.ingress, Direction::Ingress, &none);
        let mut want = vec![
            entry(Direction::Ingress, tie, 6, (80, 80), Verdict::Allow),
            entry(Direction::Ingress, own, 6, (80, 80), Verdict::Allow),
        ];
        want.sort_by_key(|e| e.remote_identity);
        want.extend(
            [6, 17, 132, 1, 58]
                .map(|proto| entry(Direction::Ingress, host, proto, (1, 65535), Verdict::Allow)),
        );
        assert_eq!(got, want, "{setting}");
    }
    // HTTP rules naming the host send it to the sidecar on their port; the other ports
    // stay open to it.
    let (p, _, _, _) = deathstar_with(
        &format!(
            "{HEAD}  ingress:\n  - fromEntities: [host]\n    toPorts:\n    - ports: [{{port: \"80\", protocol: TCP}}]\n      rules: {{http: [{{method: GET, path: /healthz}}]}}\n"
        ),
        AllowLocalhost::Auto,
    );
    let got = direction_entries(&p.ingress, Direction::Ingress, &none);
    let h = |proto, ports, v| entry(Direction::Ingress, host, proto, ports, v);
    assert_eq!(
        got,
        vec![
            h(6, (1, 79), Verdict::Allow),
            h(6, (80, 80), Verdict::Redirect),
            h(6, (81, 65535), Verdict::Allow),
            h(17, (1, 65535), Verdict::Allow),
            h(132, (1, 65535), Verdict::Allow),
            h(1, (1, 65535), Verdict::Allow),
            h(58, (1, 65535), Verdict::Allow),
        ]
    );
    // A deny rule naming the host leaves it no entry: the lookup's default is DENY.
    let (p, _, _, _) = deathstar_with(
        &format!("{HEAD}  ingress: [{{}}]\n  ingressDeny:\n  - fromEntities: [host]\n"),
        AllowLocalhost::Always,
    );
    assert_eq!(
        direction_entries(&p.ingress, Direction::Ingress, &none),
        Vec::<PolicyEntry>::new()
    );
}
