//! Privileged: socket-level service load balancing. A connect to a service
//! address reaches one of its backends, chosen per connection; the L3/L4
//! decision is made on the backend; a service without backends is refused.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use common::Env;
use membrane_datapath::policy_map::{Direction, MapVerdict};
use membrane_datapath::DatapathSettings;

const VIP: &str = "10.96.0.10:80";
const B1: &str = "10.77.0.1:8080";
const B2: &str = "10.77.0.2:8080";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Who answered `n` fetches of `to`.
fn answers(env: &Env, to: &str, n: usize) -> BTreeSet<String> {
    (0..n)
        .map(|_| env.client(&["fetch", "--connect", to]).trim().to_owned())
        .collect()
}

fn probes(env: &Env, to: &str, n: usize) -> BTreeSet<String> {
    (0..n)
        .map(|_| env.client(&["probe", "--connect", to]).trim().to_owned())
        .collect()
}

#[test]
fn connects_to_a_service_reach_its_backends() {
    let mut env = Env::new();
    env.add_pod_iface(&["10.77.0.1/24", "10.77.0.2/24"]);
    env.server(&["hello", "--listen", B1]);
    env.server(&["hello", "--listen", B2]);
    let dp = env.attach(&DatapathSettings::default());

    dp.set_service(addr(VIP), &[addr(B1), addr(B2)]).unwrap();
    assert_eq!(
        dp.services().unwrap(),
        vec![(addr(VIP), vec![addr(B1), addr(B2)])]
    );
    // 40 connections, each to a backend chosen at random: both answer (all
    // 40 on one side has probability 2^-39).
    let both: BTreeSet<String> = [B1, B2].iter().map(|b| format!("hello from {b}")).collect();
    assert_eq!(answers(&env, VIP, 40), both);
    // A dual-stack socket addressing the service as v4-mapped IPv6 too.
    assert!(both.is_superset(&answers(&env, "[::ffff:10.96.0.10]:80", 5)));

    // New backends take effect for new connects; the old set is gone.
    dp.set_service(addr(VIP), &[addr(B2)]).unwrap();
    assert_eq!(
        answers(&env, VIP, 10),
        BTreeSet::from([format!("hello from {B2}")])
    );
    assert_eq!(dp.services().unwrap()[0].1, vec![addr(B2)]);

    // No backend: refused at connect, before any packet, and reported.
    dp.set_service(addr(VIP), &[]).unwrap();
    let mut events = dp.events().unwrap();
    let refused = probes(&env, VIP, 3);
    events.wait(std::time::Duration::from_secs(2)).unwrap();
    let seen = events.drain("node-a", 1024).unwrap();
    assert!(
        seen.iter().any(|e| e.kind == "policy-verdict"
            && e.reason == "no-backend"
            && e.dst.as_deref() == Some(VIP)),
        "{seen:#?}"
    );
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused.iter().all(|p| p.ends_with("errno=1")),
        "{refused:?}"
    );

    // Deleted: the address is just an address again (no route to it here).
    dp.delete_service(addr(VIP)).unwrap();
    assert!(dp.services().unwrap().is_empty());
    let plain = probes(&env, VIP, 1);
    assert!(plain.iter().all(|p| p.ends_with("errno=101")), "{plain:?}");
    dp.delete_service(addr(VIP)).unwrap();
}

/// Connects to `to` and prints what getpeername() says, from inside the pod.
const PEER: &str = r#"
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
s = socket.create_connection((host.strip("[]"), int(port)))
print(s.getpeername()[:2])
"#;

#[test]
fn the_app_sees_the_service_as_its_peer() {
    let mut env = Env::new();
    env.add_pod_iface(&["10.77.0.1/24"]);
    env.server(&["hello", "--listen", B1]);
    let dp = env.attach(&DatapathSettings::default());
    dp.set_service(addr(VIP), &[addr(B1)]).unwrap();
    // The connection goes to the backend; getpeername() names the service,
    // for an IPv4 socket and for a dual-stack one addressing it v4-mapped.
    assert_eq!(
        env.run_in_pod("python3", &["-c", PEER, VIP]).trim(),
        "('10.96.0.10', 80)"
    );
    let v6 = env.run_in_pod("python3", &["-c", PEER, "[::ffff:10.96.0.10]:80"]);
    assert_eq!(v6.trim(), "('::ffff:10.96.0.10', 80)");
    // A direct connect to the backend names the backend.
    assert_eq!(
        env.run_in_pod("python3", &["-c", PEER, B1]).trim(),
        "('10.77.0.1', 8080)"
    );
}

#[test]
fn the_policy_decides_on_the_chosen_backend() {
    let mut env = Env::new();
    env.add_pod_iface(&["10.77.0.1/24", "10.77.0.2/24"]);
    env.server(&["hello", "--listen", B1]);
    env.server(&["hello", "--listen", B2]);
    const POD: u32 = 200;
    let dp = env.attach(&DatapathSettings {
        policy_enforce: true,
        pod_identity: POD,
        policy_revision: 1,
        ..DatapathSettings::default()
    });
    dp.sync_ipcache(&[
        ("10.77.0.1/32".parse().unwrap(), 300),
        ("10.77.0.2/32".parse().unwrap(), 301),
    ])
    .unwrap();
    // Only the first backend's identity is allowed; the service address
    // itself has no identity (world) and no decision at all.
    dp.sync_policy(&[common::tcp(
        Direction::Egress,
        300,
        8080,
        8080,
        MapVerdict::Allow,
    )])
    .unwrap();
    dp.set_service(addr(VIP), &[addr(B1), addr(B2)]).unwrap();

    let seen = probes(&env, VIP, 40);
    assert!(seen.contains("connect ok"), "{seen:?}");
    assert!(seen.iter().any(|p| p.ends_with("errno=1")), "{seen:?}");
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        answers(&env, B1, 1),
        BTreeSet::from([format!("hello from {B1}")])
    );
}

#[test]
fn the_agent_sets_lists_and_deletes_services() {
    let env = Env::new();
    env.attach(&DatapathSettings::default());
    let agent = |args: &[&str]| {
        let out = std::process::Command::new(&*common::AGENT)
            .arg("--bpffs")
            .arg(&env.bpffs)
            .arg("service")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = agent(&["set", VIP, "--backend", B1, "--backend", B2]);
    assert!(ok, "{out}");
    let (ok, out) = agent(&["list"]);
    assert!(ok);
    assert_eq!(out.trim(), format!("{VIP} -> {B1}, {B2}"));
    // A frontend without a port is refused before anything is written.
    let (ok, out) = agent(&["set", "10.96.0.11", "--backend", B1]);
    assert!(!ok);
    assert!(out.contains("10.96.0.11"), "{out}");
    assert_eq!(agent(&["list"]).1.lines().count(), 1);
    let (ok, out) = agent(&["delete", VIP]);
    assert!(ok, "{out}");
    assert_eq!(agent(&["list"]).1.trim(), "");
}
