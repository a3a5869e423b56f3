//! Who a rule's peers are: deny over allow, L4 and L7 allows merged per peer, namespaces,
//! clusterwide policies, the host, entities, default deny.

use super::*;

#[test]
fn deny_beats_allow() {
    let p = policies(&[ALLOW_ALL_80, DENY_XWING]);
    check(
        "xwing denied by deny rule",
        &run(&p, &flow(XWING, DEATHSTAR, 80)),
        "denied",
        "default/deny-xwing spec.ingressDeny[0]",
    );
    check(
        "tiefighter allowed",
        &run(&p, &flow(TIEFIGHTER, DEATHSTAR, 80)),
        "allowed",
        "default/allow-all spec.ingress[0]",
    );
    // Deny rules alone put the endpoint into default deny, as in Cilium.
    let only_deny = policies(&[DENY_XWING]);
    check(
        "deny-only policy default-denies others",
        &run(&only_deny, &flow(TIEFIGHTER, DEATHSTAR, 80)),
        "denied",
        "",
    );
}

#[test]
fn l4_allow_and_l7_allow_merge_per_peer() {
    let put = |src| Flow {
        http: Some(("PUT", "/v1/exhaust-port")),
        ..flow(src, DEATHSTAR, 80)
    };
    // Same peer and port: the L4-only rule opens all HTTP.
    let merged = policies(&[SW_L7, L4_ONLY_TIE]);
    check(
        "L4+L7 same peer: all HTTP allowed",
        &run(&merged, &put(TIEFIGHTER)),
        "allowed",
        "default/l4-tie spec.ingress[0]",
    );
    // Another peer's L4-only rule does not open L7 for the tiefighter.
    let other = policies(&[SW_L7, L4_ONLY_XWING]);
    check(
        "L4 for another peer keeps L7",
        &run(&other, &put(TIEFIGHTER)),
        "denied",
        "default/rule1 spec.ingress[0]",
    );
    check(
        "that peer gets all HTTP",
        &run(&other, &put(XWING)),
        "allowed",
        "default/l4-xwing spec.ingress[0]",
    );
}

#[test]
fn namespaces_scope_namespaced_policies() {
    let p = policies(&[r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: same-ns, namespace: empire}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingress:
  - fromEndpoints: [{}]
"#]);
    let ds = "k8s:class=deathstar,k8s:io.kubernetes.pod.namespace=empire";
    let in_ns = "k8s:class=tiefighter,k8s:io.kubernetes.pod.namespace=empire";
    let other_ns = "k8s:class=tiefighter,k8s:io.kubernetes.pod.namespace=rebels";
    check(
        "same namespace allowed",
        &run(&p, &flow(in_ns, ds, 80)),
        "allowed",
        "empire/same-ns spec.ingress[0]",
    );
    check(
        "other namespace denied",
        &run(&p, &flow(other_ns, ds, 80)),
        "denied",
        "",
    );
    check(
        "world denied",
        &run(&p, &flow("reserved:world", ds, 80)),
        "denied",
        "",
    );
    // The policy does not select the same labels in another namespace.
    let ds_other = "k8s:class=deathstar,k8s:io.kubernetes.pod.namespace=default";
    check(
        "endpoint in other namespace unaffected",
        &run(&p, &flow("reserved:world", ds_other, 80)),
        "allowed",
        "",
    );

    let cross = policies(&[r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: cross, namespace: empire}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingress:
  - fromEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": rebels}}]
"#]);
    check(
        "explicit namespace selects it",
        &run(&cross, &flow(other_ns, ds, 80)),
        "allowed",
        "empire/cross spec.ingress[0]",
    );
    check(
        "and only it",
        &run(&cross, &flow(in_ns, ds, 80)),
        "denied",
        "",
    );
}

#[test]
fn clusterwide_peers_are_any_pod() {
    let p = policies(&[r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: ccnp}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingress:
  - fromEndpoints: [{}]
"#]);
    let ds = "k8s:class=deathstar,k8s:io.kubernetes.pod.namespace=empire";
    check(
        "pod of any namespace",
        &run(
            &p,
            &flow("k8s:a=b,k8s:io.kubernetes.pod.namespace=x", ds, 80),
        ),
        "allowed",
        "ccnp spec.ingress[0]",
    );
    check(
        "world is not a pod",
        &run(&p, &flow("reserved:world", ds, 80)),
        "denied",
        "",
    );
    // The selector leaves the host out; allow-localhost (tests in `localhost.rs`) would
    // let it in by its own default, so it is off here.
    check(
        "host is not a pod",
        &run(
            &p,
            &Flow {
                allow_localhost: AllowLocalhost::Policy,
                ..flow("reserved:host", ds, 80)
            },
        ),
        "denied",
        "",
    );
}

#[test]
fn host_is_policed_by_node_selectors_only() {
    let ccnp_all_pods = policies(&["apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: pods}\nspec:\n  endpointSelector: {}\n  ingress: [{}]\n"]);
    check(
        "endpointSelector {} leaves the host alone",
        &run(&ccnp_all_pods, &flow(XWING, "reserved:host", 22)),
        "allowed",
        "",
    );
    check(
        "but selects pods",
        &run(&ccnp_all_pods, &flow(XWING, DEATHSTAR, 22)),
        "denied",
        "",
    );
    let host = policies(&[r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: host-fw}
spec:
  nodeSelector: {}
  ingress:
  - fromEntities: [cluster]
    toPorts: [{ports: [{port: "22", protocol: TCP}]}]
"#]);
    check(
        "host policy allows the cluster",
        &run(&host, &flow(XWING, "reserved:host", 22)),
        "allowed",
        "host-fw spec.ingress[0]",
    );
    check(
        "host policy denies the world",
        &run(
            &host,
            &Flow {
                src_ip: Some("8.8.8.8"),
                ..flow("reserved:world", "reserved:host", 22)
            },
        ),
        "denied",
        "",
    );
    check(
        "host policy does not select pods",
        &run(&host, &flow("reserved:world", DEATHSTAR, 22)),
        "allowed",
        "",
    );
}

#[test]
fn entities() {
    let mk = |e: &str| {
        format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: ent}}\nspec:\n  endpointSelector: {{matchLabels: {{class: deathstar}}}}\n  ingress:\n  - fromEntities: [{e}]\n"
        )
    };
    let table: &[(&str, &str, Option<&str>, &str)] = &[
        ("world", "reserved:world", Some("8.8.8.8"), "allowed"),
        ("world", TIEFIGHTER, None, "denied"),
        ("cluster", TIEFIGHTER, None, "allowed"),
        ("cluster", "reserved:host", None, "allowed"),
        ("cluster", "reserved:remote-node", None, "allowed"),
        ("cluster", "reserved:world", Some("8.8.8.8"), "denied"),
        ("host", "reserved:host", None, "allowed"),
        ("host", "reserved:remote-node", None, "denied"),
        ("remote-node", "reserved:remote-node", None, "allowed"),
        ("kube-apiserver", "reserved:kube-apiserver", None, "allowed"),
        ("health", "reserved:health", None, "allowed"),
        ("all", "reserved:world", Some("1.2.3.4"), "allowed"),
        ("all", XWING, None, "allowed"),
        ("none", XWING, None, "denied"),
    ];
    for (entity, src, ip, want) in table {
        let p = policies(&[&mk(entity)]);
        let r = run(
            &p,
            &Flow {
                src_ip: *ip,
                ..flow(src, DEATHSTAR, 80)
            },
        );
        assert_eq!(
            r.verdict, *want,
            "entity {entity} from {src}\n{}",
            r.explanation
        );
    }
}

#[test]
fn default_deny_per_direction_and_enable_default_deny() {
    let ingress_only = policies(&[SW_L3L4]);
    check(
        "egress stays open",
        &run(&ingress_only, &flow(DEATHSTAR, "reserved:world", 443)),
        "allowed",
        "",
    );
    let empty_rule = policies(&["apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: deny-all}\nspec:\n  endpointSelector: {}\n  ingress:\n  - {}\n"]);
    check(
        "ingress: [{}] denies all",
        &run(&empty_rule, &flow(TIEFIGHTER, DEATHSTAR, 80)),
        "denied",
        "",
    );
    let empty_list = policies(&["apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: nothing}\nspec:\n  endpointSelector: {}\n  ingress: []\n"]);
    check(
        "ingress: [] enforces nothing",
        &run(&empty_list, &flow(TIEFIGHTER, DEATHSTAR, 80)),
        "allowed",
        "",
    );
    let no_dd = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: no-default-deny}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  enableDefaultDeny: {ingress: false}
  ingress:
  - fromEndpoints: [{matchLabels: {org: empire}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: GET}]}
"#;
    let p = policies(&[no_dd]);
    check(
        "unmatched peer allowed",
        &run(&p, &flow(XWING, DEATHSTAR, 9000)),
        "allowed",
        "",
    );
    let get = Flow {
        http: Some(("GET", "/")),
        ..flow(TIEFIGHTER, DEATHSTAR, 80)
    };
    let put = Flow {
        http: Some(("PUT", "/")),
        ..flow(TIEFIGHTER, DEATHSTAR, 80)
    };
    check(
        "L7 still enforced: GET",
        &run(&p, &get),
        "allowed",
        "default/no-default-deny spec.ingress[0]",
    );
    check(
        "L7 still enforced: PUT",
        &run(&p, &put),
        "denied",
        "default/no-default-deny spec.ingress[0]",
    );
    // A default-deny policy alongside wins.
    let both = policies(&[no_dd, SW_L3L4]);
    check(
        "another rule's default deny applies",
        &run(&both, &flow(XWING, DEATHSTAR, 9000)),
        "denied",
        "",
    );
}

#[test]
fn unresolvable_peers_are_called_out() {
    let p = policies(&[r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fqdn}
spec:
  endpointSelector: {matchLabels: {class: xwing}}
  egress:
  - toFQDNs: [{matchName: api.example.com}]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
"#]);
    let r = run(
        &p,
        &Flow {
            dst_ip: Some("93.184.216.34"),
            ..flow(XWING, "reserved:world", 443)
        },
    );
    assert_eq!(r.verdict, "denied");
    assert!(
        r.caveats
            .iter()
            .any(|c| c.contains("toFQDNs api.example.com")),
        "{:?}",
        r.caveats
    );
}
