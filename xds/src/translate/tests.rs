use super::*;
use crate::proto::NetworkPolicy;
use crate::resource::{LISTENER, NETWORK_POLICY, ROUTE};
use crate::source::dir::parse;
use envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter, HttpConnectionManager,
};
use prost::Message;

/// Cilium's Star Wars demo: deathstar, tiefighter, xwing and the L7 rule.
pub const STARWARS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: deathstar-1, namespace: default, labels: {org: empire, class: deathstar}}
spec: {containers: [{name: app, ports: [{containerPort: 80, name: http}]}]}
status: {podIP: 10.0.0.5}
---
apiVersion: v1
kind: Pod
metadata: {name: tiefighter, namespace: default, labels: {org: empire, class: tiefighter}}
status: {podIP: 10.0.0.6}
---
apiVersion: v1
kind: Pod
metadata: {name: xwing, namespace: default, labels: {org: alliance, class: xwing}}
status: {podIP: 10.0.0.7}
---
apiVersion: v1
kind: Service
metadata: {name: deathstar, namespace: default}
spec: {selector: {org: empire, class: deathstar}, ports: [{port: 80, targetPort: http}]}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: rule1, namespace: default}
spec:
  endpointSelector: {matchLabels: {org: empire, class: deathstar}}
  ingress:
  - fromEndpoints: [{matchLabels: {org: empire}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: POST, path: /v1/request-landing}]
"#;

#[test]
fn header_match_secrets_are_named_with_their_namespace() {
    // Everything in namespace `shop`: a secret reference without a namespace means the
    // policy's, which the proxy cannot know, so NPDS always carries NAMESPACE/NAME.
    let text = STARWARS.replace("namespace: default", "namespace: shop").replace(
            "http: [{method: POST, path: /v1/request-landing}]",
            "http: [{headerMatches: [{name: x-a, secret: {name: tok}}, {name: x-b, secret: {name: tok, namespace: vault}}, {name: x-c, value: v}]}]",
        );
    let state = parse("sw.yaml", &text).unwrap().state;
    let out = Translator::new().translate(&state);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let np: NetworkPolicy = out.snapshots[SHARED_KEY]
        .resources(NETWORK_POLICY)
        .unwrap()
        .items["10.0.0.5"]
        .decode()
        .unwrap();
    let Some(crate::proto::port_network_policy_rule::L7::HttpRules(http)) =
        &np.ingress_per_port_policies[0].rules[0].l7
    else {
        panic!("no http rules: {np:?}");
    };
    let secrets: Vec<(&str, &str)> = http.http_rules[0]
        .header_matches
        .iter()
        .map(|m| (m.name.as_str(), m.value_sds_secret.as_str()))
        .collect();
    assert_eq!(
        secrets,
        vec![("x-a", "shop/tok"), ("x-b", "vault/tok"), ("x-c", "")]
    );
}

#[test]
fn starwars_l7_policy_becomes_npds_nphds_and_rbac() {
    let state = parse("sw.yaml", STARWARS).unwrap().state;
    let mut t = Translator::new();
    let out = t.translate(&state);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let shared = &out.snapshots[SHARED_KEY];

    // NPHDS: each pod's identity maps to its IP.
    let hosts: BTreeMap<String, NetworkPolicyHosts> = shared
        .resources(NETWORK_POLICY_HOSTS)
        .unwrap()
        .items
        .iter()
        .map(|(k, r)| (k.clone(), r.decode().unwrap()))
        .collect();
    let id_of = |ip: &str| {
        hosts
            .values()
            .find(|h| h.host_addresses == vec![ip.to_string()])
            .map(|h| h.policy as u32)
            .unwrap_or_else(|| panic!("no identity for {ip}: {hosts:?}"))
    };
    let (tie, xwing, death) = (id_of("10.0.0.6"), id_of("10.0.0.7"), id_of("10.0.0.5"));
    assert!(tie >= 256 && xwing >= 256 && tie != xwing);

    // NPDS for the deathstar: port 80/TCP, empire identities, POST landing.
    let np: NetworkPolicy = shared.resources(NETWORK_POLICY).unwrap().items["10.0.0.5"]
        .decode()
        .unwrap();
    assert_eq!(np.endpoint_ips, vec!["10.0.0.5".to_string()]);
    // Beside them, allow-localhost: no rule names the host, so it is let in on every port
    // of both protocols (the sidecar sees the host allowed).
    let (localhost, ingress): (Vec<_>, Vec<_>) = np
        .ingress_per_port_policies
        .iter()
        .partition(|p| p.rules.iter().any(|r| r.name == "allow-localhost"));
    let localhost: Vec<_> = localhost
        .iter()
        .map(|p| {
            (
                p.port,
                p.end_port,
                p.protocol,
                &p.rules[0].remote_policies[..],
            )
        })
        .collect();
    assert_eq!(localhost, [(0, 0, 0, &[1][..]), (0, 0, 1, &[1][..])]);
    assert_eq!(ingress.len(), 1, "{ingress:?}");
    assert_eq!((ingress[0].port, ingress[0].protocol), (80, 0));
    let rule = &ingress[0].rules[0];
    let mut remotes = rule.remote_policies.clone();
    remotes.sort();
    let mut want = vec![tie, death];
    want.sort();
    assert_eq!(
        remotes, want,
        "org=empire selects deathstar and tiefighter, not xwing"
    );
    let Some(crate::proto::port_network_policy_rule::L7::HttpRules(http)) = &rule.l7 else {
        panic!("no http rules: {rule:?}");
    };
    let names: Vec<&str> = http.http_rules[0]
        .headers
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(names, vec![":method", ":path"]);
    // The xwing is not under policy for ingress: allow-all on port 0.
    let xw: NetworkPolicy = shared.resources(NETWORK_POLICY).unwrap().items["10.0.0.7"]
        .decode()
        .unwrap();
    assert!(xw
        .ingress_per_port_policies
        .iter()
        .all(|p| p.port == 0 && p.rules.is_empty()));

    // Sidecar snapshot: listener on the pod IP:80 with RBAC allowing the
    // tiefighter's address, not the xwing's.
    let side = &out.snapshots["sidecar/default/deathstar-1"];
    let l: Listener = side.resources(LISTENER).unwrap().items["inbound|80"]
        .decode()
        .unwrap();
    let Some(filter::ConfigType::TypedConfig(any)) = &l.filter_chains[0].filters[0].config_type
    else {
        panic!()
    };
    let hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
    let Some(http_filter::ConfigType::TypedConfig(rbac_any)) = &hcm.http_filters[0].config_type
    else {
        panic!()
    };
    let rbac = Rbac::decode(rbac_any.value.as_slice()).unwrap();
    let text = format!("{rbac:?}");
    assert!(
        text.contains("10.0.0.6") && text.contains("10.0.0.5"),
        "{text}"
    );
    assert!(!text.contains("10.0.0.7"), "{text}");
    assert!(
        text.contains("/v1/request-landing") && text.contains("POST"),
        "{text}"
    );
    assert!(side
        .resources(ROUTE)
        .unwrap()
        .items
        .contains_key("inbound|80"));
    // The service's EDS cluster points at the deathstar's named port.
    let cla: envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment =
        shared.resources(crate::resource::ENDPOINT).unwrap().items
            ["outbound|80||deathstar.default.svc.cluster.local"]
            .decode()
            .unwrap();
    assert_eq!(cla.endpoints[0].lb_endpoints.len(), 1);

    // The references the translator declares are exactly what the
    // encoded resources say (the consistency check trusts them).
    for snap in out.snapshots.values() {
        for t in [LISTENER, ROUTE, crate::resource::CLUSTER] {
            for r in snap
                .resources(t)
                .map(|s| s.items.values())
                .into_iter()
                .flatten()
            {
                let declared = r.refs.as_ref().expect("translator declares refs");
                let decoded = crate::snapshot::decoded_refs(t, r).unwrap();
                assert_eq!(declared.to_vec(), decoded, "{t} {}", r.name);
            }
        }
    }

    // Translating the same state again, or in a fresh translator (another
    // replica), yields the same versions: nothing is republished.
    let again = t.translate(&state);
    let fresh = Translator::new().translate(&state);
    assert_eq!(
        again.snapshots.keys().collect::<Vec<_>>(),
        vec![SHARED_KEY],
        "unchanged sidecar inputs are not rebuilt"
    );
    assert_eq!(again.keys, out.keys);
    assert_eq!(again.snapshots[SHARED_KEY].version, shared.version);
    for (key, snap) in &out.snapshots {
        assert_eq!(fresh.snapshots[key].version, snap.version, "{key}");
    }
}

#[test]
fn a_policy_change_reencodes_only_what_it_selects_and_matches_a_fresh_translation() {
    let mut state = parse("sw.yaml", STARWARS).unwrap().state;
    let mut t = Translator::new();
    let before = t.translate(&state);
    let npds_of =
        |snap: &Snapshot, ip: &str| snap.resources(NETWORK_POLICY).unwrap().items[ip].clone();
    let old_shared = &before.snapshots[SHARED_KEY];

    // rule1 now allows PUT instead of POST: only the deathstar changes.
    let edited = STARWARS.replace("method: POST", "method: PUT");
    state.policies = parse("sw.yaml", &edited).unwrap().state.policies;
    let after = t.translate(&state);
    assert!(after.errors.is_empty(), "{:?}", after.errors);
    let new_shared = &after.snapshots[SHARED_KEY];
    let death: NetworkPolicy = npds_of(new_shared, "10.0.0.5").decode().unwrap();
    assert!(format!("{death:?}").contains("PUT"), "{death:?}");
    assert_ne!(
        npds_of(new_shared, "10.0.0.5").hash,
        npds_of(old_shared, "10.0.0.5").hash
    );
    // The tiefighter's resolution is untouched: its encoded resource is reused.
    assert!(Arc::ptr_eq(
        &npds_of(new_shared, "10.0.0.6").body,
        &npds_of(old_shared, "10.0.0.6").body
    ));
    assert_eq!(
        after.snapshots.keys().collect::<Vec<_>>(),
        vec!["shared", "sidecar/default/deathstar-1"],
        "only the deathstar's sidecar is rebuilt"
    );
    // What the caches produced is what a translator starting from scratch builds.
    let fresh = Translator::new().translate(&state);
    for (key, snap) in &after.snapshots {
        assert_eq!(fresh.snapshots[key].version, snap.version, "{key}");
    }

    // A pod's address changes: its NPDS and the identities' NPHDS follow.
    for p in &mut state.pods {
        if p.metadata.name == "tiefighter" {
            p.status.pod_ip = Some("10.0.0.9".into());
        }
    }
    let moved = t.translate(&state);
    let fresh = Translator::new().translate(&state);
    let shared = &moved.snapshots[SHARED_KEY];
    assert!(shared
        .resources(NETWORK_POLICY)
        .unwrap()
        .items
        .contains_key("10.0.0.9"));
    // Every key's latest snapshot, as the cache would hold it, equals a fresh build.
    let mut latest: BTreeMap<&String, &String> = BTreeMap::new();
    for out in [&before, &after, &moved] {
        latest.extend(out.snapshots.iter().map(|(k, s)| (k, &s.version)));
    }
    for (key, snap) in &fresh.snapshots {
        assert_eq!(latest[key], &snap.version, "{key}");
    }
}

#[test]
fn agent_snapshots_are_rebuilt_only_for_what_changed() {
    use crate::resource::AGENT_ENDPOINT;
    // Everyone on node-1, the xwing on node-2.
    let text = STARWARS
        .replace(
            "status: {podIP: 10.0.0.7}",
            "spec: {nodeName: node-2}\nstatus: {podIP: 10.0.0.7}",
        )
        .replace(
            "status: {podIP: 10.0.0.6}",
            "spec: {nodeName: node-1}\nstatus: {podIP: 10.0.0.6}",
        )
        .replace(
            "spec: {containers: [{name: app, ports: [{containerPort: 80, name: http}]}]}",
            "spec: {nodeName: node-1, containers: [{name: app, ports: [{containerPort: 80, name: http}]}]}",
        );
    let state = parse("sw.yaml", &text).unwrap().state;
    let mut t = Translator::new();
    let first = t.translate(&state);
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    assert!(first.agent_template.is_some());
    let one = &first.snapshots["agent/node-1"];
    let names: Vec<&String> = one
        .resources(AGENT_ENDPOINT)
        .unwrap()
        .items
        .keys()
        .collect();
    assert_eq!(names, ["default/deathstar-1", "default/tiefighter"]);
    let tie = one.resources(AGENT_ENDPOINT).unwrap().items["default/tiefighter"].clone();

    // Nothing changed: no agent snapshot is rebuilt.
    let again = t.translate(&state);
    assert!(
        !again.snapshots.keys().any(|k| k.starts_with("agent/")),
        "{:?}",
        again.snapshots.keys()
    );
    assert!(again.keys.contains("agent/node-1") && again.keys.contains("agent/node-2"));

    // A policy edit selecting the deathstar only: node-1's snapshot is rebuilt with a new
    // deathstar and the very same tiefighter resource (not re-encoded).
    let edited = parse("sw.yaml", &text.replace("/v1/request-landing", "/v2/.*"))
        .unwrap()
        .state;
    let third = t.translate(&edited);
    let one = &third.snapshots["agent/node-1"];
    let items = &one.resources(AGENT_ENDPOINT).unwrap().items;
    assert!(std::sync::Arc::ptr_eq(
        &items["default/tiefighter"].body,
        &tie.body
    ));
    assert_ne!(
        items["default/deathstar-1"].hash,
        first.snapshots["agent/node-1"]
            .resources(AGENT_ENDPOINT)
            .unwrap()
            .items["default/deathstar-1"]
            .hash
    );
}

#[test]
fn node_addresses_are_the_host_on_their_node_and_remote_nodes_elsewhere() {
    // The deathstar on node-1, the xwing on node-2, the tiefighter not scheduled yet.
    let nodes = "apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\nstatus: {addresses: [{type: InternalIP, address: 10.10.0.1}, {type: Hostname, address: n1}]}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: node-2}\nstatus: {addresses: [{type: InternalIP, address: 10.10.0.2}]}\n---\n";
    let text = format!("{nodes}{}", STARWARS)
        .replace(
            "status: {podIP: 10.0.0.7}",
            "spec: {nodeName: node-2}\nstatus: {podIP: 10.0.0.7}",
        )
        .replace(
            "spec: {containers: [{name: app, ports: [{containerPort: 80, name: http}]}]}",
            "spec: {nodeName: node-1, containers: [{name: app, ports: [{containerPort: 80, name: http}]}]}",
        );
    let state = parse("sw.yaml", &text).unwrap().state;
    let mut t = Translator::new();
    let out = t.translate(&state);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let view = |key: &str| -> BTreeMap<u64, Vec<String>> {
        out.snapshots[key]
            .resources(NETWORK_POLICY_HOSTS)
            .unwrap()
            .items
            .values()
            .map(|r| {
                let h: NetworkPolicyHosts = r.decode().unwrap();
                (h.policy, h.host_addresses)
            })
            .filter(|(id, _)| *id < 256)
            .collect()
    };
    let addrs = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // Cluster-wide: every node is a remote node.
    let shared = BTreeMap::from([(6, addrs(&["10.10.0.1", "10.10.0.2"]))]);
    assert_eq!(view(SHARED_KEY), shared);
    // A node's view, its agent's and its sidecars': its own addresses are the host.
    let node_1 = BTreeMap::from([(1, addrs(&["10.10.0.1"])), (6, addrs(&["10.10.0.2"]))]);
    let node_2 = BTreeMap::from([(1, addrs(&["10.10.0.2"])), (6, addrs(&["10.10.0.1"]))]);
    assert_eq!(view("sidecar/default/deathstar-1"), node_1);
    assert_eq!(view("agent/node-1"), node_1);
    assert_eq!(view("sidecar/default/xwing"), node_2);
    assert_eq!(view("agent/node-2"), node_2);
    assert_eq!(view("sidecar/default/tiefighter"), shared, "no node yet");
    assert_eq!(
        out.agent_template
            .as_ref()
            .unwrap()
            .resources(NETWORK_POLICY_HOSTS)
            .unwrap()
            .version,
        out.snapshots[SHARED_KEY]
            .resources(NETWORK_POLICY_HOSTS)
            .unwrap()
            .version,
        "an agent of a node not listed gets the cluster-wide view"
    );
    // The RBAC a stock Envoy gets: allow-localhost admits the deathstar's own node only.
    let side = &out.snapshots["sidecar/default/deathstar-1"];
    let l: Listener = side.resources(LISTENER).unwrap().items["inbound|80"]
        .decode()
        .unwrap();
    let Some(filter::ConfigType::TypedConfig(any)) = &l.filter_chains[0].filters[0].config_type
    else {
        panic!()
    };
    let hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
    let Some(http_filter::ConfigType::TypedConfig(rbac_any)) = &hcm.http_filters[0].config_type
    else {
        panic!()
    };
    let rbac = format!("{:?}", Rbac::decode(rbac_any.value.as_slice()).unwrap());
    assert!(
        rbac.contains("allow-localhost") && rbac.contains("10.10.0.1"),
        "{rbac}"
    );
    assert!(!rbac.contains("10.10.0.2"), "{rbac}");
}
