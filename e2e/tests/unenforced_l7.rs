//! The control plane's translation (`membrane-xds`) decoded by the sidecar
//! (`membrane-proxy`): what one sends, the other enforces as the policy says.

use std::net::IpAddr;

use membrane_proxy::policy::{Decision, Direction};

/// The control plane's translation decoded by the proxy, end to end: Kafka rules on a
/// port reach the proxy as a rule that allows nothing (fail closed by default), and as an
/// L4 allow only when membrane-xds runs with `l4-only`. User regexes arrive anchored and
/// decide as the engine does.
#[test]
fn xds_translation_decoded_by_the_proxy_fails_closed() {
    use membrane_api::proto::{NetworkPolicy, NetworkPolicyHosts};
    use membrane_api::type_url::{NETWORK_POLICY, NETWORK_POLICY_HOSTS};
    use membrane_policy::UnenforcedL7Mode;
    use membrane_proxy::policy::{npds, NoSecrets, RequestView};
    use membrane_xds::translate::Translator;

    let text = r#"
apiVersion: v1
kind: Pod
metadata: {name: kafka-1, namespace: default, labels: {app: kafka}}
status: {podIP: 10.0.0.5}
---
apiVersion: v1
kind: Pod
metadata: {name: outpost, namespace: default, labels: {app: empire-outpost}}
status: {podIP: 10.0.0.6}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: rule2, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: kafka}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: empire-outpost}}]
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        kafka: [{role: consume, topic: empire-announce}]
  - fromEndpoints: [{matchLabels: {app: empire-outpost}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: "/public|/v1/.*"}]
"#;
    let state = membrane_xds::source::dir::parse("cluster.yaml", text)
        .unwrap()
        .state;
    let mut t = Translator::new();
    let outpost: IpAddr = "10.0.0.6".parse().unwrap();
    for (mode, allowed) in [
        (UnenforcedL7Mode::FailClosed, false),
        (UnenforcedL7Mode::L4Only, true),
    ] {
        t.set_unenforced_l7(mode);
        let out = t.translate(&state);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        let shared = &out.snapshots[membrane_xds::node::SHARED_KEY];
        let nps: Vec<NetworkPolicy> = shared
            .resources(NETWORK_POLICY)
            .unwrap()
            .items
            .values()
            .map(|r| r.decode().unwrap())
            .collect();
        let hosts: Vec<NetworkPolicyHosts> = shared
            .resources(NETWORK_POLICY_HOSTS)
            .unwrap()
            .items
            .values()
            .map(|r| r.decode().unwrap())
            .collect();
        let e = npds::build(
            "10.0.0.5".parse().unwrap(),
            &nps,
            &hosts,
            serde_json::json!({}),
        )
        .expect("the proxy accepts what membrane-xds sends");
        let c = e
            .check_l4(outpost, Direction::Ingress, 9092)
            .expect("no HTTP rules on 9092");
        match (&c.decision, allowed) {
            (Decision::Deny { decided_by }, false) => assert!(
                decided_by.contains("default/rule2 spec.ingress[0]")
                    && decided_by.contains("kafka rules are not enforced by membrane"),
                "{decided_by}"
            ),
            (Decision::Allow { .. }, true) => {}
            other => panic!("{mode}: {other:?}"),
        }
        let headers = http::HeaderMap::new();
        let get = |path: &str| {
            let req = RequestView {
                method: "GET",
                path,
                host: None,
                headers: &headers,
                sni: None,
                peer_id: None,
                secrets: &NoSecrets,
            };
            matches!(
                e.check(outpost, Direction::Ingress, 80, &req).decision,
                Decision::Allow { .. }
            )
        };
        assert!(get("/public") && get("/v1/x"));
        assert!(!get("/admin/public") && !get("/public/admin") && !get("/admin"));
    }
}
