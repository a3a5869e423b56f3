//! Privileged: the endpoint's ingress policy, decided in sk_lookup in the pod's network
//! namespace (attached for policy alone, without inbound capture). A connection from an
//! identity whose ingress verdict denies is dropped (the client's SYN is answered with a
//! reset: refused, at once); an allowed one reaches the app; connections from the pod
//! itself (its own addresses, loopback) are not decided.

mod common;

use std::path::PathBuf;

use common::{tcp, Env};
use membrane_datapath::policy_map::{Direction::*, MapVerdict::*};
use membrane_datapath::DatapathSettings;

const POD: u32 = 4242;

#[test]
fn ingress_policy_drops_denied_connections_in_sk_lookup() {
    let mut env = Env::new();
    env.add_pod_iface(&[
        "10.77.0.1/24", // the pod
        "10.77.0.2/24", // identity 600: allowed on 8080
        "10.77.0.3/24", // identity 601: denied on 8080
        "10.77.0.4/24", // unknown to the ipcache: world
        "10.77.0.5/24", // the pod's second address
    ]);
    let mut settings = DatapathSettings {
        policy_enforce: true,
        pod_identity: POD,
        pod_addrs: vec!["10.77.0.1".parse().unwrap(), "10.77.0.5".parse().unwrap()],
        ..DatapathSettings::default()
    };
    let dp = env.attach(&settings);
    dp.attach_netns(&PathBuf::from("/run/netns").join(&env.netns))
        .unwrap();
    dp.sync_ipcache(&[
        ("10.77.0.2/32".parse().unwrap(), 600),
        ("10.77.0.3/32".parse().unwrap(), 601),
    ])
    .unwrap();
    dp.sync_policy(&[
        tcp(Ingress, 600, 8080, 8080, Allow),
        tcp(Ingress, 601, 8080, 8080, Deny),
        tcp(Ingress, 0, 9090, 9099, Redirect),
    ])
    .unwrap();
    env.server(&["hello", "--listen", "0.0.0.0:8080"]);
    env.server(&["hello", "--listen", "0.0.0.0:9090"]);

    // Clients outside the pod's cgroup (no egress decision), from chosen sources.
    let targets = [
        ("tcp:10.77.0.1:8080@10.77.0.2", 'A'), // identity 600: allowed
        ("tcp:10.77.0.1:8080@10.77.0.3", 'R'), // identity 601: denied
        ("tcp:10.77.0.1:8080@10.77.0.4", 'R'), // world: no rule
        ("tcp:10.77.0.1:9090@10.77.0.4", 'A'), // any identity: allowed (REDIRECT)
        ("tcp:10.77.0.1:8080@10.77.0.5", 'A'), // the pod's own address: not decided
        ("tcp:10.77.0.1:8080@10.77.0.1", 'A'), // the pod to itself
        ("tcp:127.0.0.1:8080", 'A'),           // loopback
    ];
    let mut args = vec!["probes", "--rounds", "1"];
    for (t, _) in &targets {
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
    let got = round(&env);
    for (i, (t, want)) in targets.iter().enumerate() {
        assert_eq!(got.get(i), Some(want), "{t}: {got:?}");
    }
    let lookup = dp.counters_of("mb_sk_lookup").unwrap();
    assert_eq!(lookup.refused, 2, "{lookup:?}");

    // A new policy takes effect on the next connection: 601 allowed, 600 denied.
    dp.sync_policy(&[
        tcp(Ingress, 600, 8080, 8080, Deny),
        tcp(Ingress, 601, 8080, 8080, Allow),
    ])
    .unwrap();
    let got = round(&env);
    assert_eq!(&got[..4], &['R', 'A', 'R', 'R'], "{got:?}");

    // The drops are the policy's: without enforcement everything lands.
    settings.policy_enforce = false;
    dp.set_settings(&settings).unwrap();
    let got = round(&env);
    assert!(got.iter().all(|&c| c == 'A'), "{got:?}");
}
