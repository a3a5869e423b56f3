use super::*;

fn sidecar() -> Sidecar {
    Sidecar {
        image: "membrane/membrane-proxy:test".into(),
        xds_address: "https://xds:15012".into(),
        revision: "default".into(),
    }
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

#[test]
fn a_plain_pod_gets_the_sidecar_and_the_status_annotation() {
    let r = run(&review_of(pod(json!({"name": "web"}), app())), "/inject").unwrap();
    assert_eq!(r.outcome, Outcome::Injected);
    assert_eq!(r.pod, "default/web");
    assert_eq!(r.review["response"]["uid"], "u-1");
    assert_eq!(r.review["response"]["allowed"], true);
    assert_eq!(r.review["response"]["patchType"], "JSONPatch");
    let ops = patch_of(&r);
    assert_eq!(ops[0]["path"], "/metadata/annotations");
    let status: Value =
        serde_json::from_str(ops[0]["value"][STATUS_ANNOTATION].as_str().unwrap()).unwrap();
    assert_eq!(status["containers"], json!([CONTAINER]));
    assert_eq!(ops[0]["value"][DEFAULT_CONTAINER_ANNOTATION], "app");
    let c = &ops[1]["value"];
    assert_eq!(ops[1]["path"], "/spec/containers/-");
    assert_eq!(c["securityContext"]["runAsUser"], 1337);
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args
        .windows(2)
        .any(|w| w == ["--upstream", "127.0.0.1:8080"]));
    assert!(args
        .windows(2)
        .any(|w| w == ["--xds-cert", "/etc/certs/cert-chain.pem"]));
    assert_eq!(c["volumeMounts"][0]["mountPath"], CERTS_DIR);
    // No serviceAccountName: the `default` account's Secret.
    assert_eq!(
        ops[2],
        json!({"op": "add", "path": "/spec/volumes", "value": [
                {"name": CERTS_VOLUME, "secret": {"secretName": "membrane.default"}}]})
    );
}

#[test]
fn existing_annotations_get_escaped_keys() {
    let r = run(
        &review_of(pod(
            json!({"name": "web", "annotations": {"a": "b"}}),
            app(),
        )),
        "/inject",
    )
    .unwrap();
    let ops = patch_of(&r);
    assert_eq!(
        ops[0]["path"],
        "/metadata/annotations/sidecar.istio.io~1status"
    );
    assert_eq!(
        ops[1]["path"],
        "/metadata/annotations/kubectl.kubernetes.io~1default-container"
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
