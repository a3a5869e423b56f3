use super::*;

fn sidecar() -> Sidecar {
    Sidecar::new(
        "membrane/membrane-proxy:test",
        "https://xds:15012",
        "default",
    )
}

fn review_of(pod: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": "default",
            "operation": "CREATE",
            "object": pod,
        }
    })
}

fn run(doc: &Value, path: &str) -> Result<Reviewed, ReviewError> {
    review(&serde_json::to_vec(doc).unwrap(), path, &sidecar())
}

fn patch_of(r: &Reviewed) -> Vec<Value> {
    let b64 = r.review["response"]["patch"].as_str().expect("a patch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn pod(meta: Value, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
}

fn app() -> Value {
    json!({"containers": [{"name": "app", "image": "nginx", "ports": [{"containerPort": 8080}]}]})
}

#[test]
fn path_parameters_become_sidecar_environment() {
    assert_eq!(path_env("/inject").unwrap(), vec![]);
    assert_eq!(path_env("/inject/").unwrap(), vec![]);
    assert_eq!(
        path_env("/inject/cluster/c1/net/n--slash--1/foo_bar/x/odd").unwrap(),
        vec![
            ("ISTIO_META_CLUSTER_ID".into(), "c1".into()),
            ("ISTIO_META_NETWORK".into(), "n/1".into()),
            ("FOO_BAR".into(), "x".into()),
        ]
    );
    assert!(matches!(
        path_env("/inject/a=b/c"),
        Err(ReviewError::BadPathKey { .. })
    ));
}

/// The pod of a review with the answer's patch applied.
fn applied(doc: &Value, r: &Reviewed) -> Value {
    let patch: json_patch::Patch = serde_json::from_value(Value::Array(patch_of(r))).unwrap();
    let mut pod = doc["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).unwrap();
    pod
}

#[test]
fn a_plain_pod_gets_a_native_sidecar_and_the_status_annotation() {
    let doc = review_of(pod(json!({"name": "web"}), app()));
    let r = run(&doc, "/inject").unwrap();
    assert_eq!(r.outcome, Outcome::Injected);
    assert_eq!(r.pod, "default/web");
    assert_eq!(r.review["response"]["uid"], "u-1");
    assert_eq!(r.review["response"]["allowed"], true);
    assert_eq!(r.review["response"]["patchType"], "JSONPatch");
    let p = applied(&doc, &r);
    assert_eq!(
        p["metadata"]["annotations"][STATUS_ANNOTATION],
        r#"{"initContainers":["istio-proxy"],"containers":null,"volumes":["istio-envoy","istio-data","istio-podinfo","membrane-records","membrane-certs","istio-token","istiod-ca-cert"],"imagePullSecrets":null,"revision":"default"}"#
    );
    assert_eq!(
        p["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"],
        "app"
    );
    assert_eq!(
        p["metadata"]["labels"]["security.istio.io/tlsMode"],
        "istio"
    );
    assert_eq!(
        p["spec"]["containers"],
        app()["containers"],
        "app untouched"
    );
    let c = &p["spec"]["initContainers"][0];
    assert_eq!(c["name"], CONTAINER);
    assert_eq!(c["restartPolicy"], "Always");
    assert_eq!(c["args"], json!(["sidecar"]));
    assert_eq!(c["securityContext"]["runAsUser"], 1337);
    let env = |name: &str| {
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no {name}"))
            .clone()
    };
    assert_eq!(
        env("PROXY_CONFIG")["value"],
        "{\"discoveryAddress\":\"xds:15012\"}\n"
    );
    assert_eq!(
        env("ISTIO_META_POD_PORTS")["value"],
        r#"[{"containerPort":8080}]"#
    );
    assert_eq!(
        env("ISTIO_META_OWNER")["value"],
        "kubernetes://apis/v1/namespaces/default/pods/web"
    );
    assert_eq!(
        env("INSTANCE_IP")["valueFrom"]["fieldRef"]["fieldPath"],
        "status.podIP"
    );
    // No serviceAccountName: the `default` account's Secret, optional beside the token
    // and the mesh root that let the sidecar ask the CA instead.
    let vols = p["spec"]["volumes"].as_array().unwrap();
    let n = vols.len();
    assert_eq!(
        vols[n - 3],
        json!({"name": CERTS_VOLUME, "secret": {"secretName": "membrane.default", "optional": true}})
    );
    assert_eq!(
        vols[n - 2]["projected"]["sources"][0]["serviceAccountToken"],
        json!({"audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"})
    );
    assert_eq!(
        vols[n - 1],
        json!({"name": "istiod-ca-cert", "configMap": {"name": "istio-ca-root-cert", "optional": true}})
    );
    // No CA_ADDR unless configured: the sidecar's CA is then its control plane.
    assert!(c["env"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["name"] != "CA_ADDR"));
}

#[test]
fn plain_containers_hold_the_application_and_plaintext_needs_no_certificate() {
    let mut s = sidecar();
    s.native_sidecars = false;
    s.xds_address = "http://xds:15010".into();
    let ann = json!({"proxy.istio.io/config": "holdApplicationUntilProxyStarts: true\nproxyMetadata:\n  FOO: bar\n"});
    let doc = review_of(pod(json!({"name": "web", "annotations": ann}), app()));
    let r = review(&serde_json::to_vec(&doc).unwrap(), "/inject", &s).unwrap();
    let p = applied(&doc, &r);
    assert!(p["spec"].get("initContainers").is_none());
    let c = &p["spec"]["containers"][0];
    assert_eq!(c["name"], CONTAINER, "held: the proxy first");
    assert!(c.get("restartPolicy").is_none());
    assert_eq!(
        c["lifecycle"]["postStart"]["exec"]["command"],
        json!(["membrane-proxy", "wait"])
    );
    let env = c["env"].as_array().unwrap();
    assert!(env.contains(&json!({"name": "FOO", "value": "bar"})));
    assert!(env.contains(&json!({"name": "PROXY_CONFIG", "value":
        "{\"controlPlaneAuthPolicy\":\"NONE\",\"discoveryAddress\":\"xds:15010\",\"holdApplicationUntilProxyStarts\":true,\"proxyMetadata\":{\"FOO\":\"bar\"}}\n"})));
    assert!(c
        .get("volumeMounts")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["name"] != CERTS_VOLUME));
    assert_eq!(
        p["metadata"]["annotations"][STATUS_ANNOTATION],
        r#"{"initContainers":null,"containers":["istio-proxy"],"volumes":["istio-envoy","istio-data","istio-podinfo","membrane-records"],"imagePullSecrets":null,"revision":"default"}"#
    );
}

#[test]
fn a_bad_proxy_config_annotation_refuses_the_pod_with_the_reason() {
    for (v, want) in [
        ("[1, 2]", "is not a map of ProxyConfig fields"),
        ("a: [", "not YAML"),
    ] {
        let ann = json!({"proxy.istio.io/config": v});
        let doc = review_of(pod(json!({"name": "web", "annotations": ann}), app()));
        let r = run(&doc, "/inject").unwrap();
        let Outcome::Denied(why) = &r.outcome else {
            panic!("{:?}", r.outcome)
        };
        assert!(
            why.contains("proxy.istio.io/config") && why.contains(want),
            "{why}"
        );
        assert_eq!(r.review["response"]["allowed"], false);
        assert_eq!(r.review["response"]["status"]["message"], json!(why));
        assert!(r.review["response"].get("patch").is_none());
    }
}

#[test]
fn bad_capture_annotations_refuse_the_pod_only_when_it_would_be_injected() {
    let ann = json!({
        "traffic.sidecar.istio.io/excludeOutboundPorts": "80,8o",
        "traffic.sidecar.istio.io/includeOutboundIPRanges": "*",
    });
    let doc = review_of(pod(json!({"name": "web", "annotations": ann}), app()));
    let r = run(&doc, "/inject").unwrap();
    let Outcome::Denied(why) = &r.outcome else {
        panic!("{:?}", r.outcome)
    };
    assert_eq!(
        why,
        "istio-proxy not injected: invalid value '80,8o' for annotation \
         'traffic.sidecar.istio.io/excludeOutboundPorts': excludeOutboundPorts invalid: \
         failed parsing port '8o': not a port number (1-65535)"
    );
    let resp = &r.review["response"];
    assert_eq!(resp["allowed"], false);
    assert_eq!(resp["uid"], "u-1");
    assert_eq!(resp["status"]["code"], 400);
    assert_eq!(resp["status"]["message"], json!(why));
    assert!(resp.get("patch").is_none());

    // Istio validates only pods it injects: an opted-out pod is left alone.
    let mut opted_out = ann.clone();
    opted_out["sidecar.istio.io/inject"] = json!("false");
    let doc = review_of(pod(json!({"name": "web", "annotations": opted_out}), app()));
    assert!(matches!(
        run(&doc, "/inject").unwrap().outcome,
        Outcome::Skipped(_)
    ));
    // Good values inject.
    let good = json!({"traffic.sidecar.istio.io/excludeOutboundPorts": "80, 8080"});
    let doc = review_of(pod(json!({"name": "web", "annotations": good}), app()));
    assert_eq!(run(&doc, "/inject").unwrap().outcome, Outcome::Injected);
}

#[test]
fn workload_names_follow_istio() {
    let rs = json!({"generateName": "web-5d9f8-", "labels": {"pod-template-hash": "5d9f8"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d9f8", "controller": true}]});
    assert_eq!(
        sidecar::workload(&rs),
        ("web".into(), "apps/v1".into(), "Deployment".into())
    );
    let job = json!({"generateName": "backup-29012345-",
        "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "backup-29012345", "controller": true}]});
    assert_eq!(
        sidecar::workload(&job),
        ("backup".into(), "batch/v1".into(), "CronJob".into())
    );
    let plain_job = json!({"generateName": "once-",
        "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "once", "controller": true}]});
    assert_eq!(
        sidecar::workload(&plain_job),
        ("once".into(), "batch/v1".into(), "Job".into())
    );
    let bare = json!({"name": "p"});
    assert_eq!(
        sidecar::workload(&bare),
        ("p".into(), "v1".into(), "Pod".into())
    );
}

#[test]
fn skip_rules() {
    let cases = [
        (
            json!({"name": "a", "annotations": {INJECT_KEY: "false"}}),
            app(),
        ),
        (json!({"name": "a", "labels": {INJECT_KEY: "off"}}), app()),
        (
            json!({"name": "a", "annotations": {STATUS_ANNOTATION: "{}"}}),
            app(),
        ),
        (
            json!({"name": "a"}),
            json!({"hostNetwork": true, "containers": [{"name": "app", "image": "x"}]}),
        ),
        (
            json!({"name": "a"}),
            json!({"containers": [{"name": "app", "image": "x"}, {"name": CONTAINER, "image": "y"}]}),
        ),
        (json!({"name": "a", "namespace": "kube-system"}), app()),
        (
            json!({"name": "a", "labels": {REVISION_LABEL: "canary"}}),
            app(),
        ),
        (
            json!({"name": "a"}),
            json!({"initContainers": [{"name": CONTAINER, "image": "y", "restartPolicy": "Always"}],
                   "containers": [{"name": "app", "image": "x"}]}),
        ),
        (
            json!({"name": "a"}),
            json!({"containers": [{"name": "app", "image": "x"}, {"name": LEGACY_CONTAINER, "image": "y"}]}),
        ),
    ];
    for (meta, spec) in cases {
        let r = run(&review_of(pod(meta.clone(), spec)), "/inject").unwrap();
        assert!(
            matches!(r.outcome, Outcome::Skipped(_)),
            "{meta}: {:?}",
            r.outcome
        );
        assert!(r.review["response"].get("patch").is_none());
        assert_eq!(r.review["response"]["allowed"], true);
    }
    // The label wins over the annotation, as in Istio.
    let r = run(
            &review_of(pod(
                json!({"name": "a", "labels": {INJECT_KEY: "true"}, "annotations": {INJECT_KEY: "false"}}),
                app(),
            )),
            "/inject",
        )
        .unwrap();
    assert_eq!(r.outcome, Outcome::Injected);
}

#[test]
fn a_pod_that_cannot_take_the_sidecar_is_allowed_with_a_warning() {
    for (meta, spec, want) in [
        (json!("x"), app(), "metadata is \"x\", not a map"),
        (
            json!({"annotations": []}),
            app(),
            "metadata.annotations is [], not a map",
        ),
        (
            json!({}),
            json!({"containers": {}}),
            "spec.containers is {}, not a list",
        ),
        (json!({}), json!({}), "the pod has no spec.containers"),
    ] {
        let r = run(&review_of(pod(meta, spec)), "/inject").unwrap();
        assert_eq!(
            r.outcome,
            Outcome::NotPatchable(format!("{CONTAINER} not injected: {want}"))
        );
    }
    let spec =
        json!({"containers": [{"name": "app", "image": "x", "ports": [{"containerPort": 15021}]}]});
    let r = run(&review_of(pod(json!({"name": "a"}), spec)), "/inject").unwrap();
    let Outcome::NotPatchable(w) = &r.outcome else {
        panic!("{:?}", r.outcome)
    };
    assert!(w.contains("port 15021"), "{w}");
    assert_eq!(r.review["response"]["warnings"][0], json!(w));
    assert!(r.review["response"].get("patch").is_none());
}

#[test]
fn malformed_input_names_what_is_wrong() {
    let cases: [(&[u8], &str); 7] = [
            (b"{", "body is not JSON"),
            (br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#, "apiVersion is \"admission.k8s.io/v1beta1\""),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"Pod"}"#, "kind is \"Pod\""),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#, "request: missing"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"object":{}}}"#, "request.uid: missing"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x","kind":{"group":"apps","version":"v1","kind":"Deployment"},"object":{}}}"#, "request.kind is"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x","object":{"kind":"Service"}}}"#, "request.object.kind is \"Service\""),
        ];
    for (body, want) in cases {
        let e = review(body, "/inject", &sidecar()).unwrap_err().to_string();
        assert!(e.contains(want), "{e} lacks {want}");
    }
}
