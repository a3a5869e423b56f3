//! Privileged: allow-localhost, from the engine to sk_lookup. A pod whose ingress policy
//! admits one peer on one port (deny-all-but-X) is resolved by the real policy engine, its
//! map entries computed by `membrane_api::agent::policy` (what membrane-xds sends the
//! agent) and written with `sync_policy`; connections then come from outside the pod's
//! cgroup from an address the ipcache calls the host (identity 1, as the node's own
//! addresses are) and from others. With the default setting the host is admitted on every
//! port while the rest stays denied; with `policy` the host is refused like any peer.

mod common;

use std::path::PathBuf;

use common::Env;
use membrane_api::agent::policy::policy_entries;
use membrane_datapath::policy_map::PolicyRule;
use membrane_datapath::DatapathSettings;
use membrane_policy::resolve::{Endpoint, NamedPorts};
use membrane_policy::{AllowLocalhost, Engine, Identity, LabelSet};

const POLICY: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: only-x, namespace: default}\nspec:\n  endpointSelector: {matchLabels: {app: pod}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: x}}]\n    toPorts: [{ports: [{port: \"8080\", protocol: TCP}]}]\n";

fn labels(app: &str) -> LabelSet {
    LabelSet::parse(&format!(
        "k8s:app={app},k8s:io.kubernetes.pod.namespace=default,k8s:io.cilium.k8s.policy.cluster=default"
    ))
    .expect("fixed labels parse")
}

/// The pod's identity, X's identity, and the map rules of the pod's policy under
/// `setting`, all from the engine.
fn resolve(setting: AllowLocalhost) -> (u32, u32, Vec<PolicyRule>) {
    let mut engine = Engine::default();
    engine.set_allow_localhost(setting);
    for o in membrane_policy::parse_file("only-x.yaml", POLICY).expect("parses") {
        engine.apply_policy(o.result.expect("valid"));
    }
    let (x, _) = engine.ensure_identity(&labels("x")).expect("identity");
    let ep = Endpoint {
        labels: labels("pod"),
        named_ports: NamedPorts::new(),
    };
    let (own, _) = engine.upsert_endpoint("default/pod", ep).expect("endpoint");
    let resolved = engine.resolved("default/pod").expect("resolved");
    let none = NamedPorts::new();
    let rules = policy_entries(&resolved, &none, &none)
        .iter()
        .map(|e| PolicyRule::try_from(e).expect("the agent's entries convert"))
        .collect();
    (own.0, x.0, rules)
}

#[test]
fn the_host_is_admitted_by_default_and_refused_under_policy_mode() {
    let mut env = Env::new();
    env.add_pod_iface(&[
        "10.78.0.1/24", // the pod
        "10.78.0.2/24", // X, the one peer the policy admits (on 8080)
        "10.78.0.3/24", // the host, as the ipcache has the node's own addresses
        "10.78.0.4/24", // unknown to the ipcache: world
    ]);
    let (pod, x, rules) = resolve(AllowLocalhost::default());
    let settings = DatapathSettings {
        policy_enforce: true,
        pod_identity: pod,
        pod_addrs: vec!["10.78.0.1".parse().unwrap()],
        ..DatapathSettings::default()
    };
    let dp = env.attach(&settings);
    dp.attach_netns(&PathBuf::from("/run/netns").join(&env.netns))
        .unwrap();
    dp.sync_ipcache(&[
        ("10.78.0.2/32".parse().unwrap(), x),
        ("10.78.0.3/32".parse().unwrap(), Identity::HOST.0),
    ])
    .unwrap();
    dp.sync_policy(&rules).unwrap();
    env.server(&["hello", "--listen", "0.0.0.0:8080"]);
    env.server(&["hello", "--listen", "0.0.0.0:9090"]);

    let targets = [
        "tcp:10.78.0.1:8080@10.78.0.2", // X on its port
        "tcp:10.78.0.1:9090@10.78.0.2", // X elsewhere
        "tcp:10.78.0.1:8080@10.78.0.3", // the host on X's port
        "tcp:10.78.0.1:9090@10.78.0.3", // the host on a port no rule names
        "tcp:10.78.0.1:8080@10.78.0.4", // world
    ];
    let mut args = vec!["probes", "--rounds", "1"];
    for t in &targets {
        args.extend(["--target", t]);
    }
    let round = |env: &Env| -> Vec<char> {
        let out = env.client_outside_cgroup(&args);
        out.split_whitespace()
            .nth(2)
            .unwrap_or("")
            .chars()
            .collect()
    };
    assert_eq!(
        round(&env),
        ['A', 'R', 'A', 'A', 'R'],
        "default (auto): the host admitted everywhere, the rest as the rule says: {targets:?}"
    );

    // The same policy under `--allow-localhost policy`: the host is a peer like any other.
    let (_, _, rules) = resolve(AllowLocalhost::Policy);
    dp.sync_policy(&rules).unwrap();
    assert_eq!(
        round(&env),
        ['A', 'R', 'R', 'R', 'R'],
        "policy: the host refused: {targets:?}"
    );
    // And back: the host's entries return.
    let (_, _, rules) = resolve(AllowLocalhost::Always);
    dp.sync_policy(&rules).unwrap();
    assert_eq!(
        round(&env),
        ['A', 'R', 'A', 'A', 'R'],
        "always: {targets:?}"
    );
}
