//! The sidecar-injection webhook (15017 in production), against the real
//! binary over HTTPS with curl: AdmissionReviews in the API server's shape
//! are answered with a JSONPatch that, applied, gives a Pod Kubernetes'
//! schemas accept and that carries the sidecar; Istio's skip rules;
//! idempotence; malformed input named in a 400; certificate rotation.

mod common;
mod golden_pods;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use common::*;

const IMAGE: &str = "registry.test/membrane:inject-test";
const XDS: &str = "https://membrane-xds.test:15012";

fn data(name: &str) -> Value {
    let p = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap())
        .join("tests/data/inject")
        .join(name);
    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
}

fn root() -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("..")
}

/// A webhook-serving membrane-xds; `certs/` is a directory holding the
/// pair through a `current` symlink, as a Secret volume does.
struct Hook {
    xds: Xds,
    dir: tempfile::TempDir,
}

impl Hook {
    fn start(extra: &[&str]) -> Hook {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        make_certs(&certs.join("v1"));
        std::os::unix::fs::symlink("v1", certs.join("current")).unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let (cert, key) = (
            certs.join("current/cert.pem"),
            certs.join("current/key.pem"),
        );
        let mut args = webhook_args(&cert, &key);
        args.extend([
            OsStr::new("--sidecar-image"),
            OsStr::new(IMAGE),
            OsStr::new("--sidecar-xds-address"),
            OsStr::new(XDS),
        ]);
        args.extend(extra.iter().map(OsStr::new));
        let xds = start_xds_with(&src, &args);
        assert!(xds.webhook().is_some(), "the webhook is served");
        Hook { xds, dir }
    }

    fn ca(&self, version: &str) -> PathBuf {
        self.dir.path().join("certs").join(version).join("ca.pem")
    }

    /// Points `current` at `certs/VERSION` in one rename, as the kubelet
    /// updates a Secret volume.
    fn switch_to(&self, version: &str) {
        let certs = self.dir.path().join("certs");
        let tmp = certs.join("current.tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(version, &tmp).unwrap();
        std::fs::rename(&tmp, certs.join("current")).unwrap();
    }

    /// POSTs `body` to `path` with curl, trusting `ca`; (status, body).
    fn post_with(&self, ca: &Path, path: &str, ctype: &str, body: &[u8]) -> (u16, String) {
        let f = self.dir.path().join("body");
        std::fs::write(&f, body).unwrap();
        let url = format!(
            "https://127.0.0.1:{}{path}",
            self.xds.webhook().unwrap().port()
        );
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
            .arg("--cacert")
            .arg(ca)
            .args(["-H", &format!("content-type: {ctype}")])
            .arg("--data-binary")
            .arg(format!("@{}", f.display()))
            .arg(&url)
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "curl {url}: {}{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.parse().unwrap(), body.to_string())
    }

    /// membrane-xds's Prometheus metrics, from its debug port.
    fn metrics(&self) -> String {
        let out = Command::new("curl")
            .args(["-sS", &format!("http://{}/metrics", self.xds.debug())])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Each of `lines` is in the metrics.
    fn assert_metrics(&self, lines: &[&str]) {
        let metrics = self.metrics();
        for line in lines {
            assert!(metrics.contains(line), "{line} not in\n{metrics}");
        }
    }

    fn post(&self, path: &str, review: &Value) -> Value {
        let (code, body) = self.post_with(
            &self.ca("v1"),
            path,
            "application/json",
            review.to_string().as_bytes(),
        );
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

/// The patch in an answer, applied to the review's pod (None: no patch).
fn patched(review: &Value, answer: &Value) -> Option<Value> {
    golden_pods::patched(&review["request"]["object"], &answer["response"])
}

/// Kubernetes 1.34's schemas (strict: unknown fields are errors).
fn validate(pod: &Value, dir: &Path) {
    let f = dir.join("pod.json");
    std::fs::write(&f, pod.to_string()).unwrap();
    let out = Command::new("python3")
        .arg(root().join("scripts/k8s-validate.py"))
        .args(["-k", "1.34.0"])
        .arg(&f)
        .output()
        .expect("python3");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}\n{pod:#}");
    assert!(text.contains("1 objects checked, 0 invalid"), "{text}");
}

/// The injected native sidecar: the first init container.
fn sidecar(pod: &Value) -> &Value {
    let c = &pod["spec"]["initContainers"][0];
    assert_eq!(c["name"], "istio-proxy", "{pod:#}");
    c
}

fn env_value(c: &Value, name: &str) -> String {
    c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {c:#}"))["value"]
        .as_str()
        .unwrap()
        .to_string()
}

fn review_of(pod: Value) -> Value {
    let mut r = data("deployment-pod.json");
    r["request"]["object"] = pod;
    r
}

#[test]
fn recorded_pods_get_a_valid_sidecar_and_istio_status() {
    let hook = Hook::start(&[]);
    for name in ["deployment-pod.json", "annotated-pod.json"] {
        let review = data(name);
        // The input itself is a valid Pod, so what fails below is ours.
        validate(&review["request"]["object"], hook.dir.path());
        let answer = hook.post("/inject", &review);
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        assert_eq!(
            answer["response"]["uid"], review["request"]["uid"],
            "{name}"
        );
        assert_eq!(answer["response"]["allowed"], true);
        let pod = patched(&review, &answer).expect("a patch");
        validate(&pod, hook.dir.path());

        // The application's containers (no probes here) are untouched; the
        // sidecar is a native one, among the init containers.
        let before = review["request"]["object"]["spec"]["containers"]
            .as_array()
            .unwrap();
        let after = pod["spec"]["containers"].as_array().unwrap();
        assert_eq!(after, before, "{name}");
        let c = sidecar(&pod);
        assert_eq!(c["image"], IMAGE);
        assert_eq!(c["command"], json!(["membrane-proxy"]));
        assert_eq!(c["args"], json!(["sidecar"]));
        assert_eq!(c["restartPolicy"], "Always");
        // ProxyConfig's discoveryAddress is the control plane.
        let pc: Value = serde_json::from_str(&env_value(c, "PROXY_CONFIG")).unwrap();
        assert_eq!(pc["discoveryAddress"], "membrane-xds.test:15012");
        // mTLS with the service account's certificate, Istio's legacy layout.
        assert!(c["volumeMounts"].as_array().unwrap().contains(
            &json!({"name": "membrane-certs", "mountPath": "/etc/certs", "readOnly": true})
        ));
        let sa = review["request"]["object"]["spec"]["serviceAccountName"]
            .as_str()
            .unwrap_or("default");
        let vols = pod["spec"]["volumes"].as_array().expect("volumes");
        let certs = vols
            .iter()
            .find(|v| v["name"] == "membrane-certs")
            .expect("the certificate volume");
        assert_eq!(certs["secret"]["secretName"], format!("membrane.{sa}"));
        // The node agent's records socket: its host directory, in the sidecar alone.
        let records = vols
            .iter()
            .find(|v| v["name"] == "membrane-records")
            .expect("the records volume");
        assert_eq!(
            records["hostPath"],
            json!({"path": "/var/run/membrane/sidecar", "type": "DirectoryOrCreate"})
        );
        assert!(c["volumeMounts"].as_array().unwrap().contains(
            &json!({"name": "membrane-records", "mountPath": "/var/run/membrane/sidecar"})
        ));
        assert_eq!(
            env_value(c, "MEMBRANE_RECORDS_SOCKET"),
            "/var/run/membrane/sidecar/records.sock"
        );
        // The certificate Secret is optional: the projected token and the mesh root let
        // the sidecar ask the CA instead.
        assert_eq!(certs["secret"]["optional"], true);
        let token = vols
            .iter()
            .find(|v| v["name"] == "istio-token")
            .expect("the token volume");
        assert_eq!(
            token["projected"]["sources"][0]["serviceAccountToken"]["audience"],
            "istio-ca"
        );
        assert!(vols
            .iter()
            .any(|v| v["configMap"]["name"] == "istio-ca-root-cert"));
        // The pod's own volumes stay; Istio's three, the certificate's, the token's, the
        // root's and the records' join.
        let own = review["request"]["object"]["spec"]["volumes"]
            .as_array()
            .map_or(0, Vec::len);
        assert_eq!(vols.len(), own + 7, "{name}");
        let env: Vec<(String, String)> = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap().to_string(),
                    e["valueFrom"]["fieldRef"]["fieldPath"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                )
            })
            .collect();
        for (var, path) in [
            ("INSTANCE_IP", "status.podIP"),
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace"),
            ("SERVICE_ACCOUNT", "spec.serviceAccountName"),
            ("HOST_IP", "status.hostIP"),
        ] {
            assert!(env.contains(&(var.into(), path.into())), "{env:?}");
        }
        assert_eq!(
            c["ports"],
            json!([{"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"}])
        );
        assert_eq!(
            c["readinessProbe"]["httpGet"],
            json!({"path": "/healthz/ready", "port": 15021})
        );
        assert_eq!(c["securityContext"]["runAsUser"], 1337);
        assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
        assert!(c["securityContext"]["capabilities"].get("add").is_none());
        assert_eq!(c["resources"]["requests"]["cpu"], "100m");
        // eBPF capture: the proxy is the only init container.
        assert_eq!(pod["spec"]["initContainers"].as_array().unwrap().len(), 1);

        // What istioctl reads.
        let ann = &pod["metadata"]["annotations"];
        let status: Value =
            serde_json::from_str(ann["sidecar.istio.io/status"].as_str().unwrap()).unwrap();
        assert_eq!(
            status,
            json!({"initContainers": ["istio-proxy"], "containers": null,
                   "volumes": ["istio-envoy", "istio-data", "istio-podinfo", "membrane-records", "membrane-certs", "istio-token", "istiod-ca-cert"],
                   "imagePullSecrets": null, "revision": "default"})
        );
        assert_eq!(
            ann["kubectl.kubernetes.io/default-container"],
            before[0]["name"]
        );
        // Existing annotations stay.
        for (k, v) in review["request"]["object"]["metadata"]["annotations"]
            .as_object()
            .into_iter()
            .flatten()
        {
            assert_eq!(&ann[k], v, "{name}: {k}");
        }
    }
    // The Deployment's pod: its workload and ports, as Istio names them.
    let review = data("deployment-pod.json");
    let pod = patched(&review, &hook.post("/inject", &review)).unwrap();
    let c = sidecar(&pod);
    assert_eq!(env_value(c, "ISTIO_META_WORKLOAD_NAME"), "deathstar");
    assert_eq!(
        env_value(c, "ISTIO_META_OWNER"),
        "kubernetes://apis/apps/v1/namespaces/starwars/deployments/deathstar"
    );
    assert_eq!(
        env_value(c, "ISTIO_META_POD_PORTS"),
        r#"[{"containerPort":80,"protocol":"TCP"}]"#
    );
}

#[test]
fn istio_path_parameters_set_the_sidecar_environment() {
    let hook = Hook::start(&[]);
    let review = data("annotated-pod.json");
    let answer = hook.post("/inject/cluster/east/net/net--slash--1", &review);
    let pod = patched(&review, &answer).expect("a patch");
    validate(&pod, hook.dir.path());
    let env = &sidecar(&pod)["env"];
    assert!(env
        .as_array()
        .unwrap()
        .contains(&json!({"name": "ISTIO_META_CLUSTER_ID", "value": "east"})));
    assert!(env
        .as_array()
        .unwrap()
        .contains(&json!({"name": "ISTIO_META_NETWORK", "value": "net/1"})));
    let (code, body) = hook.post_with(
        &hook.ca("v1"),
        "/inject/b%3Dd/x",
        "application/json",
        review.to_string().as_bytes(),
    );
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("is not an environment variable name"),
        "{body}"
    );
}

#[test]
fn skip_rules_and_idempotence_answer_allowed_without_a_patch() {
    let hook = Hook::start(&[]);
    let base = data("deployment-pod.json")["request"]["object"].clone();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut p = base.clone();
        f(&mut p);
        p
    };
    let cases = [
        (
            "annotation inject false",
            with(&|p| p["metadata"]["annotations"] = json!({"sidecar.istio.io/inject": "false"})),
        ),
        (
            "label inject false",
            with(&|p| p["metadata"]["labels"]["sidecar.istio.io/inject"] = json!("false")),
        ),
        (
            "hostNetwork",
            with(&|p| p["spec"]["hostNetwork"] = json!(true)),
        ),
        (
            "kube-system",
            with(&|p| p["metadata"]["namespace"] = json!("kube-system")),
        ),
    ];
    for (what, pod) in cases {
        let review = review_of(pod);
        let answer = hook.post("/inject", &review);
        assert_eq!(answer["response"]["allowed"], true, "{what}");
        assert_eq!(answer["response"]["uid"], review["request"]["uid"]);
        assert!(patched(&review, &answer).is_none(), "{what}: {answer}");
    }

    // An injected pod sent again: no second container, no patch.
    let review = review_of(base.clone());
    let once = patched(&review, &hook.post("/inject", &review)).unwrap();
    let again = review_of(once.clone());
    let answer = hook.post("/inject", &again);
    assert_eq!(answer["response"]["allowed"], true);
    assert!(patched(&again, &answer).is_none(), "{answer}");
    // Only the container (say, from a manifest of an injected pod) is
    // enough to be left alone too.
    let mut only_container = once;
    only_container["metadata"]["annotations"] = json!({});
    let answer = hook.post("/inject", &review_of(only_container));
    assert!(answer["response"].get("patch").is_none(), "{answer}");

    // A pod that cannot take the sidecar is let through with a warning.
    let clash = with(&|p| p["spec"]["containers"][0]["ports"] = json!([{"containerPort": 15021}]));
    let answer = hook.post("/inject", &review_of(clash));
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("patch").is_none());
    let w = answer["response"]["warnings"][0].as_str().unwrap();
    assert!(w.contains("declares port 15021"), "{w}");

    hook.assert_metrics(&[
        r#"membrane_xds_injections_total{result="skipped"} 6"#,
        r#"membrane_xds_injections_total{result="injected"} 1"#,
        r#"membrane_xds_injections_total{result="not_patchable"} 1"#,
    ]);
}

#[test]
fn malformed_input_is_a_400_naming_what_is_wrong() {
    let hook = Hook::start(&[]);
    let ca = hook.ca("v1");
    let mut no_uid = data("deployment-pod.json");
    no_uid["request"].as_object_mut().unwrap().remove("uid");
    let mut deployment = data("deployment-pod.json");
    deployment["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    let mut service = data("deployment-pod.json");
    service["request"]["kind"] = Value::Null;
    service["request"]["object"] =
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}});
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"not json".to_vec(), "body is not JSON"),
        (
            json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {}})
                .to_string()
                .into_bytes(),
            "apiVersion is \"admission.k8s.io/v1beta1\", expected \"admission.k8s.io/v1\"",
        ),
        (
            data("deployment-pod.json")["request"]["object"].to_string().into_bytes(),
            "apiVersion is \"v1\", expected \"admission.k8s.io/v1\"",
        ),
        (
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"})
                .to_string()
                .into_bytes(),
            "AdmissionReview request: missing",
        ),
        (no_uid.to_string().into_bytes(), "request.uid: missing"),
        (deployment.to_string().into_bytes(), "request.kind is"),
        (
            service.to_string().into_bytes(),
            "request.object.kind is \"Service\", expected a Pod",
        ),
        (Vec::new(), "no body"),
    ];
    for (body, want) in cases {
        let (code, text) = hook.post_with(&ca, "/inject", "application/json", &body);
        assert_eq!(code, 400, "{want}: {text}");
        assert!(text.contains(want), "{text:?} lacks {want:?}");
    }
    let ok = data("deployment-pod.json").to_string();
    let (code, text) = hook.post_with(&ca, "/inject", "text/plain", ok.as_bytes());
    assert_eq!(code, 415, "{text}");
    assert!(text.contains("want application/json"), "{text}");
    let (code, _) = hook.post_with(&ca, "/mutate", "application/json", ok.as_bytes());
    assert_eq!(code, 404);
    // A malformed request changed nothing: the next good one is served.
    let answer = hook.post("/inject", &data("deployment-pod.json"));
    assert!(answer["response"]["patch"].is_string());
}

fn served_by(hook: &Hook, version: &str) -> bool {
    let review = data("deployment-pod.json").to_string();
    let url = format!(
        "https://127.0.0.1:{}/inject",
        hook.xds.webhook().unwrap().port()
    );
    Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "--max-time", "5", "--fail"])
        .arg("--cacert")
        .arg(hook.ca(version))
        .args([
            "-H",
            "content-type: application/json",
            "--data-binary",
            &review,
            &url,
        ])
        .output()
        .unwrap()
        .status
        .success()
}

/// Polls `f` every 100 ms, for at most 15 s (the shared bounded wait).
fn wait_until(what: &str, f: impl Fn() -> bool) {
    membrane_test_support::wait_until(
        Duration::from_secs(15),
        Duration::from_millis(100),
        what,
        || f().then_some(()),
    )
}

fn cert_errors(hook: &Hook) -> u64 {
    hook.metrics()
        .lines()
        .find_map(|l| l.strip_prefix("membrane_xds_webhook_cert_errors_total "))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0)
}

#[test]
fn a_rotated_certificate_is_served_and_a_bad_one_keeps_the_last_good() {
    let hook = Hook::start(&["--webhook-cert-poll-ms", "100"]);
    let certs = hook.dir.path().join("certs");
    assert!(served_by(&hook, "v1"));
    // A new CA and pair, swapped in as the kubelet swaps a Secret volume.
    make_certs(&certs.join("v2"));
    hook.switch_to("v2");
    wait_until("the v2 certificate is served", || served_by(&hook, "v2"));
    assert!(!served_by(&hook, "v1"), "the old certificate is gone");

    // A key that is not the certificate's, then a file that is not PEM:
    // rejected, counted, and v2 keeps serving.
    make_certs(&certs.join("v3"));
    std::fs::copy(certs.join("v2/key.pem"), certs.join("v3/key.pem")).unwrap();
    hook.switch_to("v3");
    wait_until("the mismatched pair is rejected", || {
        cert_errors(&hook) >= 1
    });
    assert!(served_by(&hook, "v2"));
    std::fs::create_dir(certs.join("v4")).unwrap();
    std::fs::write(certs.join("v4/cert.pem"), "not a certificate\n").unwrap();
    std::fs::copy(certs.join("v2/key.pem"), certs.join("v4/key.pem")).unwrap();
    hook.switch_to("v4");
    wait_until("the non-PEM file is rejected", || cert_errors(&hook) >= 2);
    assert!(served_by(&hook, "v2"));
    // Reported once per change, not once per check.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(cert_errors(&hook), 2);
    // Files that are not there (a volume mid-update, a wrong path): the same.
    hook.switch_to("missing");
    wait_until("missing files are reported", || cert_errors(&hook) >= 3);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(cert_errors(&hook), 3);
    assert!(served_by(&hook, "v2"));
    // Fixed files are taken again.
    hook.switch_to("v1");
    wait_until("v1 is served again", || served_by(&hook, "v1"));
}

#[test]
fn sighup_reloads_the_certificate_at_once() {
    // Checks every hour: only the signal can explain a reload.
    let hook = Hook::start(&["--webhook-cert-poll-ms", "3600000"]);
    // The hourly check also runs once at startup: let it pass before v2 appears.
    hook.xds
        .wait_for_log("webhook certificate unchanged", Duration::from_secs(10));
    make_certs(&hook.dir.path().join("certs/v2"));
    hook.switch_to("v2");
    std::thread::sleep(Duration::from_millis(300));
    assert!(served_by(&hook, "v1"), "no reload before the signal");
    let pid = hook.xds.proc.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    wait_until("SIGHUP reloads", || served_by(&hook, "v2"));
}

#[test]
fn the_webhook_is_off_without_a_certificate_and_bad_files_stop_startup() {
    let dir = tempfile::tempdir().unwrap();
    let xds = start_xds(dir.path());
    assert!(xds.webhook().is_none());

    std::fs::write(dir.path().join("bad.pem"), "garbage\n").unwrap();
    let bad = dir.path().join("bad.pem");
    let out = Command::new(env!("CARGO_BIN_EXE_membrane-xds"))
        .arg("--plaintext-xds")
        .args(["--grpc-addr", "127.0.0.1:0", "--debug-addr", "127.0.0.1:0"])
        .args(["--webhook-addr", "127.0.0.1:0"])
        .arg("--webhook-cert")
        .arg(&bad)
        .arg("--webhook-key")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--webhook-cert/--webhook-key") && err.contains("bad.pem: no PEM certificate"),
        "{err}"
    );
}

#[test]
fn a_bad_capture_annotation_is_refused_over_https_and_counted() {
    let hook = Hook::start(&[]);
    let mut pod = data("deployment-pod.json")["request"]["object"].clone();
    pod["metadata"]["annotations"] = json!({
        "traffic.sidecar.istio.io/includeOutboundIPRanges": "10.0.0.0/8,10.300.0.0/16",
    });
    let review = review_of(pod.clone());
    let answer = hook.post("/inject", &review);
    let resp = &answer["response"];
    assert_eq!(resp["allowed"], false, "{answer}");
    assert_eq!(resp["uid"], review["request"]["uid"]);
    assert!(resp.get("patch").is_none(), "{answer}");
    let msg = resp["status"]["message"].as_str().unwrap();
    assert!(
        msg.contains(
            "invalid value '10.0.0.0/8,10.300.0.0/16' for annotation \
             'traffic.sidecar.istio.io/includeOutboundIPRanges'"
        ),
        "{msg}"
    );
    // Fixed, the same pod is injected.
    pod["metadata"]["annotations"]["traffic.sidecar.istio.io/includeOutboundIPRanges"] =
        json!("10.0.0.0/8");
    let review = review_of(pod);
    assert!(patched(&review, &hook.post("/inject", &review)).is_some());

    hook.assert_metrics(&[
        r#"membrane_xds_injections_total{result="denied"} 1"#,
        r#"membrane_xds_injections_total{result="injected"} 1"#,
    ]);
}
