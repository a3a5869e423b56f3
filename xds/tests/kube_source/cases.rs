//! The cases: policy served and followed through watches, status written, relists; the
//! recorded objects valid for the schemas; a bad kubeconfig refused.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_source_serves_policy_follows_watch_writes_status_and_relists() {
    let api = FakeApi::load();
    let tmp = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(tmp.path());
    let addr = api.clone().serve(&cert, &key).await;
    let kc = kubeconfig(tmp.path(), addr, &ca);
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let xds = start_xds_with(
        &empty,
        &["--kube".as_ref(), "--kubeconfig".as_ref(), kc.as_os_str()],
    );

    // Every kind was listed (and is watched) with the kubeconfig's token.
    for (c, _) in COLLECTIONS {
        assert!(api.lists_of(c) >= 1, "{c} was not listed");
    }
    assert!(api
        .requests()
        .iter()
        .all(|r| r.authorization == "Bearer recorded-token"));

    // The deathstar's sidecar gets the L7 rule of the Star Wars policy.
    let (tx, mut s) = npds_stream(xds.grpc()).await;
    let r1 = next(&mut s).await;
    let rules = deathstar_http(&r1);
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert!(
        rules[0].0.contains("POST") && rules[0].1.contains("/v1/request-landing"),
        "{rules:?}"
    );
    tx.send(DiscoveryRequest {
        version_info: r1.version_info.clone(),
        response_nonce: r1.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();

    // Status: each policy gets its verdict once, as a merge patch on /status.
    let patches = eventually(Duration::from_secs(15), "three status patches", || async {
        let p = status_patches(&api);
        (p.len() >= 3).then_some(p)
    })
    .await;
    let find = |path: &str| {
        patches
            .iter()
            .find(|r| r.path == path)
            .unwrap_or_else(|| panic!("no PATCH of {path} in {patches:?}"))
            .clone()
    };
    let invalid =
        find("/apis/cilium.io/v2/namespaces/default/ciliumnetworkpolicies/invalid-policy/status");
    let rule1 = find("/apis/cilium.io/v2/namespaces/default/ciliumnetworkpolicies/rule1/status");
    let ccnp =
        find("/apis/cilium.io/v2/ciliumclusterwidenetworkpolicies/empire-from-world-deny/status");
    for r in [&invalid, &rule1, &ccnp] {
        assert_eq!(r.content_type, "application/merge-patch+json", "{r:?}");
        assert!(r.query.contains("fieldManager=membrane-xds"), "{r:?}");
    }
    let c = valid_condition(&invalid);
    assert_eq!(c["status"], "False", "{c}");
    assert_eq!(c["reason"], "PolicyInvalid", "{c}");
    let msg = c["message"].as_str().unwrap();
    assert!(
        msg.starts_with("spec.egress[0]"),
        "the message names the field: {msg}"
    );
    assert!(
        c["lastTransitionTime"].as_str().unwrap().ends_with('Z'),
        "{c}"
    );
    for r in [&rule1, &ccnp] {
        let c = valid_condition(r);
        assert_eq!(c["status"], "True", "{c}");
    }
    // The status written is one Cilium's CRD accepts: the invalid CNP with
    // it checks against the CRD's schema.
    let mut with_status = read_json("ciliumnetworkpolicies.json")["items"][1].clone();
    assert_eq!(name_of(&with_status), "invalid-policy");
    with_status["status"] = serde_json::from_str::<Value>(&invalid.body).unwrap()["status"].clone();
    let f = tmp.path().join("invalid-with-status.json");
    std::fs::write(&f, with_status.to_string()).unwrap();
    let out = validate(&[f]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let sourcez = debug_json(xds.debug(), "/debug/sourcez").await;
    let text = sourcez.to_string();
    assert!(
        text.contains("CiliumNetworkPolicy default/invalid-policy"),
        "{text}"
    );

    // A watch MODIFIED event: GET /v1/.* is allowed too, and is pushed.
    eventually(Duration::from_secs(10), "the CNP watch", || async {
        (api.watching(CNPS) > 0).then_some(())
    })
    .await;
    let modified = read_json("watch-rule1-modified.json");
    api.event(CNPS, "MODIFIED", modified["object"].clone());
    let r2 = next(&mut s).await;
    assert_ne!(r2.version_info, r1.version_info);
    let rules = deathstar_http(&r2);
    assert_eq!(rules.len(), 2, "{rules:?}");
    assert!(rules.iter().any(|r| r.0.contains("GET")), "{rules:?}");
    tx.send(DiscoveryRequest {
        version_info: r2.version_info.clone(),
        response_nonce: r2.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();

    // ADDED and DELETED: a second x-wing arrives; the invalid CNP is
    // deleted, and its rejection goes with it.
    eventually(Duration::from_secs(10), "the pods watch", || async {
        (api.watching(PODS) > 0).then_some(())
    })
    .await;
    let mut xwing2 = read_json("pods.json")["items"][3].clone();
    xwing2["metadata"]["name"] = json!("xwing-2");
    xwing2["metadata"]["uid"] = json!("3f1c2a10-6b7e-4d2a-9c1e-5a6b7c8d9e15");
    xwing2["status"]["podIP"] = json!("10.244.1.15");
    xwing2["status"]["podIPs"] = json!([{"ip": "10.244.1.15"}]);
    api.event(PODS, "ADDED", xwing2);
    let invalid_obj = read_json("ciliumnetworkpolicies.json")["items"][1].clone();
    api.event(CNPS, "DELETED", invalid_obj);
    eventually(
        Duration::from_secs(15),
        "the ADDED pod and DELETED CNP",
        || async {
            let text = debug_json(xds.debug(), "/debug/sourcez").await.to_string();
            (text.contains("Pod default/xwing-2") && !text.contains("invalid-policy")).then_some(())
        },
    )
    .await;

    // 410 Gone on the pods and CNP watches: both kinds are listed again.
    // The tiefighter was deleted while the watch was down: the relist drops
    // it; everything else keeps its state.
    let (pod_lists, cnp_lists) = (api.lists_of(PODS), api.lists_of(CNPS));
    api.lock()
        .lists
        .get_mut(PODS)
        .unwrap()
        .2
        .retain(|p| name_of(p) != "tiefighter");
    api.expire(PODS);
    api.expire(CNPS);
    eventually(Duration::from_secs(15), "the relists", || async {
        (api.lists_of(PODS) > pod_lists && api.lists_of(CNPS) > cnp_lists).then_some(())
    })
    .await;
    let pods = eventually(Duration::from_secs(15), "the relisted pods", || async {
        let v = debug_json(xds.debug(), "/debug/sourcez").await;
        let kinds = v["sources"]
            .as_array()?
            .iter()
            .find(|s| s["kind"] == "kube")?["status"]["kinds"]
            .as_array()?
            .clone();
        let pods = kinds.iter().find(|k| k["kind"] == "Pod")?.clone();
        (pods["relists"].as_u64()? >= 1).then_some(pods)
    })
    .await;
    let names = pods["objects"].to_string();
    assert!(!names.contains("tiefighter"), "{names}");
    assert!(names.contains("default/xwing\""), "{names}");
    assert!(names.contains("default/xwing-2"), "{names}");

    // The policy is still served as before, to a new stream too.
    let (_tx2, mut s2) = npds_stream(xds.grpc()).await;
    let r3 = next(&mut s2).await;
    assert_eq!(deathstar_http(&r3), deathstar_http(&r2));

    // Status is written only when it changes: the MODIFIED rule1 is still
    // valid, and the relisted objects carry their conditions already.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let patches = status_patches(&api);
    assert_eq!(patches.len(), 3, "{patches:#?}");
}

#[test]
fn recorded_objects_are_valid_for_the_crds_and_kubernetes_schemas() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let out = validate(&files);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("12 objects checked, 0 invalid"), "{text}");

    // The check can fail: a Pod port that is not a number, and a CNP whose
    // ingress is not a list, are both caught.
    let tmp = tempfile::tempdir().unwrap();
    let bad_pod = tmp.path().join("pods.json");
    std::fs::write(
        &bad_pod,
        std::fs::read_to_string(data_dir().join("pods.json"))
            .unwrap()
            .replace("\"containerPort\": 80", "\"containerPort\": \"eighty\""),
    )
    .unwrap();
    let mut cnp = read_json("ciliumnetworkpolicies.json");
    cnp["items"][0]["spec"]["ingress"] = json!("everyone");
    let bad_cnp = tmp.path().join("cnp.json");
    std::fs::write(&bad_cnp, cnp.to_string()).unwrap();
    let out = validate(&[bad_pod, bad_cnp]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("Pod default/deathstar-5b8d7f9c4d-2xkq8"),
        "{text}"
    );
    assert!(text.contains("CiliumNetworkPolicy default/rule1"), "{text}");
}

#[test]
fn a_bad_kubeconfig_is_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let kc = tmp.path().join("kubeconfig");
    std::fs::write(&kc, "apiVersion: v1\nkind: Config\nclusters: {}\n").unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_membrane-xds"))
        .arg("--plaintext-xds")
        .args(["--grpc-addr", "127.0.0.1:0", "--debug-addr", "127.0.0.1:0"])
        .arg("--kube")
        .arg("--kubeconfig")
        .arg(&kc)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("membrane-xds did not exit on a bad kubeconfig");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(
        err.contains(&format!("kubeconfig {}", kc.display())),
        "{err}"
    );
}
