//! Privileged: the sockops/sk_msg splice between an app and a "sidecar" in
//! the test's own netns and cgroup v2 child. Proves the bytes were spliced
//! (sk_msg counters move, loopback packet counters do not), arrive intact
//! (checksummed echo), and that detaching restores the plain path.

mod common;

use std::io::BufRead;

use common::Env;
use membrane_datapath::DatapathSettings;

/// 4 MiB each way in 64 KiB writes: on the plain path that is well over
/// 100 loopback packets (64 KiB MTU), spliced it is only the handshake/FIN.
const BYTES: &str = "4194304";
/// Writes of 32 KiB and more stay spliced in a one-way run; the client writes
/// far ahead of the echo, and a 2 MiB run of smaller writes would switch it to
/// plain TCP (lib/flow_switch.h).
const CHUNK: &str = "65536";
const SPLICED_MAX_LO_PACKETS: u64 = 40;
const PLAIN_MIN_LO_PACKETS: u64 = 100;

fn echo_once(env: &Env, connect: &str) -> u64 {
    let before = env.lo_tx_packets();
    let out = env.client(&[
        "client",
        "--connect",
        connect,
        "--bytes",
        BYTES,
        "--chunk",
        CHUNK,
    ]);
    assert!(
        out.contains("OK round=0 bytes=4194304"),
        "echo failed: {out}"
    );
    env.lo_tx_packets() - before
}

fn assert_spliced(listen: &str, connect: &str, pod_addrs: &[&str]) {
    let mut env = Env::new();
    if !pod_addrs.is_empty() {
        env.add_pod_iface(pod_addrs);
    }
    let dp = env.attach(&DatapathSettings::default());
    env.server(&["echo", "--listen", listen]);

    let lo = echo_once(&env, connect);

    let msg = dp.counters_of("mb_sk_msg").unwrap();
    let ops = dp.counters_of("mb_sockops").unwrap();
    assert_eq!(
        ops.redirected, 2,
        "both sockets of {connect} inserted: {ops:?}"
    );
    assert!(
        msg.redirected_bytes >= 2 * 4194304,
        "both directions spliced for {connect}: {msg:?}"
    );
    assert!(
        lo < SPLICED_MAX_LO_PACKETS,
        "{connect}: {lo} loopback packets for a spliced 8 MiB echo"
    );
}

#[test]
fn splices_ipv4_loopback() {
    assert_spliced("127.0.0.1:9000", "127.0.0.1:9000", &[]);
}

#[test]
fn splices_ipv6_loopback() {
    assert_spliced("[::1]:9000", "[::1]:9000", &[]);
}

#[test]
fn splices_dual_stack_listener_v4_mapped() {
    // An AF_INET client against an AF_INET6 [::] listener: the accepted
    // socket sees ::ffff:127.0.0.1, the client 127.0.0.1; keys must meet.
    assert_spliced("[::]:9000", "127.0.0.1:9000", &[]);
}

#[test]
fn splices_over_pod_ip_v4_and_v6() {
    assert_spliced("10.200.0.1:9000", "10.200.0.1:9000", &["10.200.0.1/24"]);
    assert_spliced(
        "[fd00:200::1]:9000",
        "[fd00:200::1]:9000",
        &["fd00:200::1/64"],
    );
}

#[test]
fn detach_restores_plain_path() {
    let mut env = Env::new();
    let dp = env.attach(&DatapathSettings::default());
    env.server(&["echo", "--listen", "127.0.0.1:9000"]);
    let lo_on = echo_once(&env, "127.0.0.1:9000");
    assert!(
        lo_on < SPLICED_MAX_LO_PACKETS,
        "{lo_on} packets while attached"
    );
    assert!(env.cgroup_progs().contains("mb_sockops"));

    // A connection established (and spliced) before the detach, idle across it.
    let gate = std::env::temp_dir().join(format!("{}.gate", env.name));
    let gate_s = gate.to_str().unwrap().to_owned();
    let mut live = env.spawn_client(&[
        "client",
        "--connect",
        "127.0.0.1:9000",
        "--bytes",
        BYTES,
        "--chunk",
        CHUNK,
        "--rounds",
        "2",
        "--gate",
        &gate_s,
    ]);
    let mut line = String::new();
    live.read_line(&mut line).unwrap();
    assert!(line.starts_with("OK round=0"), "{line}");
    line.clear();
    live.read_line(&mut line).unwrap();
    assert!(line.starts_with("WAITING"), "{line}");

    dp.detach(env.cgroup_path()).unwrap();
    env.wait_detached();
    assert!(
        !dp.dir().exists(),
        "pins left behind in {}",
        dp.dir().display()
    );

    // The connection established before the detach goes on intact. It stays
    // spliced until it closes: un-splicing a live socket would drop the
    // redirected bytes it has not read yet (see Datapath::teardown).
    std::fs::write(&gate, b"go").unwrap();
    line.clear();
    live.read_line(&mut line).unwrap();
    let _ = std::fs::remove_file(&gate);
    assert!(
        line.starts_with("OK round=1 bytes=4194304"),
        "after detach: {line}"
    );

    // New connections take the plain path.
    let lo_off = echo_once(&env, "127.0.0.1:9000");
    assert!(
        lo_off > PLAIN_MIN_LO_PACKETS,
        "only {lo_off} loopback packets after detach: still spliced?"
    );
}

#[test]
fn sockets_outside_the_cgroup_are_not_spliced() {
    let mut env = Env::new();
    let dp = env.attach(&DatapathSettings::default());
    env.server(&["echo", "--listen", "127.0.0.1:9000"]);
    // The server is in the cgroup (its socket is spliced) but the client is
    // not: the pair is never complete, so nothing may be redirected.
    let before = env.lo_tx_packets();
    let out = env.client_outside_cgroup(&[
        "client",
        "--connect",
        "127.0.0.1:9000",
        "--bytes",
        BYTES,
        "--chunk",
        "16384",
    ]);
    assert!(out.contains("OK round=0"), "{out}");
    assert!(env.lo_tx_packets() - before > PLAIN_MIN_LO_PACKETS);
    let msg = dp.counters_of("mb_sk_msg").unwrap();
    assert_eq!(msg.redirected, 0, "{msg:?}");
}
