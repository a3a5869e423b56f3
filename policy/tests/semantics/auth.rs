//! `authentication.mode`: Cilium drops traffic an allow rule admits only for
//! mutually authenticated peers until their agents have authenticated each other, and
//! the requirement sticks to the (peer, port) whatever other rules allow. membrane
//! performs no mutual authentication, so such traffic is denied, with the reason said.

use super::*;

const AUTH_TIEFIGHTER: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: auth-tiefighter}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingress:
  - fromEndpoints: [{matchLabels: {class: tiefighter}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
    authentication: {mode: required}
"#;

const AUTH_DISABLED: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: auth-disabled}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingress:
  - fromEndpoints: [{matchLabels: {class: tiefighter}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
    authentication: {mode: disabled}
"#;

#[test]
fn a_rule_that_requires_mutual_authentication_denies_what_it_covers() {
    let p = policies(&[AUTH_TIEFIGHTER]);
    let r = run(&p, &flow(TIEFIGHTER, DEATHSTAR, 80));
    check(
        "required",
        &r,
        "denied",
        "default/auth-tiefighter spec.ingress[0]",
    );
    assert!(
        r.explanation.contains("mutually authenticated") && r.explanation.contains("fail closed"),
        "{}",
        r.explanation
    );
    // Not a peer of the rule: default deny, as without the requirement.
    check(
        "other peer",
        &run(&p, &flow(XWING, DEATHSTAR, 80)),
        "denied",
        "",
    );
    // `disabled` is no requirement.
    check(
        "disabled",
        &run(
            &policies(&[AUTH_DISABLED]),
            &flow(TIEFIGHTER, DEATHSTAR, 80),
        ),
        "allowed",
        "default/auth-disabled spec.ingress[0]",
    );
}

#[test]
fn the_requirement_sticks_to_the_peer_and_port_whatever_else_allows() {
    // An L7 policy and an allow of everyone on 80 would admit the tiefighter; the
    // requirement on (tiefighter, 80) still decides, also for its HTTP requests.
    let p = policies(&[SW_L7, ALLOW_ALL_80, AUTH_TIEFIGHTER]);
    let mut f = flow(TIEFIGHTER, DEATHSTAR, 80);
    f.http = Some(("POST", "/v1/request-landing"));
    check(
        "sticky",
        &run(&p, &f),
        "denied",
        "default/auth-tiefighter spec.ingress[0]",
    );
    // Others keep what the other rules give them.
    check(
        "xwing",
        &run(&p, &flow(XWING, DEATHSTAR, 80)),
        "allowed",
        "default/allow-all spec.ingress[0]",
    );
}
