//! Privileged: policy-aware splice. With enforcement on, a pair is spliced
//! only with an ALLOW decision at the current revision; a denied pair stays
//! on the plain path, and bumping the revision invalidates old decisions.

mod common;

use common::Env;
use membrane_datapath::Settings;

const ID: u32 = 4242;

fn echo(env: &Env, port: u16) -> u64 {
    let before = env.lo_tx_packets();
    let addr = format!("127.0.0.1:{port}");
    let out = env.client(&["client", "--connect", &addr, "--bytes", "2097152"]);
    assert!(out.contains("OK round=0"), "{out}");
    env.lo_tx_packets() - before
}

#[test]
fn denied_pair_is_not_spliced_and_revision_bump_invalidates() {
    let mut env = Env::new();
    let mut settings = Settings {
        policy_enforce: true,
        policy_revision: 1,
        ..Settings::default()
    };
    let dp = env.attach(&settings);
    dp.set_identity("127.0.0.1".parse().unwrap(), ID).unwrap();
    dp.set_policy(ID, ID, 9001, true, 1).unwrap();
    dp.set_policy(ID, ID, 9002, false, 1).unwrap();
    env.server(&["echo", "--listen", "127.0.0.1:9001"]);
    env.server(&["echo", "--listen", "127.0.0.1:9002"]);
    env.server(&["echo", "--listen", "127.0.0.1:9003"]);

    let lo = echo(&env, 9001);
    let ops = dp.counters_of("mb_sockops").unwrap();
    assert_eq!(
        (ops.redirected, ops.fallbacks),
        (2, 0),
        "allowed pair: {ops:?}"
    );
    assert!(lo < 40, "allowed pair spliced: {lo} packets");

    let lo = echo(&env, 9002);
    let ops = dp.counters_of("mb_sockops").unwrap();
    assert_eq!(
        (ops.redirected, ops.fallbacks),
        (2, 2),
        "denied pair: {ops:?}"
    );
    assert!(
        lo > 50,
        "denied pair stayed on the plain path: {lo} packets"
    );

    // No decision at all: not spliced either (fail closed).
    echo(&env, 9003);
    assert_eq!(dp.counters_of("mb_sockops").unwrap().fallbacks, 4);

    // Revision 2 without new decisions: the ALLOW at revision 1 is stale.
    settings.policy_revision = 2;
    dp.set_settings(&settings).unwrap();
    let lo = echo(&env, 9001);
    let ops = dp.counters_of("mb_sockops").unwrap();
    assert_eq!(
        (ops.redirected, ops.fallbacks),
        (2, 6),
        "stale decision: {ops:?}"
    );
    assert!(lo > 50);

    // Re-decided at revision 2: spliced again.
    dp.set_policy(ID, ID, 9001, true, 2).unwrap();
    assert!(echo(&env, 9001) < 40);
    assert_eq!(dp.counters_of("mb_sockops").unwrap().redirected, 4);
}
