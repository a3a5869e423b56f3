//! A three-member etcd cluster (Debian `etcd-server` on loopback) under the control plane,
//! with its leader killed: `membrane policy import` keeps working, a new pod's label set
//! gets a cluster-wide identity, the sidecar keeps its verdicts with zero failed requests,
//! nothing stored before the kill is lost, and the member rejoins when it comes back.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use membrane_test_support::Etcd;
use membrane_xds::kvstore;

use super::load::Load;
use super::restart::{probes, workspace_bin};
use super::*;

const LIMIT: Duration = Duration::from_secs(30);

/// A pod that arrives while a member is down, with a label set no pod had.
const SHUTTLE: &str = "kind: Pod\nmetadata: {name: shuttle, namespace: default, labels: {org: empire, class: shuttle}}\nstatus: {podIP: 127.0.0.5}\n";
/// The shuttle's label set as stored (the pod's labels and what Cilium derives).
const SHUTTLE_LABELS: &str = "k8s:class=shuttle,k8s:io.cilium.k8s.policy.cluster=default,k8s:io.cilium.k8s.policy.serviceaccount=default,k8s:io.kubernetes.pod.namespace=default,k8s:org=empire";

/// A second policy, imported while a member is down: the empire may also read the
/// deathstar's status.
fn status_policy(port: u16) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: status, namespace: default}}\nspec:\n  endpointSelector: {{matchLabels: {{org: empire, class: deathstar}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{org: empire}}}}]\n    toPorts:\n    - ports: [{{port: \"{port}\", protocol: TCP}}]\n      rules:\n        http: [{{method: GET, path: /v1/status}}]\n"
    )
}

/// `membrane ARGS` against every member; its stdout, or a panic with its stderr.
fn membrane(endpoints: &str, args: &[&str]) -> String {
    let out = Command::new(workspace_bin("membrane"))
        .args(args)
        .env("MEMBRANE_ETCD", endpoints)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "membrane {args:?} with a member down: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The member that leads the cluster, asked of every running member.
async fn leader(members: &[Etcd]) -> usize {
    membrane_test_support::eventually(LIMIT, "a leader", || async {
        for (i, m) in members.iter().enumerate() {
            let Ok(mut c) = kvstore::connect(&[m.url()]).await else {
                continue;
            };
            let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(2), c.status()).await else {
                continue;
            };
            if s.header().is_some_and(|h| h.member_id() == s.leader()) {
                return Some(i);
            }
        }
        None
    })
    .await
}

/// The cluster-wide identities, checked for consistency: each number names one label set
/// and each label set one number, both ways.
async fn identities(c: &mut kvstore::EtcdClient) -> BTreeMap<u32, String> {
    let by_number = kvstore::list_identities(c).await.expect("identities");
    let by_labels = kvstore::list(c, kvstore::ID_BY_LABELS)
        .await
        .expect("label keys");
    let labels: BTreeSet<&String> = by_number.values().collect();
    assert_eq!(
        labels.len(),
        by_number.len(),
        "a label set twice: {by_number:?}"
    );
    assert_eq!(
        by_labels.len(),
        by_number.len(),
        "{by_labels:?} vs {by_number:?}"
    );
    for (k, n) in &by_labels {
        let l = k.strip_prefix(kvstore::ID_BY_LABELS).unwrap();
        assert_eq!(
            by_number.get(&n.parse().unwrap()).map(String::as_str),
            Some(l),
            "{k} -> {n}"
        );
    }
    by_number
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_member_etcd_cluster_loses_its_leader_and_import_identities_and_the_mesh_keep_working(
) {
    let mut members = Etcd::cluster(3);
    let endpoints = members.iter().map(Etcd::url).collect::<Vec<_>>().join(",");
    let backend = common::start_backend().await;
    let port = backend.port();
    let files = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = files.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let cluster = write("cluster.yaml", &pods(port));
    let l7 = write("l7.yaml", &cnp(port, ""));
    membrane(&endpoints, &["etcd", "apply", &cluster]);
    membrane(&endpoints, &["policy", "import", &l7]);

    // The control plane on all three endpoints (and an empty directory), the sidecar on it.
    let empty = tempfile::tempdir().unwrap();
    let _xds = start_xds_args(
        empty.path(),
        &[
            "--plaintext-xds",
            "--grpc-addr",
            "127.0.0.1:0",
            "--etcd",
            &endpoints,
            "--etcd-lease-ttl",
            "5",
        ],
    );
    let proxy = start_proxy(backend, _xds.grpc).await;
    let a = proxy.addrs;
    within_10s("the sidecar's first policy from etcd", || async {
        get(a.admin, "/ready").await.0 == 200
    })
    .await;
    assert_eq!(
        status_from(tiefighter(), a.listen, "POST", "/v1/request-landing").await,
        200
    );
    let mut client = kvstore::connect(&members.iter().map(Etcd::url).collect::<Vec<_>>())
        .await
        .unwrap();
    let before = identities(&mut client).await;
    assert_eq!(before.len(), 3, "{before:?}");
    let policies_before = membrane(&endpoints, &["policy", "get", "-o", "json"]);

    // Load through the sidecar, then the leader dies.
    let load = Load::start(a.listen, &probes(), 4);
    load.wait_for(300, "load before the kill").await;
    let dead = leader(&members).await;
    members[dead].stop();
    eprintln!("killed etcd member {} (the leader)", members[dead].url());

    // A policy imported now arrives at the sidecar.
    let status = write("status.yaml", &status_policy(port));
    membrane(&endpoints, &["policy", "import", &status]);
    within_10s("the policy imported after the kill to arrive", || async {
        status_from(tiefighter(), a.listen, "GET", "/v1/status").await == 200
    })
    .await;
    assert_eq!(
        status_from(xwing(), a.listen, "GET", "/v1/status").await,
        403
    );

    // A new pod's label set gets a cluster-wide identity, and its requests the verdict of
    // its labels (an empire ship lands).
    let shuttle = write("shuttle.yaml", SHUTTLE);
    membrane(&endpoints, &["etcd", "apply", &shuttle]);
    let shuttle_ip: std::net::IpAddr = "127.0.0.5".parse().unwrap();
    within_10s("the shuttle to land", || async {
        status_from(shuttle_ip, a.listen, "POST", "/v1/request-landing").await == 200
    })
    .await;
    let after = identities(&mut client).await;
    let listed = membrane(&endpoints, &["etcd", "identities"]);
    let shuttle_id = after
        .iter()
        .find(|(_, l)| l.as_str() == SHUTTLE_LABELS)
        .map(|(n, _)| *n)
        .unwrap_or_else(|| panic!("no identity for the shuttle: {after:?}"));
    assert!(
        listed.contains(&format!("{shuttle_id}\t{SHUTTLE_LABELS}")),
        "{listed}"
    );
    // Nothing stored before the kill is lost: every identity keeps its number.
    for (n, l) in &before {
        assert_eq!(after.get(n), Some(l), "identity {n} changed: {after:?}");
    }
    let policies_after = membrane(&endpoints, &["policy", "get", "-o", "json"]);
    let names = |text: &str| {
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        let list = v.as_array().cloned().unwrap_or_else(|| vec![v]);
        list.iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(
        names(&policies_after),
        names(&policies_before)
            .into_iter()
            .chain(["status".to_owned()])
            .collect()
    );

    // The member comes back and rejoins: it answers a linearizable read (which it serves
    // only as a member with a leader) with what was written while it was away.
    members[dead].restart();
    let alone = kvstore::connect(&[members[dead].url()]).await.unwrap();
    let key = kvstore::object_key("CiliumNetworkPolicy", Some("default"), "status");
    membrane_test_support::eventually(LIMIT, "the restarted member to rejoin", || {
        let (mut c, key) = (alone.clone(), key.clone());
        async move {
            let got = kvstore::list(&mut c, &key).await.ok()?;
            (got.len() == 1).then_some(())
        }
    })
    .await;
    let l = leader(&members).await;
    eprintln!("rejoined; the leader is now {}", members[l].url());
    load.wait_for(300, "load after the rejoin").await;

    let tally = load.stop().await;
    eprintln!(
        "etcd leader killed and restarted: {} requests, {} failed; {:?}",
        tally.sent(),
        tally.failed,
        tally.ok
    );
    assert_eq!(tally.failed, 0, "failed requests: {:#?}", tally.failures);
    proxy.drain(Duration::from_secs(1)).await;
}
