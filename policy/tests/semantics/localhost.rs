//! Cilium's `allow-localhost`: the node's own traffic (`reserved:host`) reaches a local
//! endpoint's ingress without a rule (`auto`, the default, and `always`), or only through
//! rules (`policy`); where a rule naming the host covers the port, that rule decides, as
//! its port-specific entry wins over Cilium's L3-only host entry.

use super::*;

const HOST: &str = "reserved:host";

/// Deathstar ingress: HTTP `GET /healthz` on 80 for the host, everything on 443 for the
/// host with serverName `probe.example`, TCP 9000 denied to everyone (`all`).
const HOST_RULES: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: host-rules}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingress:
  - fromEntities: [host]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: GET, path: /healthz}]}
  - fromEntities: [host]
    toPorts:
    - ports: [{port: "443", protocol: TCP}]
      serverNames: [probe.example]
  ingressDeny:
  - fromEntities: [all]
    toPorts: [{ports: [{port: "9000", protocol: TCP}]}]
"#;

const DENY_HOST: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-host}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingressDeny:
  - fromEntities: [host]
"#;

fn with(setting: AllowLocalhost, f: Flow<'_>) -> Flow<'_> {
    Flow {
        allow_localhost: setting,
        ..f
    }
}

#[test]
fn the_setting_parses_as_cilium_spells_it() {
    for (text, want) in [
        ("auto", AllowLocalhost::Auto),
        ("always", AllowLocalhost::Always),
        ("policy", AllowLocalhost::Policy),
    ] {
        let got: AllowLocalhost = text.parse().unwrap();
        assert_eq!(got, want);
        assert_eq!(got.to_string(), text);
    }
    let err = "never".parse::<AllowLocalhost>().unwrap_err();
    assert!(
        err.contains("\"never\"") && err.contains("auto, always or policy"),
        "{err}"
    );
    assert_eq!(AllowLocalhost::default(), AllowLocalhost::Auto);
}

#[test]
fn the_host_reaches_an_endpoint_whose_rules_do_not_name_it() {
    // The Star Wars L3/L4 policy admits tiefighters on 80 only.
    let p = policies(&[SW_L3L4]);
    for setting in [AllowLocalhost::Auto, AllowLocalhost::Always] {
        for port in [80, 22, 15021] {
            let r = run(&p, &with(setting, flow(HOST, DEATHSTAR, port)));
            let name = format!("{setting} port {port}");
            check(&name, &r, "allowed", "");
            assert_eq!(r.decided_by_setting, Some("allow-localhost"), "{name}");
            assert!(
                r.explanation.contains("allowed by allow-localhost"),
                "{name}: {}",
                r.explanation
            );
        }
    }
    // Not a blanket allow: other peers are still denied, the remote nodes included.
    check("xwing", &run(&p, &flow(XWING, DEATHSTAR, 80)), "denied", "");
    check(
        "remote node",
        &run(&p, &flow("reserved:remote-node", DEATHSTAR, 80)),
        "denied",
        "",
    );
}

#[test]
fn policy_mode_requires_a_rule() {
    let p = policies(&[SW_L3L4]);
    let r = run(&p, &with(AllowLocalhost::Policy, flow(HOST, DEATHSTAR, 80)));
    check("no rule names the host", &r, "denied", "");
    assert_eq!(r.decided_by_setting, None);
    let host_allowed = policies(&[
        SW_L3L4,
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: probes}\nspec:\n  endpointSelector: {matchLabels: {class: deathstar}}\n  ingress:\n  - fromEntities: [host]\n    toPorts: [{ports: [{port: \"8080\", protocol: TCP}]}]\n",
    ]);
    check(
        "a rule names the host",
        &run(
            &host_allowed,
            &with(AllowLocalhost::Policy, flow(HOST, DEATHSTAR, 8080)),
        ),
        "allowed",
        "default/probes spec.ingress[0]",
    );
    check(
        "only on its port",
        &run(
            &host_allowed,
            &with(AllowLocalhost::Policy, flow(HOST, DEATHSTAR, 8081)),
        ),
        "denied",
        "",
    );
}

#[test]
fn a_deny_rule_naming_the_host_wins() {
    let p = policies(&[SW_L3L4, DENY_HOST]);
    for setting in [AllowLocalhost::Auto, AllowLocalhost::Always] {
        let r = run(&p, &with(setting, flow(HOST, DEATHSTAR, 80)));
        check(
            &format!("{setting}"),
            &r,
            "denied",
            "default/deny-host spec.ingressDeny[0]",
        );
        assert_eq!(r.decided_by_setting, None);
    }
    // A deny of everyone on one port takes the host's that port only.
    let p = policies(&[HOST_RULES]);
    check(
        "denied port",
        &run(&p, &flow(HOST, DEATHSTAR, 9000)),
        "denied",
        "default/host-rules spec.ingressDeny[0]",
    );
    check(
        "other port",
        &run(&p, &flow(HOST, DEATHSTAR, 9001)),
        "allowed",
        "",
    );
}

#[test]
fn rules_naming_the_host_on_a_port_decide_there() {
    let p = policies(&[HOST_RULES]);
    let http = |m, path| Flow {
        http: Some((m, path)),
        ..flow(HOST, DEATHSTAR, 80)
    };
    check(
        "its HTTP rule admits the probe",
        &run(&p, &http("GET", "/healthz")),
        "allowed",
        "default/host-rules spec.ingress[0]",
    );
    check(
        "and only the probe",
        &run(&p, &http("POST", "/healthz")),
        "denied",
        "default/host-rules spec.ingress[0]",
    );
    check(
        "serverNames apply to the host",
        &run(&p, &flow(HOST, DEATHSTAR, 443)),
        "denied",
        "",
    );
    check(
        "with the name",
        &run(
            &p,
            &Flow {
                sni: Some("probe.example"),
                ..flow(HOST, DEATHSTAR, 443)
            },
        ),
        "allowed",
        "default/host-rules spec.ingress[1]",
    );
    // HTTP rules for other peers do not touch the host: the Star Wars L7 policy's.
    let l7 = policies(&[SW_L7]);
    let r = run(
        &l7,
        &Flow {
            http: Some(("POST", "/v1/exhaust-port")),
            ..flow(HOST, DEATHSTAR, 80)
        },
    );
    check("L7 rules of others", &r, "allowed", "");
    assert_eq!(r.decided_by_setting, Some("allow-localhost"));
}

#[test]
fn only_ingress_of_endpoints_under_policy() {
    // Egress to the host is decided by the rules.
    let egress = policies(&["apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: eg}\nspec:\n  endpointSelector: {matchLabels: {class: deathstar}}\n  egress:\n  - toEndpoints: [{matchLabels: {class: tiefighter}}]\n"]);
    check(
        "egress to the host",
        &run(&egress, &flow(DEATHSTAR, HOST, 80)),
        "denied",
        "",
    );
    // Ingress under no policy is simply open.
    let r = run(&egress, &flow(HOST, DEATHSTAR, 80));
    check("no ingress policy", &r, "allowed", "");
    assert_eq!(r.decided_by_setting, None, "{}", r.explanation);
}
