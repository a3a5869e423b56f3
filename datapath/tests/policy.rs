//! Privileged: L3/L4 policy at connect and establish time. With enforcement
//! on, a connect from the pod that its egress policy does not allow for
//! (destination identity, port) fails with EPERM; an allowed one connects and
//! is spliced (both sides' policies allow it); a new policy re-decides; a
//! denied pair that reaches the pod from outside its cgroup is never spliced.

mod common;

use common::{tcp, Env};
use membrane_datapath::policy_map::{Direction::*, MapVerdict::*};
use membrane_datapath::DatapathSettings;

const ID: u32 = 4242;
const REFUSED: &str = "connect error kind=PermissionDenied errno=1\n";
const OK: &str = "connect ok\n";

/// Echo 2 MiB from inside the pod; returns the loopback packets it took.
fn echo(env: &Env, port: u16) -> u64 {
    let before = env.lo_tx_packets();
    let addr = format!("127.0.0.1:{port}");
    // 64 KiB writes: a one-way run of 2 MiB in writes below 32 KiB switches to TCP.
    let out = env.client(&[
        "client",
        "--connect",
        &addr,
        "--bytes",
        "2097152",
        "--chunk",
        "65536",
    ]);
    assert!(out.contains("OK round=0"), "{out}");
    env.lo_tx_packets() - before
}

fn probe(env: &Env, addr: &str) -> String {
    env.client(&["probe", "--connect", addr])
}

fn refused(dp: &membrane_datapath::Datapath, prog: &str) -> u64 {
    dp.counters_of(prog).unwrap().refused
}

#[test]
fn denied_flow_is_refused_allowed_is_spliced_new_policy_redecides() {
    let mut env = Env::new();
    let mut settings = DatapathSettings {
        policy_enforce: true,
        policy_revision: 1,
        pod_identity: ID,
        ..DatapathSettings::default()
    };
    let dp = env.attach(&settings);
    dp.sync_ipcache(&[("127.0.0.1/32".parse().unwrap(), ID)])
        .unwrap();
    // The pod talks to itself: its egress decides the connect and the active
    // side's splice, its ingress the passive side's.
    dp.sync_policy(&[
        tcp(Egress, ID, 9001, 9001, Allow),
        tcp(Ingress, ID, 9001, 9001, Allow),
        tcp(Egress, ID, 9002, 9002, Deny),
    ])
    .unwrap();
    env.server(&["echo", "--listen", "127.0.0.1:9001"]);
    env.server(&["echo", "--listen", "127.0.0.1:9002"]);
    env.server(&["echo", "--listen", "127.0.0.1:9003"]);

    // Allowed: connects and is spliced (both sides in the sockhash).
    let lo = echo(&env, 9001);
    let ops = dp.counters_of("mb_sockops").unwrap();
    assert_eq!(
        (ops.redirected, ops.fallbacks),
        (2, 0),
        "allowed pair: {ops:?}"
    );
    assert!(lo < 40, "allowed pair spliced: {lo} packets");
    assert_eq!(refused(&dp, "mb_connect4"), 0);

    // Denied: connect() fails with EPERM, counted, nothing established.
    assert_eq!(probe(&env, "127.0.0.1:9002"), REFUSED);
    assert_eq!(refused(&dp, "mb_connect4"), 1);
    // No decision at all: refused too (fail closed).
    assert_eq!(probe(&env, "127.0.0.1:9003"), REFUSED);
    assert_eq!(refused(&dp, "mb_connect4"), 2);
    let ops = dp.counters_of("mb_sockops").unwrap();
    assert_eq!(
        (ops.redirected, ops.fallbacks),
        (2, 0),
        "refused connects never establish: {ops:?}"
    );

    // The refusal is the policy's: without enforcement the same connect works.
    settings.policy_enforce = false;
    dp.set_settings(&settings).unwrap();
    assert_eq!(probe(&env, "127.0.0.1:9002"), OK);
    assert_eq!(refused(&dp, "mb_connect4"), 2);
    settings.policy_enforce = true;
    dp.set_settings(&settings).unwrap();

    // An empty policy: nothing is allowed any more.
    let report = dp.sync_policy(&[]).unwrap();
    assert_eq!((report.added, report.removed), (0, 3), "{report:?}");
    assert_eq!(probe(&env, "127.0.0.1:9001"), REFUSED);
    assert_eq!(refused(&dp, "mb_connect4"), 3);

    // A new policy: 9001 connects and is spliced again, and the formerly
    // denied 9002, now allowed (as part of a range), connects.
    dp.sync_policy(&[
        tcp(Egress, ID, 9001, 9002, Allow),
        tcp(Ingress, ID, 9001, 9001, Allow),
    ])
    .unwrap();
    assert!(echo(&env, 9001) < 40);
    assert_eq!(probe(&env, "127.0.0.1:9002"), OK);
    assert_eq!(refused(&dp, "mb_connect4"), 3);
    // A DENY refuses an address that had an ALLOW.
    dp.sync_policy(&[tcp(Egress, ID, 9001, 9001, Deny)])
        .unwrap();
    assert_eq!(probe(&env, "127.0.0.1:9001"), REFUSED);
    assert_eq!(refused(&dp, "mb_connect4"), 4);
}

#[test]
fn denied_ipv6_connect_is_refused() {
    let mut env = Env::new();
    let settings = DatapathSettings {
        policy_enforce: true,
        policy_revision: 7,
        pod_identity: ID,
        ..DatapathSettings::default()
    };
    let dp = env.attach(&settings);
    dp.sync_ipcache(&[("::1/128".parse().unwrap(), ID)])
        .unwrap();
    dp.sync_policy(&[
        tcp(Egress, ID, 9011, 9011, Allow),
        tcp(Egress, ID, 9012, 9012, Deny),
    ])
    .unwrap();
    env.server(&["echo", "--listen", "[::1]:9011"]);
    env.server(&["echo", "--listen", "[::1]:9012"]);

    assert_eq!(probe(&env, "[::1]:9011"), OK);
    assert_eq!(probe(&env, "[::1]:9012"), REFUSED);
    assert_eq!(refused(&dp, "mb_connect6"), 1);
    assert_eq!(refused(&dp, "mb_connect4"), 0);
}

#[test]
fn denied_pair_from_outside_the_pod_is_not_spliced() {
    // A client outside the pod's cgroup is not subject to its connect hook;
    // the pod's accepting side must still not splice a denied pair.
    let mut env = Env::new();
    let settings = DatapathSettings {
        policy_enforce: true,
        policy_revision: 1,
        pod_identity: ID,
        ..DatapathSettings::default()
    };
    let dp = env.attach(&settings);
    dp.sync_ipcache(&[("127.0.0.1/32".parse().unwrap(), ID)])
        .unwrap();
    // The accepting side decides by its ingress policy.
    dp.sync_policy(&[
        tcp(Ingress, ID, 9021, 9021, Allow),
        tcp(Ingress, ID, 9022, 9022, Deny),
    ])
    .unwrap();
    env.server(&["echo", "--listen", "127.0.0.1:9021"]);
    env.server(&["echo", "--listen", "127.0.0.1:9022"]);

    let run = |port: u16| {
        let addr = format!("127.0.0.1:{port}");
        let out = env.client_outside_cgroup(&["client", "--connect", &addr]);
        assert!(out.contains("OK round=0"), "{out}");
    };
    run(9021);
    let ops = dp.counters_of("mb_sockops").unwrap();
    assert_eq!((ops.redirected, ops.fallbacks), (1, 0), "allowed: {ops:?}");
    run(9022);
    let ops = dp.counters_of("mb_sockops").unwrap();
    assert_eq!((ops.redirected, ops.fallbacks), (1, 1), "denied: {ops:?}");
}
