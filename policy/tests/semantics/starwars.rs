//! The Star Wars example policies (`manifests/examples/starwars`), step by step, and egress
//! by CIDR with an exception.

use super::*;

#[test]
fn star_wars() {
    let none = policies(&[]);
    let l3 = policies(&[SW_L3L4]);
    let l7 = policies(&[SW_L7]);
    let post = Flow {
        http: Some(("POST", "/v1/request-landing")),
        ..flow(TIEFIGHTER, DEATHSTAR, 80)
    };
    let put = Flow {
        http: Some(("PUT", "/v1/exhaust-port")),
        ..flow(TIEFIGHTER, DEATHSTAR, 80)
    };
    let xwing_post = Flow {
        http: Some(("POST", "/v1/request-landing")),
        ..flow(XWING, DEATHSTAR, 80)
    };
    let cases: Vec<Case> = vec![
        (
            "no policy: tiefighter lands",
            &none,
            flow(TIEFIGHTER, DEATHSTAR, 80),
            "allowed",
            "",
        ),
        (
            "no policy: xwing lands",
            &none,
            flow(XWING, DEATHSTAR, 80),
            "allowed",
            "",
        ),
        (
            "L3/L4: tiefighter allowed",
            &l3,
            flow(TIEFIGHTER, DEATHSTAR, 80),
            "allowed",
            "default/rule1 spec.ingress[0]",
        ),
        (
            "L3/L4: xwing denied",
            &l3,
            flow(XWING, DEATHSTAR, 80),
            "denied",
            "",
        ),
        (
            "L3/L4: other port denied",
            &l3,
            flow(TIEFIGHTER, DEATHSTAR, 81),
            "denied",
            "",
        ),
        (
            "L3/L4: UDP 80 denied",
            &l3,
            Flow {
                proto: Proto::Udp,
                ..flow(TIEFIGHTER, DEATHSTAR, 80)
            },
            "denied",
            "",
        ),
        (
            "L3/L4: any HTTP passes",
            &l3,
            Flow {
                http: Some(("PUT", "/v1/exhaust-port")),
                ..flow(TIEFIGHTER, DEATHSTAR, 80)
            },
            "allowed",
            "default/rule1 spec.ingress[0]",
        ),
        (
            "L3/L4: egress of the deathstar is not under policy",
            &l3,
            flow(DEATHSTAR, XWING, 80),
            "allowed",
            "",
        ),
        (
            "L7: landing request allowed",
            &l7,
            post,
            "allowed",
            "default/rule1 spec.ingress[0]",
        ),
        (
            "L7: exhaust port denied",
            &l7,
            put,
            "denied",
            "default/rule1 spec.ingress[0]",
        ),
        (
            "L7: xwing still dropped at L3",
            &l7,
            xwing_post,
            "denied",
            "",
        ),
        (
            "L7: path regex matches whole path only",
            &l7,
            Flow {
                http: Some(("POST", "/v1/request-landing/../exhaust-port")),
                ..flow(TIEFIGHTER, DEATHSTAR, 80)
            },
            "denied",
            "default/rule1 spec.ingress[0]",
        ),
    ];
    // Labels without a source are `any:` labels and match `k8s:` selectors.
    check(
        "bare labels",
        &run(
            &l3,
            &flow(
                "org=empire,class=tiefighter",
                "org=empire,class=deathstar",
                80,
            ),
        ),
        "allowed",
        "default/rule1 spec.ingress[0]",
    );
    for (name, p, f, v, d) in cases {
        check(name, &run(p, &f), v, d);
    }
    let r = run(
        &l7,
        &Flow {
            http: Some(("PUT", "/v1/exhaust-port")),
            ..flow(TIEFIGHTER, DEATHSTAR, 80)
        },
    );
    let d = r.decided_by.unwrap();
    assert_eq!(
        (d.kind.as_str(), d.rule_index, d.direction.as_str()),
        ("CiliumNetworkPolicy", 0, "ingress")
    );
}

#[test]
fn cidr_with_except() {
    let p = policies(&[SW_CIDR]);
    let world = "reserved:world";
    let to = |ip: &'static str, port| Flow {
        dst_ip: Some(ip),
        ..flow(XWING, world, port)
    };
    check(
        "inside cidr",
        &run(&p, &to("10.1.2.3", 443)),
        "allowed",
        "default/xwing-egress spec.egress[0]",
    );
    check(
        "edge of cidr",
        &run(&p, &to("10.255.255.255", 443)),
        "allowed",
        "default/xwing-egress spec.egress[0]",
    );
    check("in except", &run(&p, &to("10.96.0.1", 443)), "denied", "");
    check(
        "end of except",
        &run(&p, &to("10.111.255.255", 443)),
        "denied",
        "",
    );
    check(
        "after except",
        &run(&p, &to("10.112.0.1", 443)),
        "allowed",
        "default/xwing-egress spec.egress[0]",
    );
    check(
        "outside cidr",
        &run(&p, &to("192.168.1.1", 443)),
        "denied",
        "",
    );
    check("wrong port", &run(&p, &to("10.1.2.3", 80)), "denied", "");
    // A pod's address is its pod identity, never a CIDR identity.
    check(
        "pods are not selected by CIDR",
        &run(&p, &flow(XWING, DEATHSTAR, 443)),
        "denied",
        "",
    );
}
