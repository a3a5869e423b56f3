//! The etcd source and cluster-wide identities against a real etcd on
//! loopback: what is stored is served, bad values and an unreachable etcd
//! leave the last good state in force, two control planes agree on
//! identities, a replica's registrations expire with its lease, and an
//! etcd that requires TLS client certificates is read with --etcd-ca,
//! --etcd-cert and --etcd-key.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::time::Duration;

use membrane_policy::LabelSet;
use membrane_xds::kvstore::{self, IdentityStore};
use membrane_xds::resource::{NETWORK_POLICY, NETWORK_POLICY_HOSTS};

use common::*;

const AGENT: &str = "membrane-agent~node-1";
const LIMIT: Duration = Duration::from_secs(20);

const PODS: [(&str, &str); 3] = [
    (
        "deathstar-1",
        "kind: Pod\nmetadata: {name: deathstar-1, namespace: default, labels: {org: empire, class: deathstar}}\nspec: {containers: [{name: app, ports: [{containerPort: 80, name: http}]}]}\nstatus: {podIP: 127.0.0.2}\n",
    ),
    (
        "tiefighter",
        "kind: Pod\nmetadata: {name: tiefighter, namespace: default, labels: {org: empire, class: tiefighter}}\nstatus: {podIP: 127.0.0.3}\n",
    ),
    (
        "xwing",
        "kind: Pod\nmetadata: {name: xwing, namespace: default, labels: {org: alliance, class: xwing}}\nstatus: {podIP: 127.0.0.4}\n",
    ),
];

fn pods(order: &[usize]) -> String {
    order
        .iter()
        .map(|i| PODS[*i].1)
        .collect::<Vec<_>>()
        .join("---\n")
}

async fn store(c: &mut etcd_client::Client, yaml: &str) {
    let objs = kvstore::objects_from_file("test.yaml", yaml, &[]).expect("valid objects");
    kvstore::put_objects(c, &objs).await.expect("put");
}

fn xds_on(etcd: &Etcd, dir: &std::path::Path, extra: &[&str]) -> Xds {
    let url = etcd.url();
    let mut args: Vec<&OsStr> = vec![OsStr::new("--etcd"), OsStr::new(&url)];
    args.extend(extra.iter().map(OsStr::new));
    start_xds_with(dir, &args)
}

/// The shared snapshot's resources of `type_url`: name → JSON text.
/// The agent's resources of one type as the control plane holds them; none while it has
/// published no snapshot yet (404), which is how a control plane that has not listed its
/// sources answers, so a poll that races the first listing retries instead of failing.
async fn resources(debug: SocketAddr, type_url: &str) -> BTreeMap<String, String> {
    let path = format!("/debug/config_dump?proxyID={AGENT}&format=membrane");
    let (status, body) = common::request("127.0.0.1".parse().unwrap(), debug, "GET", &path)
        .await
        .expect("debug request");
    if status == 404 && body.starts_with("no snapshot for proxy") {
        return BTreeMap::new();
    }
    assert_eq!(status, 200, "{path}: {body}");
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    v["types"][type_url]["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["config"].to_string(),
            )
        })
        .collect()
}

/// Pod address → identity, from NPHDS.
async fn identities(debug: SocketAddr) -> BTreeMap<String, String> {
    let hosts = resources(debug, NETWORK_POLICY_HOSTS).await;
    let mut out = BTreeMap::new();
    for ip in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        for (id, text) in &hosts {
            if text.contains(&format!("\"{ip}\"")) {
                out.insert(ip.to_string(), id.clone());
            }
        }
    }
    out
}

async fn deathstar_policy(debug: SocketAddr) -> String {
    resources(debug, NETWORK_POLICY)
        .await
        .remove("127.0.0.2")
        .unwrap_or_default()
}

/// etcd holding three pods and the Star Wars L7 policy, a client of it, and the control
/// plane on it (with its source directory).
async fn starwars_in_etcd() -> (Etcd, etcd_client::Client, tempfile::TempDir, Xds) {
    let etcd = Etcd::start();
    let mut c = etcd_client(&etcd).await;
    store(&mut c, &pods(&[0, 1, 2])).await;
    store(&mut c, &starwars::l7(80, "/v1/request-landing")).await;
    let dir = tempfile::tempdir().unwrap();
    let xds = xds_on(&etcd, dir.path(), &[]);
    (etcd, c, dir, xds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_policy_is_served_bad_values_keep_the_last_good_and_delete_removes_it() {
    let (_etcd, mut c, _dir, xds) = starwars_in_etcd().await;

    // Served from etcd alone: the L7 rule reaches the deathstar's NPDS.
    eventually(LIMIT, "the etcd policy in NPDS", || async {
        deathstar_policy(xds.debug())
            .await
            .contains("/v1/request-landing")
            .then_some(())
    })
    .await;

    // A bad value written straight to etcd: rejected with its key named,
    // counted, and the last good version stays in force.
    let key = kvstore::object_key("CiliumNetworkPolicy", Some("default"), "rule1");
    let bad = serde_json::json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "rule1", "namespace": "default"},
        "spec": {"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": "99999"}]}]}]},
    });
    c.put(key.as_str(), bad.to_string(), None).await.unwrap();
    let rejection = eventually(LIMIT, "the rejection in sourcez", || async {
        let s = debug_json(xds.debug(), "/debug/sourcez").await;
        s["sources"]
            .as_array()?
            .iter()
            .find(|x| x["kind"] == "etcd")?["status"]["keys"]
            .as_array()?
            .iter()
            .find(|k| k["key"] == key.as_str())?["rejected"]
            .as_str()
            .map(str::to_owned)
    })
    .await;
    assert!(
        rejection.starts_with(&format!(
            "{key}: CiliumNetworkPolicy default/rule1: spec.ingress[0].toPorts[0].ports[0].port"
        )),
        "{rejection}"
    );
    let metrics = debug_get(xds.debug(), "/metrics").await;
    assert!(
        metrics.contains("membrane_xds_source_errors_total{source=\"etcd\"} 1"),
        "{metrics}"
    );
    assert!(deathstar_policy(xds.debug())
        .await
        .contains("/v1/request-landing"));

    // A value whose name disagrees with its key is rejected too.
    let pod_key = kvstore::object_key("Pod", Some("default"), "xwing");
    c.put(
        pod_key.as_str(),
        r#"{"kind":"Pod","metadata":{"name":"ywing","namespace":"default"}}"#,
        None,
    )
    .await
    .unwrap();
    eventually(LIMIT, "the name mismatch reported", || async {
        let s = debug_json(xds.debug(), "/debug/sourcez").await;
        s.to_string()
            .contains("metadata.name: \\\"ywing\\\" does not match the key (xwing)")
            .then_some(())
    })
    .await;
    assert!(
        identities(xds.debug()).await.contains_key("127.0.0.4"),
        "the xwing stays"
    );

    // Deleting the key removes the policy from what is served.
    assert!(kvstore::delete(&mut c, &key).await.unwrap());
    eventually(LIMIT, "the policy gone from NPDS", || async {
        let p = deathstar_policy(xds.debug()).await;
        (!p.is_empty() && !p.contains("request-landing")).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_control_planes_agree_on_identities_whatever_order_they_see_pods() {
    let etcd = Etcd::start();
    let mut c = etcd_client(&etcd).await;

    // Two allocators racing over the same label sets in opposite orders.
    let sets: Vec<LabelSet> = (0..12)
        .map(|i| LabelSet::parse(&format!("k8s:app=a{i}")).unwrap())
        .collect();
    let mut rev = sets.clone();
    rev.reverse();
    let (mut a, mut b) = (IdentityStore::new(c.clone()), IdentityStore::new(c.clone()));
    let run = |store: &mut IdentityStore, sets: Vec<LabelSet>| {
        let mut store = store.clone();
        async move {
            let mut out = BTreeMap::new();
            for s in sets {
                out.insert(s.to_string(), store.allocate(&s).await.unwrap().0);
            }
            out
        }
    };
    let (ra, rb) = tokio::join!(run(&mut a, sets.clone()), run(&mut b, rev));
    assert_eq!(ra, rb, "both racers got the same numbers");
    let mut numbers: Vec<u32> = ra.values().copied().collect();
    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(
        numbers.len(),
        sets.len(),
        "no number shared by two label sets"
    );
    // The labels are readable back from the number.
    let stored = kvstore::list_identities(&mut c).await.unwrap();
    for (labels, n) in &ra {
        assert_eq!(&stored[n], labels);
    }

    // Two control-plane processes fed the pods (from their own directories)
    // in opposite orders, on the same etcd.
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::write(da.path().join("pods.yaml"), pods(&[2, 1, 0])).unwrap();
    std::fs::write(db.path().join("pods.yaml"), pods(&[0, 1, 2])).unwrap();
    let xa = xds_on(&etcd, da.path(), &[]);
    let xb = xds_on(&etcd, db.path(), &[]);
    let ids_a = eventually(LIMIT, "replica A's identities", || async {
        let m = identities(xa.debug()).await;
        (m.len() == 3).then_some(m)
    })
    .await;
    let ids_b = eventually(LIMIT, "replica B's identities", || async {
        let m = identities(xb.debug()).await;
        (m.len() == 3).then_some(m)
    })
    .await;
    assert_eq!(ids_a, ids_b);
    let stored = kvstore::list_identities(&mut c).await.unwrap();
    let xwing: u32 = ids_a["127.0.0.4"].parse().unwrap();
    assert!(stored[&xwing].contains("k8s:class=xwing"), "{stored:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_expire_with_the_lease_of_a_dead_replica() {
    let etcd = Etcd::start();
    let mut c = etcd_client(&etcd).await;
    store(&mut c, &pods(&[0, 1, 2])).await;
    let dir = tempfile::tempdir().unwrap();
    let a = xds_on(
        &etcd,
        dir.path(),
        &["--etcd-lease-ttl", "2", "--etcd-replica", "a"],
    );
    let b = xds_on(
        &etcd,
        dir.path(),
        &["--etcd-lease-ttl", "2", "--etcd-replica", "b"],
    );
    let owners = |c: &etcd_client::Client| {
        let mut c = c.clone();
        async move {
            let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (k, v) in kvstore::list(&mut c, kvstore::IPCACHE).await.unwrap() {
                let rest = k.strip_prefix(kvstore::IPCACHE).unwrap();
                let (ip, replica) = rest.rsplit_once('/').unwrap();
                let e: kvstore::IpEntry = serde_json::from_str(&v).unwrap();
                m.entry(replica.to_string())
                    .or_default()
                    .push(format!("{ip}={}", e.identity));
            }
            m
        }
    };
    let both = eventually(LIMIT, "both replicas registered", || async {
        let m = owners(&c).await;
        (m.get("a").map(Vec::len) == Some(3) && m.get("b").map(Vec::len) == Some(3)).then_some(m)
    })
    .await;
    assert_eq!(both["a"], both["b"], "same addresses, same identities");
    let served = identities(a.debug()).await;
    for e in &both["a"] {
        let (ip, id) = e.split_once('=').unwrap();
        assert_eq!(served[ip], id, "registered what NPHDS serves");
    }

    // Replica a dies without a word (SIGKILL): its entries go with its
    // lease; replica b's stay.
    drop(a);
    let after = eventually(LIMIT, "replica a's entries expired", || async {
        let m = owners(&c).await;
        (!m.contains_key("a")).then_some(m)
    })
    .await;
    assert_eq!(after["b"].len(), 3);

    // Replica b is stopped (SIGTERM): it revokes its lease on the way out,
    // so its entries go at once rather than after the TTL.
    let mut b = b;
    let pid = b.proc.0.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let exited = b.proc.0.wait().unwrap();
    assert!(exited.success(), "{exited:?}");
    assert!(
        owners(&c).await.is_empty(),
        "entries revoked with the lease on shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_keeps_the_last_snapshot_and_the_control_plane_recovers() {
    let (mut etcd, _c, dir, xds) = starwars_in_etcd().await;
    eventually(LIMIT, "the etcd policy in NPDS", || async {
        deathstar_policy(xds.debug())
            .await
            .contains("/v1/request-landing")
            .then_some(())
    })
    .await;
    let before = identities(xds.debug()).await;

    etcd.stop();
    eventually(LIMIT, "the lost etcd reported", || async {
        let s = debug_json(xds.debug(), "/debug/sourcez").await;
        s["last_rejections"]
            .to_string()
            .contains("unreachable, the last good state stays in force")
            .then_some(())
    })
    .await;
    assert!(deathstar_policy(xds.debug())
        .await
        .contains("/v1/request-landing"));
    assert_eq!(identities(xds.debug()).await, before);

    // A pod appears (in the directory source) while etcd is down: it cannot
    // get a cluster-wide identity, says so, and the others are untouched.
    std::fs::write(
        dir.path().join("awing.yaml"),
        "kind: Pod\nmetadata: {name: awing, namespace: default, labels: {class: awing}}\nstatus: {podIP: 127.0.0.6}\n",
    )
    .unwrap();
    eventually(LIMIT, "the awing's missing identity reported", || async {
        let s = debug_json(xds.debug(), "/debug/sourcez").await;
        s["translation_errors"]
            .to_string()
            .contains("k8s:class=awing")
            .then_some(())
    })
    .await;
    assert_eq!(identities(xds.debug()).await, before);

    // Back with the same data: changes flow again, the awing gets its
    // identity with no further change, and a new pod gets one too.
    etcd.restart();
    eventually(LIMIT, "the awing's identity once etcd is back", || async {
        let hosts = resources(xds.debug(), NETWORK_POLICY_HOSTS).await;
        hosts
            .values()
            .any(|h| h.contains("\"127.0.0.6\""))
            .then_some(())
    })
    .await;
    let mut c = etcd_client(&etcd).await;
    store(&mut c, &starwars::l7(80, "/v1/exhaust-port")).await;
    store(
        &mut c,
        "kind: Pod\nmetadata: {name: ywing, namespace: default, labels: {class: ywing}}\nstatus: {podIP: 127.0.0.5}\n",
    )
    .await;
    eventually(
        LIMIT,
        "the new policy and pod after the restart",
        || async {
            let p = deathstar_policy(xds.debug()).await;
            let hosts = resources(xds.debug(), NETWORK_POLICY_HOSTS).await;
            (p.contains("/v1/exhaust-port") && hosts.values().any(|h| h.contains("\"127.0.0.5\"")))
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        identities(xds.debug()).await,
        before,
        "identities survive the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_with_a_client_certificate_is_a_source() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"), "etcd-ca");
    let (sc, sk) = pki.issue("etcd-server", "IP:127.0.0.1", Validity::Days(1));
    let (cc, ck) = pki.issue(
        "xds-client",
        "URI:spiffe://cluster.local/ns/membrane-system/sa/membrane-xds",
        Validity::Days(1),
    );
    let etcd = Etcd::start_tls(&sc, &sk, &pki.ca);
    let tls = kvstore::EtcdTls {
        ca: pki.ca.clone(),
        client: Some((cc.clone(), ck.clone())),
    };
    let mut c = etcd_client_tls(&etcd, Some(&tls)).await;
    store(&mut c, &pods(&[0, 1, 2])).await;
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let (ca, cc, ck) = (
        pki.ca.to_str().unwrap().to_string(),
        cc.to_str().unwrap().to_string(),
        ck.to_str().unwrap().to_string(),
    );
    let xds = xds_on(
        &etcd,
        &src,
        &["--etcd-ca", &ca, "--etcd-cert", &cc, "--etcd-key", &ck],
    );
    eventually(
        LIMIT,
        "the pods stored in etcd (TLS) to be served",
        || async { (identities(xds.debug()).await.len() == 3).then_some(()) },
    )
    .await;
}

/// One client given a three-member cluster's endpoints answers on the first try while any
/// one member is dead (the leader included, whose death costs the cluster an election):
/// requests move on to a member that can serve them, writes made meanwhile are kept, and
/// a restarted member catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_three_members_keeps_working_with_any_one_of_them_killed() {
    let mut members = Etcd::cluster(3);
    let urls: Vec<String> = members.iter().map(Etcd::url).collect();
    let mut c = kvstore::connect(&urls).await.unwrap();
    let mut ids = IdentityStore::new(c.clone());
    let mut known = BTreeMap::new();
    for (down, member) in members.iter_mut().enumerate() {
        member.stop();
        for i in 0..10 {
            let key = format!("{}test/{down}/{i}", kvstore::ROOT);
            // Longer than etcd's own deadline for a proposal the dead leader took with it
            // (about 7 s here), after which it answers UNAVAILABLE and the client moves on.
            kvstore::within(Duration::from_secs(20), c.put(key.as_str(), "v", None))
                .await
                .unwrap_or_else(|e| panic!("put {key} with member {down} down: {e}"));
            assert_eq!(kvstore::list(&mut c, &key).await.unwrap().len(), 1);
        }
        let labels = LabelSet::parse(&format!("k8s:app=down-{down}")).unwrap();
        let id = ids
            .allocate(&labels)
            .await
            .unwrap_or_else(|e| panic!("identity with member {down} down: {e}"));
        known.insert(id, labels.to_string());
        member.restart();
        // Caught up: it answers a linearizable read of everything written without it.
        let mut alone = kvstore::connect(&[member.url()]).await.unwrap();
        let prefix = format!("{}test/{down}/", kvstore::ROOT);
        eventually(LIMIT, "the restarted member to catch up", || {
            let (mut a, p) = (alone.clone(), prefix.clone());
            async move { (kvstore::list(&mut a, &p).await.ok()?.len() == 10).then_some(()) }
        })
        .await;
        alone = kvstore::connect(&urls).await.unwrap();
        let all = kvstore::list_identities(&mut alone).await.unwrap();
        for (id, l) in &known {
            assert_eq!(all.get(&id.0), Some(l), "{all:?}");
        }
    }
}

/// A control plane that starts while etcd is down (a restart during an etcd outage)
/// publishes nothing until it has listed etcd: a snapshot from the directory alone would
/// hand every client that connects (sidecars and agents resyncing after the restart among
/// them) a state without etcd's policies, and they would put it in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_started_while_etcd_is_down_publishes_nothing_until_it_listed() {
    let mut etcd = Etcd::start();
    let mut c = etcd_client(&etcd).await;
    store(&mut c, &starwars::l7(80, "/v1/request-landing")).await;
    drop(c);
    etcd.stop();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pods.yaml"), pods(&[0, 1, 2])).unwrap();
    let xds = xds_on(&etcd, dir.path(), &[]);
    xds.wait_for_log(
        "etcd not listed yet; publishing no snapshot until it is",
        LIMIT,
    );
    xds.wait_for_log("source not read yet; publishing nothing until it is", LIMIT);
    let s = debug_json(xds.debug(), "/debug/sourcez").await;
    assert_eq!(s["snapshots"], serde_json::json!([]), "{s}");

    etcd.restart();
    eventually(
        LIMIT,
        "the etcd policy in NPDS once etcd is listed",
        || async {
            deathstar_policy(xds.debug())
                .await
                .contains("/v1/request-landing")
                .then_some(())
        },
    )
    .await;
}
