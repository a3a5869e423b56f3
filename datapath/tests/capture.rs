//! Privileged: iptables-free capture. An app in the pod cgroup connects to
//! a "remote" service; cgroup connect4/6 steers it to the proxy on
//! loopback:15001; the proxy's getsockopt(SO_ORIGINAL_DST) is answered by
//! the cgroup getsockopt program with the real destination; the proxy's own
//! upstream connect (SO_MARK 1337) is left alone. The namespace is new, so
//! it has no netfilter rules at all.

mod common;

use std::path::PathBuf;

use common::Env;
use membrane_datapath::{Capture, DatapathSettings};

fn capture_settings() -> DatapathSettings {
    DatapathSettings {
        capture: Some(Capture {
            proxy_uid: None,
            proxy_mark: Some(1337),
            ..Capture::default()
        }),
        ..DatapathSettings::default()
    }
}

#[test]
fn proxy_sees_original_destination_v4_and_v6() {
    let mut env = Env::new();
    env.add_pod_iface(&["10.77.0.1/24", "fd00:77::1/64"]);
    env.server(&["hello", "--listen", "10.77.0.1:8080"]);
    env.server(&["hello", "--listen", "[fd00:77::1]:8080"]);
    // Before capture: the app reaches the service directly.
    let direct = env.client(&["fetch", "--connect", "10.77.0.1:8080"]);
    assert_eq!(direct, "hello from 10.77.0.1:8080\n");

    let dp = env.attach(&capture_settings());
    // Dual-stack proxy: IPv4 connects land on ::ffff:127.0.0.1, IPv6 on ::1.
    env.server(&["capture-proxy", "--listen", "[::]:15001", "--mark", "1337"]);

    let v4 = env.client(&["fetch", "--connect", "10.77.0.1:8080"]);
    assert_eq!(
        v4, "proxy orig=10.77.0.1:8080\nhello from 10.77.0.1:8080\n",
        "IPv4 app connect went through the proxy, which saw the real destination"
    );
    let v6 = env.client(&["fetch", "--connect", "[fd00:77::1]:8080"]);
    assert_eq!(
        v6,
        "proxy orig=[fd00:77::1]:8080\nhello from [fd00:77::1]:8080\n"
    );

    let c4 = dp.counters_of("mb_connect4").unwrap();
    let c6 = dp.counters_of("mb_connect6").unwrap();
    let so = dp.counters_of("mb_getsockopt").unwrap();
    assert_eq!(c4.redirected, 1, "{c4:?}");
    assert!(
        c4.fallbacks >= 1,
        "the proxy's own connect was left alone: {c4:?}"
    );
    assert_eq!(c6.redirected, 1, "{c6:?}");
    assert_eq!(so.redirected, 2, "{so:?}");

    // Loopback destinations are never captured.
    env.server(&["hello", "--listen", "127.0.0.1:8081"]);
    assert_eq!(
        env.client(&["fetch", "--connect", "127.0.0.1:8081"]),
        "hello from 127.0.0.1:8081\n"
    );
}

#[test]
fn excluded_ports_and_cidrs_are_not_captured() {
    let mut env = Env::new();
    env.add_pod_iface(&["10.77.0.1/24", "10.78.0.1/24"]);
    env.server(&["hello", "--listen", "10.77.0.1:8080"]);
    env.server(&["hello", "--listen", "10.77.0.1:8081"]);
    env.server(&["hello", "--listen", "10.78.0.1:8080"]);
    let mut settings = capture_settings();
    if let Some(c) = settings.capture.as_mut() {
        c.exclude_ports = vec![8081];
        c.exclude_cidrs = vec!["10.78.0.0/16".parse().unwrap()];
    }
    let dp = env.attach(&settings);
    env.server(&["capture-proxy", "--listen", "[::]:15001", "--mark", "1337"]);

    let direct = |addr: &str| env.client(&["fetch", "--connect", addr]);
    assert_eq!(direct("10.77.0.1:8081"), "hello from 10.77.0.1:8081\n");
    assert_eq!(direct("10.78.0.1:8080"), "hello from 10.78.0.1:8080\n");
    assert!(direct("10.77.0.1:8080").starts_with("proxy orig=10.77.0.1:8080\n"));
    assert_eq!(dp.counters_of("mb_connect4").unwrap().redirected, 1);

    // DatapathSettings are replaced as a whole: without exclusions, 8081 is captured.
    dp.set_settings(&capture_settings()).unwrap();
    assert!(direct("10.77.0.1:8081").starts_with("proxy orig=10.77.0.1:8081\n"));
}

#[test]
fn without_capture_the_proxy_gets_no_original_destination() {
    let mut env = Env::new();
    env.attach(&DatapathSettings::default());
    env.server(&["capture-proxy", "--listen", "127.0.0.1:15001"]);
    let out = env.client(&["fetch", "--connect", "127.0.0.1:15001"]);
    assert!(out.starts_with("proxy error="), "{out}");
}

#[test]
fn inbound_connections_reach_the_proxy_with_original_destination() {
    let mut env = Env::new();
    // .1 / ::1 are the pod's addresses; .2 / ::2 stand for a peer outside it.
    env.add_pod_iface(&[
        "10.77.0.1/24",
        "10.77.0.2/24",
        "fd00:77::1/64",
        "fd00:77::2/64",
    ]);
    env.server(&["hello", "--listen", "10.77.0.1:8080"]);
    env.server(&["hello", "--listen", "[fd00:77::1]:8080"]);
    let settings = DatapathSettings {
        capture_inbound: true,
        ..DatapathSettings::default()
    };
    let dp = env.attach(&settings);
    dp.attach_netns(&PathBuf::from("/run/netns").join(&env.netns))
        .unwrap();
    // No inbound listener yet: left alone.
    assert_eq!(
        from_outside(&env, "10.77.0.1:8080", "10.77.0.2"),
        "hello from 10.77.0.1:8080\n"
    );
    // The proxy starts listening on 15006 in the pod: sockops remembers it.
    env.server(&["capture-proxy", "--listen", "[::]:15006", "--mark", "1337"]);

    assert_eq!(
        from_outside(&env, "10.77.0.1:8080", "10.77.0.2"),
        "proxy orig=10.77.0.1:8080\nhello from 10.77.0.1:8080\n",
        "IPv4 inbound went through the proxy, which saw the real destination"
    );
    assert_eq!(
        from_outside(&env, "[fd00:77::1]:8080", "fd00:77::2"),
        "proxy orig=[fd00:77::1]:8080\nhello from [fd00:77::1]:8080\n"
    );
    let look = dp.counters_of("mb_sk_lookup").unwrap();
    assert_eq!(look.redirected, 2, "{look:?}");
    // Nothing is recorded for them: the socket's own address is the answer.
    assert_eq!(dp.counters_of("mb_getsockopt").unwrap().redirected, 0);

    // The pod talking to itself (as the proxy's upstream connect did) and
    // loopback are not captured.
    assert_eq!(
        from_outside(&env, "10.77.0.1:8080", "10.77.0.1"),
        "hello from 10.77.0.1:8080\n"
    );
    // Inbound capture off: the app's own listener again.
    dp.set_settings(&DatapathSettings::default()).unwrap();
    assert_eq!(
        from_outside(&env, "10.77.0.1:8080", "10.77.0.2"),
        "hello from 10.77.0.1:8080\n"
    );
    assert_eq!(dp.counters_of("mb_sk_lookup").unwrap().redirected, 2);
}

/// Fetch from the netns but outside the pod's cgroup, from a chosen address.
fn from_outside(env: &Env, to: &str, from: &str) -> String {
    env.client_outside_cgroup(&["fetch", "--connect", to, "--bind", from])
}
