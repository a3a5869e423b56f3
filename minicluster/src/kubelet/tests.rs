use super::*;

fn deathstar(node: usize) -> Pod {
    Pod {
        name: if node == 0 {
            "deathstar-1"
        } else {
            "deathstar-2"
        },
        labels: DEATHSTAR,
        ip: if node == 0 {
            "10.200.0.10"
        } else {
            "10.201.0.11"
        },
        node,
    }
}

fn env<'a>(c: &'a ProxyContainer, k: &str) -> &'a str {
    c.env
        .iter()
        .find(|(n, _)| n == k)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {k} in {:?}", c.env))
}

#[test]
fn the_injected_container_runs_the_sidecar_with_the_pods_own_values() {
    let run = Path::new("/tmp/ds-run");
    let pod = admitted(&deathstar(0), run).unwrap();
    let c = ProxyContainer::of(&pod).unwrap();
    assert_eq!(c.argv, ["membrane-proxy", "sidecar"]);
    // The downward API, resolved from the pod as the kubelet resolves it.
    assert_eq!(env(&c, "POD_NAME"), "deathstar-1");
    assert_eq!(env(&c, "POD_NAMESPACE"), "default");
    assert_eq!(env(&c, "INSTANCE_IP"), "10.200.0.10");
    assert_eq!(env(&c, "SERVICE_ACCOUNT"), "default");
    assert_eq!(env(&c, "HOST_IP"), "192.168.79.1");
    let pc: Value = serde_json::from_str(env(&c, "PROXY_CONFIG")).unwrap();
    assert_eq!(pc["discoveryAddress"], "192.168.79.1:15012");
    assert_eq!(
        env(&c, "MEMBRANE_HANDOVER_SOCKET"),
        "/tmp/ds-run/handover.sock"
    );
    assert!(env(&c, "ISTIO_KUBE_APP_PROBERS").contains("/app-health/app/readyz"));
    assert_eq!(c.user, (1337, 1337));
    assert!(c.native && c.mounts_certs && c.post_start.is_none());
    let ready = |path: &str, port| HttpProbe {
        port,
        path: path.into(),
    };
    assert_eq!(c.startup, Some(ready("/healthz/ready", 15021)));
    assert_eq!(c.readiness, Some(ready("/healthz/ready", 15021)));
    // The app's probe now goes through the sidecar's status port.
    assert_eq!(
        app_readiness(&pod).unwrap(),
        [ready("/app-health/app/readyz", 15020)]
    );
}

#[test]
fn a_plain_container_holds_the_app_with_its_post_start_hook() {
    let pod = admitted(&deathstar(1), Path::new("/tmp/r")).unwrap();
    assert_eq!(pod["spec"]["containers"][0]["name"], inject::CONTAINER);
    let c = ProxyContainer::of(&pod).unwrap();
    assert!(!c.native);
    assert_eq!(
        c.post_start,
        Some(vec!["membrane-proxy".to_owned(), "wait".to_owned()])
    );
    assert_eq!(env(&c, "HOST_IP"), "192.168.79.2");
}

#[test]
fn what_the_kubelet_cannot_resolve_is_an_error() {
    let mut pod = admitted(&deathstar(0), Path::new("/tmp/r")).unwrap();
    pod["status"] = json!({});
    let e = ProxyContainer::of(&pod).unwrap_err();
    assert!(format!("{e:#}").contains("fieldRef status.podIP"), "{e:#}");
    let xwing = Pod {
        name: "xwing",
        labels: XWING,
        ip: "10.200.0.3",
        node: 0,
    };
    let e = injected(&source::ship_object(&xwing), &injector()).unwrap_err();
    assert!(e.to_string().contains("did not inject"), "{e}");
}
