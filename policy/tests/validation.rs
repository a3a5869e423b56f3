//! Table-driven tests of validation: what Cilium (with its CRDs) rejects is rejected, with
//! the field path and a message saying what was found and what was expected.

use membrane_policy::load::parse_file;

fn errors(spec_yaml: &str, kind: &str) -> Vec<String> {
    let text =
        format!("apiVersion: cilium.io/v2\nkind: {kind}\nmetadata: {{name: p}}\n{spec_yaml}");
    let objs = parse_file("t.yaml", &text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(objs.len(), 1);
    match &objs[0].result {
        Ok(_) => vec![],
        Err(es) => es.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn rejections_name_the_field() {
    let cnp = "CiliumNetworkPolicy";
    let ccnp = "CiliumClusterwideNetworkPolicy";
    // (spec, kind, expected substring of the first error)
    let table: &[(&str, &str, &str)] = &[
        ("spec: {ingress: [{}]}", cnp, "spec: one of endpointSelector or nodeSelector is required"),
        ("spec: {endpointSelector: {}, nodeSelector: {}}", ccnp, "spec: endpointSelector and nodeSelector are mutually exclusive"),
        ("spec: {nodeSelector: {}}", cnp, "spec.nodeSelector: nodeSelector is only allowed in a CiliumClusterwideNetworkPolicy"),
        ("metadata2: {}\nspec: {endpointSelector: {}}", cnp, "metadata2: unknown field `metadata2`"),
        ("spec: {endpointSelector: {matchLabel: {a: b}}}", cnp, "spec.endpointSelector.matchLabel: unknown field `matchLabel`"),
        (
            "spec: {endpointSelector: {matchExpressions: [{key: a, operator: in, values: [b]}]}}",
            cnp,
            "spec.endpointSelector: matchExpressions[0].operator: \"in\" is not a valid label selector operator",
        ),
        ("spec: {endpointSelector: {matchExpressions: [{key: a, operator: In}]}}", cnp, "must be non-empty for In and NotIn"),
        ("spec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: \"70000\"}]}]}]}", cnp, "spec.ingress[0].toPorts[0].ports[0].port: 70000 is not a port number (0-65535)"),
        ("spec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: \"ht_tp\"}]}]}]}", cnp, "spec.ingress[0].toPorts[0].ports[0].port: \"ht_tp\" is not a port number or a port name"),
        ("spec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: 80}]}]}]}", cnp, "spec.ingress[0].toPorts[0].ports[0].port: found a number"),
        ("spec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: \"80\", endPort: 79}]}]}]}", cnp, "spec.ingress[0].toPorts[0].ports[0].endPort: 79 is not a valid end of a range starting at 80"),
        ("spec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: \"80\", protocol: tcp}]}]}]}", cnp, "spec.ingress[0].toPorts[0].ports[0].protocol: \"tcp\" is not one of TCP, UDP, SCTP, ANY"),
        (
            "spec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: \"80\", protocol: UDP}], rules: {http: [{}]}}]}]}",
            cnp,
            "spec.ingress[0].toPorts[0].ports[0].protocol: L7 rules apply only to TCP (found UDP)",
        ),
        (
            "spec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: \"80\"}], rules: {http: [{}]}}]}]}",
            cnp,
            "L7 rules apply only to TCP (found ANY)",
        ),
        (
            "spec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: \"0\", protocol: TCP}], rules: {http: [{}]}}]}]}",
            cnp,
            "spec.ingress[0].toPorts[0].rules: L7 rules cannot be used when a port is 0",
        ),
        (
            "spec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: \"80\", protocol: TCP}], rules: {http: [{}], kafka: [{}]}}]}]}",
            cnp,
            "spec.ingress[0].toPorts[0].rules: one L7 protocol per port rule: found http and kafka",
        ),
        (
            "spec: {endpointSelector: {}, ingressDeny: [{toPorts: [{ports: [{port: \"80\"}], rules: {http: [{}]}}]}]}",
            cnp,
            "spec.ingressDeny[0].toPorts[0].rules: L7 rules are not allowed in deny rules",
        ),
        (
            "spec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: \"80\", protocol: TCP}], rules: {http: [{path: \"/v1/(\"}]}}]}]}",
            cnp,
            "spec.ingress[0].toPorts[0].rules.http[0].path: \"/v1/(\" is not a valid RE2 regular expression",
        ),
        (
            "spec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: \"53\", protocol: UDP}], rules: {dns: [{matchName: a.com}]}}]}]}",
            cnp,
            "spec.ingress[0].toPorts[0].rules.dns: DNS rules are not allowed on ingress",
        ),
        ("spec: {endpointSelector: {}, egress: [{toCIDR: [\"10.0.0.0/33\"]}]}", cnp, "spec.egress[0].toCIDR[0]: \"10.0.0.0/33\" is not a CIDR prefix"),
        (
            "spec: {endpointSelector: {}, egress: [{toCIDRSet: [{cidr: 10.0.0.0/8, except: [192.168.0.0/16]}]}]}",
            cnp,
            "spec.egress[0].toCIDRSet[0].except[0]: \"192.168.0.0/16\" is not inside the rule's cidr \"10.0.0.0/8\"",
        ),
        ("spec: {endpointSelector: {}, egress: [{toCIDRSet: [{cidr: 10.0.0.1}]}]}", cnp, "spec.egress[0].toCIDRSet[0].cidr: \"10.0.0.1\" is not a CIDR prefix"),
        (
            "spec: {endpointSelector: {}, egress: [{toEndpoints: [{}], toEntities: [world]}]}",
            cnp,
            "spec.egress[0]: combining toEndpoints and toEntities in one rule is not supported",
        ),
        ("spec: {endpointSelector: {}, ingress: [{fromEntities: [galaxy]}]}", cnp, "spec.ingress[0].fromEntities[0]: \"galaxy\" is not an entity"),
        (
            "spec: {endpointSelector: {}, ingress: [{icmps: [{fields: [{type: 8}]}], toPorts: [{ports: [{port: \"80\"}]}]}]}",
            cnp,
            "spec.ingress[0]: icmps may only be present without toPorts",
        ),
        ("spec: {endpointSelector: {}, ingress: [{icmps: [{fields: [{type: Ping}]}]}]}", cnp, "spec.ingress[0].icmps[0].fields[0].type: \"Ping\" is not an ICMP type name or number"),
        (
            "spec: {endpointSelector: {}, egress: [{toServices: [{k8sService: {serviceName: a}}], toPorts: [{ports: [{port: \"80\"}]}]}]}",
            cnp,
            "spec.egress[0]: combining toServices and toPorts is not supported",
        ),
        ("spec: {endpointSelector: {}, egress: [{toFQDNs: [{matchName: a.com, matchPattern: \"*.a.com\"}]}]}", cnp, "spec.egress[0].toFQDNs[0]: matchName and matchPattern are mutually exclusive"),
        (
            "spec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: \"80\", protocol: TCP}], listener: {name: l, envoyConfig: {name: e}}}]}]}",
            cnp,
            "spec.ingress[0].toPorts[0].listener: listener \"l\" is not allowed on ingress",
        ),
        (
            "spec: {nodeSelector: {}, ingress: [{toPorts: [{ports: [{port: \"80\", protocol: TCP}], rules: {http: [{}]}}]}]}",
            ccnp,
            "spec.ingress[0].toPorts[0].rules: host policies (nodeSelector) do not support L7 rules",
        ),
        ("specs: []", cnp, "spec: the policy has no rules: set spec or specs"),
        ("spec: {endpointSelector: {}, ingress: [{authentication: {mode: maybe}}]}", cnp, "spec.ingress[0].authentication.mode: \"maybe\" is not one of disabled, required, test-always-fail"),
    ];
    for (spec, kind, want) in table {
        let errs = errors(spec, kind);
        assert!(
            errs.iter().any(|e| e.contains(want)),
            "{spec}\nwanted: {want}\ngot: {errs:?}"
        );
    }
}

#[test]
fn ports_limit_is_forty() {
    let ports: Vec<String> = (1..=41).map(|p| format!("{{port: \"{p}\"}}")).collect();
    let spec = format!(
        "spec: {{endpointSelector: {{}}, ingress: [{{toPorts: [{{ports: [{}]}}]}}]}}",
        ports.join(",")
    );
    let errs = errors(&spec, "CiliumNetworkPolicy");
    assert!(
        errs.iter().any(|e| e.contains("41 ports: at most 40")),
        "{errs:?}"
    );
    let ports: Vec<String> = (1..=40).map(|p| format!("{{port: \"{p}\"}}")).collect();
    let spec = format!(
        "spec: {{endpointSelector: {{}}, ingress: [{{toPorts: [{{ports: [{}]}}]}}]}}",
        ports.join(",")
    );
    assert!(errors(&spec, "CiliumNetworkPolicy").is_empty());
}

#[test]
fn accepted_forms() {
    let ok: &[&str] = &[
        "spec: {endpointSelector: {}}",
        "spec: {endpointSelector: {}, ingress: []}",
        "spec: {endpointSelector: {}, ingress: [{}]}",
        "specs: [{endpointSelector: {}}, {endpointSelector: {matchLabels: {a: b}}}]",
        "spec: {endpointSelector: {}, egress: [{toPorts: [{ports: [{port: \"53\", protocol: ANY}], rules: {dns: [{matchPattern: \"*\"}]}}]}]}",
        "spec: {endpointSelector: {}, ingress: [{fromCIDR: [10.0.0.1]}]}",
        "spec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: \"dns-tcp\", protocol: TCP}]}]}]}",
        "spec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: \"80\", protocol: TCP}], rules: {http: [{headerMatches: [{name: x, value: y, mismatch: ADD}]}]}}]}]}",
        "spec: {endpointSelector: {}, egress: [{toPorts: [{ports: [{port: \"9092\", protocol: TCP}], rules: {kafka: [{role: produce, topic: deathstar-plans}]}}]}]}",
        "spec: {endpointSelector: {}, enableDefaultDeny: {ingress: false, egress: true}, ingress: [{fromEntities: [world]}]}",
    ];
    for spec in ok {
        let errs = errors(spec, "CiliumNetworkPolicy");
        assert!(errs.is_empty(), "{spec}: {errs:?}");
    }
}

fn warnings(spec_yaml: &str) -> Vec<String> {
    let text = format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p}}\n{spec_yaml}"
    );
    let objs = parse_file("t.yaml", &text).unwrap_or_else(|e| panic!("{e}"));
    match &objs[0].result {
        Ok(p) => p.warnings.iter().map(|w| w.to_string()).collect(),
        Err(es) => panic!("{spec_yaml}: rejected: {es:?}"),
    }
}

/// A user regex is one group, anchored at both ends: a pattern that closes the group early
/// (`a)|(.*`) would otherwise make `^(?:a)|(.*)$`, which matches every value. Cilium (Go's
/// RE2) rejects such a pattern as unbalanced; so must we, for every regex field.
#[test]
fn regexes_are_one_anchored_group() {
    for field in ["method", "path", "host"] {
        let spec = format!(
            "spec: {{endpointSelector: {{}}, ingress: [{{toPorts: [{{ports: [{{port: \"80\", protocol: TCP}}], rules: {{http: [{{{field}: \"a)|(.*\"}}]}}}}]}}]}}"
        );
        let errs = errors(&spec, "CiliumNetworkPolicy");
        let want = format!(
            "spec.ingress[0].toPorts[0].rules.http[0].{field}: \"a)|(.*\" is not a valid RE2 regular expression"
        );
        assert!(
            errs.iter()
                .any(|e| e.contains(&want) && e.contains("unopened group")),
            "{field}: wanted {want:?} (unopened group)\ngot: {errs:?}"
        );
    }
    // Other ways of escaping the group are refused the same way.
    for bad in ["GET)|(", "(GET", "GET)(?:", "\\"] {
        let spec = format!(
            "spec: {{endpointSelector: {{}}, ingress: [{{toPorts: [{{ports: [{{port: \"80\", protocol: TCP}}], rules: {{http: [{{method: {bad:?}}}]}}}}]}}]}}"
        );
        let errs = errors(&spec, "CiliumNetworkPolicy");
        assert!(
            errs.iter()
                .any(|e| e.contains("http[0].method") && e.contains("not a valid RE2")),
            "{bad}: {errs:?}"
        );
    }
}

/// A regex whose compiled program is larger than the limit is refused, and the error names
/// the limit; patterns of real policies are far below it.
#[test]
fn regex_size_is_limited_and_the_limit_is_named() {
    let spec = "spec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: \"80\", protocol: TCP}], rules: {http: [{path: \"/.{100}\"}]}}]}]}";
    let errs = errors(spec, "CiliumNetworkPolicy");
    let limit = membrane_policy::regexp::SIZE_LIMIT;
    assert!(
        errs.iter().any(
            |e| e.contains("spec.ingress[0].toPorts[0].rules.http[0].path")
                && e.contains(&format!("compiled size limit of {limit} bytes"))
        ),
        "{errs:?}"
    );
    // Long literal paths, alternations of methods and classes still fit.
    let ok = "spec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: \"80\", protocol: TCP}], rules: {http: [{method: \"GET|POST|PUT|DELETE|PATCH|HEAD|OPTIONS\", path: \"/api/v[0-9]+/(users|groups|projects)/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}(/.*)?\"}]}}]}]}";
    assert!(errors(ok, "CiliumNetworkPolicy").is_empty());
}

/// A rule that requires mutual authentication is accepted with a warning: membrane denies
/// what it covers instead of authenticating.
#[test]
fn mutual_authentication_is_accepted_with_a_warning() {
    let spec = "spec: {endpointSelector: {}, ingress: [{fromEndpoints: [{}], authentication: {mode: required}}]}";
    let w = warnings(spec);
    assert!(
        w.iter().any(
            |w| w.contains("spec.ingress[0].authentication.mode: mutual authentication")
                && w.contains("denied (fail closed)")
        ),
        "{w:?}"
    );
    let none = "spec: {endpointSelector: {}, ingress: [{fromEndpoints: [{}], authentication: {mode: disabled}}]}";
    assert!(warnings(none).is_empty(), "{:?}", warnings(none));
}

/// Kafka, DNS and generic L7 rules are accepted (Cilium accepts them) but each says that
/// membrane does not enforce it and what happens instead.
#[test]
fn unenforced_l7_rules_are_accepted_with_a_warning() {
    let cases = [
        (
            "spec: {endpointSelector: {}, egress: [{toPorts: [{ports: [{port: \"9092\", protocol: TCP}], rules: {kafka: [{role: produce, topic: t}]}}]}]}",
            "spec.egress[0].toPorts[0].rules.kafka: Kafka rules are not enforced by membrane",
        ),
        (
            "spec: {endpointSelector: {}, egress: [{toPorts: [{ports: [{port: \"53\", protocol: ANY}], rules: {dns: [{matchPattern: \"*\"}]}}]}]}",
            "spec.egress[0].toPorts[0].rules.dns: DNS rules are not enforced by membrane",
        ),
        (
            "spec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: \"6379\", protocol: TCP}], rules: {l7proto: redis, l7: [{cmd: get}]}}]}]}",
            "spec.ingress[0].toPorts[0].rules.l7proto: l7proto \"redis\" rules are not enforced by membrane",
        ),
    ];
    for (spec, want) in cases {
        let w = warnings(spec);
        assert!(
            w.iter()
                .any(|w| w.contains(want) && w.contains("denied (fail closed)")),
            "{spec}\nwanted: {want}\ngot: {w:?}"
        );
    }
}
