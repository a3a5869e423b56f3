//! `membrane policy import|get|delete` and `membrane etcd ...` against a real
//! etcd (Debian `etcd-server`) on loopback, started and killed by the test.

use std::process::{Command, Output};

use membrane_test_support::Etcd;
use std::time::{Duration, Instant};

/// The shared etcd launcher's server, once the CLI gets answers from it.
fn start_etcd() -> Etcd {
    let e = Etcd::start();
    let start = Instant::now();
    while !membrane(&e, &["etcd", "identities"]).status.success() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "etcd does not answer"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    e
}

fn membrane(etcd: &Etcd, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_membrane"))
        .args(args)
        .env("MEMBRANE_ETCD", etcd.url())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const CNP: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: rule1, namespace: empire}\nspec:\n  endpointSelector: {matchLabels: {class: deathstar}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {org: empire}}]\n    toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]\n";
const CCNP: &str = "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: world-out}\nspec:\n  endpointSelector: {}\n  egress: [{toEntities: [world]}]\n";

#[test]
fn import_get_delete_round_trip_and_an_invalid_import_writes_nothing() {
    let etcd = start_etcd();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, format!("{CNP}---\n{CCNP}")).unwrap();
    let other = dir.path().join("other.yaml");
    std::fs::write(&other, CNP.replace("rule1", "rule2")).unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        CNP.replace("rule1", "rule3").replace("\"80\"", "\"99999\""),
    )
    .unwrap();
    let (good, other, bad) = (
        good.display().to_string(),
        other.display().to_string(),
        bad.display().to_string(),
    );

    // One invalid object among valid files: nothing is written.
    let out = membrane(&etcd, &["policy", "import", &other, &bad]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "{bad}: CiliumNetworkPolicy empire/rule3: spec.ingress[0].toPorts[0].ports[0].port"
        )),
        "{err}"
    );
    assert!(err.contains("nothing was written"), "{err}");
    let out = membrane(&etcd, &["policy", "get", "empire/rule2"]);
    assert!(!out.status.success(), "rule2 must not have been written");
    assert!(
        text(&out.stderr).contains("no such policy"),
        "{}",
        text(&out.stderr)
    );

    // Only policies go through `policy import`.
    let pod = dir.path().join("pod.yaml");
    std::fs::write(&pod, "kind: Pod\nmetadata: {name: p1}\n").unwrap();
    let out = membrane(&etcd, &["policy", "import", &pod.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("Pod p1: kind"),
        "{}",
        text(&out.stderr)
    );

    // A valid import (the same object twice: the last one is stored), then
    // get in both formats.
    let out = membrane(
        &etcd,
        &["policy", "import", &good, &good, "--etcd", &etcd.url()],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "stored CiliumNetworkPolicy empire/rule1\nstored CiliumClusterwideNetworkPolicy world-out\n".repeat(2)
    );
    let out = membrane(&etcd, &["policy", "get", "empire/rule1", "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["metadata"]["name"], "rule1");
    assert_eq!(
        v["spec"]["endpointSelector"]["matchLabels"]["class"],
        "deathstar"
    );
    let out = membrane(&etcd, &["policy", "get"]);
    let all = text(&out.stdout);
    assert!(
        all.contains("name: rule1") && all.contains("name: world-out"),
        "{all}"
    );
    let out = membrane(&etcd, &["policy", "get", "--cluster-wide", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["kind"], "CiliumClusterwideNetworkPolicy");

    // Delete: a CNP by NAMESPACE/NAME, a CCNP by NAME; a second delete fails.
    let out = membrane(&etcd, &["policy", "delete", "empire/rule1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!membrane(&etcd, &["policy", "get", "empire/rule1"])
        .status
        .success());
    assert_eq!(
        membrane(&etcd, &["policy", "delete", "empire/rule1"])
            .status
            .code(),
        Some(1)
    );
    assert!(membrane(&etcd, &["policy", "delete", "world-out"])
        .status
        .success());
    let out = membrane(&etcd, &["policy", "get", "-o", "json"]);
    assert_eq!(text(&out.stdout).trim(), "[]");
}

#[test]
fn etcd_apply_registers_pods_and_nodes_and_delete_removes_them() {
    let etcd = start_etcd();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("cluster.yaml");
    std::fs::write(
        &f,
        "kind: Pod\nmetadata: {name: xwing, labels: {org: alliance}}\nstatus: {podIP: 10.0.0.7}\n---\nkind: Node\nmetadata: {name: node-1}\nstatus: {addresses: [{type: InternalIP, address: 192.168.0.1}]}\n",
    )
    .unwrap();
    let f = f.display().to_string();
    let out = membrane(&etcd, &["etcd", "apply", &f]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "stored Pod default/xwing\nstored Node node-1\n"
    );
    let out = membrane(&etcd, &["etcd", "delete", "Pod", "default/xwing"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        membrane(&etcd, &["etcd", "delete", "Pod", "default/xwing"])
            .status
            .code(),
        Some(1)
    );
    let out = membrane(&etcd, &["etcd", "delete", "Secret", "default/x"]);
    assert!(
        text(&out.stderr).contains("\"Secret\" is not a stored kind"),
        "{}",
        text(&out.stderr)
    );
    assert!(membrane(&etcd, &["etcd", "delete", "Node", "node-1"])
        .status
        .success());
}
