//! The `membrane policy` verbs as users and checks call them: the real binary, real files.

use std::path::PathBuf;
use std::process::Command;

fn membrane() -> Command {
    Command::new(env!("CARGO_BIN_EXE_membrane"))
}

fn repo(p: &str) -> String {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap())
        .join("..")
        .join(p)
        .display()
        .to_string()
}

#[test]
fn validate_json_over_the_corpus() {
    let out = membrane()
        .args([
            "policy",
            "validate",
            "-o",
            "json",
            &repo("../shared/corpus/cnp"),
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "invalid objects make the exit non-zero"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = v.as_array().unwrap();
    assert!(entries.len() >= 200);
    for e in entries {
        for k in ["file", "kind", "namespace", "name", "valid", "error"] {
            assert!(e.get(k).is_some(), "missing {k} in {e}");
        }
    }
    let mut invalid: Vec<&str> = entries
        .iter()
        .filter(|e| e["valid"] == false)
        .map(|e| e["file"].as_str().unwrap())
        .collect();
    invalid.dedup();
    assert_eq!(invalid.len(), 4, "{invalid:?}");
}

#[test]
fn validate_reports_file_object_and_field() {
    let dir = std::env::temp_dir().join(format!("membrane-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("policy.yaml");
    std::fs::write(
        &f,
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: rule1}\nspec:\n  endpointSelector: {}\n  ingress:\n  - toPorts:\n    - ports:\n      - port: \"8_o\"\n",
    )
    .unwrap();
    let out = membrane()
        .args(["policy", "validate", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("policy.yaml: CiliumNetworkPolicy default/rule1: spec.ingress[0].toPorts[0].ports[0].port: \"8_o\" is not a port number or a port name"),
        "{err}"
    );
    let ok = membrane()
        .args(["policy", "validate", &repo("manifests/examples/starwars")])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn trace(args: &[&str]) -> serde_json::Value {
    let mut cmd = membrane();
    cmd.args(["policy", "trace", "-o", "json"]).args(args);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn trace_star_wars_json() {
    let l7 = repo("manifests/examples/starwars/sw_l3_l4_l7_policy.yaml");
    let ds = "k8s:org=empire,k8s:class=deathstar";
    let put = trace(&[
        "--policy",
        &l7,
        "-s",
        "k8s:org=empire,k8s:class=tiefighter",
        "-d",
        ds,
        "--dport",
        "80/TCP",
        "--http-method",
        "PUT",
        "--http-path",
        "/v1/exhaust-port",
    ]);
    assert_eq!(put["verdict"], "denied");
    assert_eq!(put["decided_by"]["policy"], "default/rule1");
    assert!(put["explanation"]
        .as_str()
        .unwrap()
        .contains("matches no HTTP rule"));
    let post = trace(&[
        "--policy",
        &l7,
        "-s",
        "k8s:org=empire,k8s:class=tiefighter",
        "-d",
        ds,
        "--dport",
        "80",
        "--http-method",
        "POST",
        "--http-path",
        "/v1/request-landing",
    ]);
    assert_eq!(post["verdict"], "allowed");
    assert_eq!(post["decided_by"]["rule"], "spec.ingress[0]");
    let xwing = trace(&[
        "--policy",
        &l7,
        "-s",
        "k8s:org=alliance,k8s:class=xwing",
        "-d",
        ds,
        "--dport",
        "80/TCP",
    ]);
    assert_eq!(xwing["verdict"], "denied");
    assert!(
        xwing["decided_by"].is_null(),
        "default deny has no deciding rule"
    );
}

#[test]
fn trace_refuses_bad_input_with_a_clear_error() {
    let l7 = repo("manifests/examples/starwars/sw_l3_l4_l7_policy.yaml");
    let out = membrane()
        .args([
            "policy", "trace", "--policy", &l7, "-s", "k8s:a=b", "-d", "k8s:c=d", "--dport", "http",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dport: \"http\" is not a port number"));
}

const CORPUS_KAFKA: &str =
    "../shared/corpus/cnp/cilium-cilium__examples__policies__getting-started__kafka.yaml";
const CORPUS_DNS: &str = "../shared/corpus/cnp/cilium-cilium__cilium-cli__connectivity__builder__manifests__client-egress-node-local-dns.yaml";

/// Kafka and DNS rules from the corpus are still accepted (exit 0), but `validate` says
/// that membrane does not enforce them and what it does instead, in text and in JSON.
#[test]
fn validate_warns_about_unenforced_l7_rules() {
    for (file, field) in [
        (
            CORPUS_KAFKA,
            "spec.ingress[0].toPorts[0].rules.kafka: Kafka rules are not enforced by membrane",
        ),
        (
            CORPUS_DNS,
            ".rules.dns: DNS rules are not enforced by membrane",
        ),
    ] {
        let out = membrane()
            .args(["policy", "validate", &repo(file)])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{file}: {err}");
        assert!(
            err.contains("warning: ") && err.contains(field) && err.contains("fail closed"),
            "{file}: {err}"
        );
        let out = membrane()
            .args(["policy", "validate", "-o", "json", &repo(file)])
            .output()
            .unwrap();
        assert!(out.status.success());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for e in v.as_array().unwrap() {
            assert_eq!(e["valid"], true, "{e}");
            assert_eq!(e["error"], serde_json::Value::Null, "{e}");
        }
        let warned = v.as_array().unwrap().iter().any(|e| {
            e["warnings"]
                .as_array()
                .is_some_and(|w| w.iter().any(|w| w.as_str().unwrap().contains(field)))
        });
        assert!(warned, "{file}: {v:#}");
    }
    // Objects without warnings still carry the key, as an empty list.
    let out = membrane()
        .args([
            "policy",
            "validate",
            "-o",
            "json",
            &repo("manifests/examples/starwars/sw_l3_l4_policy.yaml"),
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["warnings"], serde_json::json!([]), "{v:#}");
}

/// `trace` of the node's own traffic (`reserved:host`) to a pod whose policy does not name
/// the host: allowed by allow-localhost (the default), said so in text and JSON; denied by
/// default deny with `--allow-localhost policy`; a bad value is refused naming it.
#[test]
fn trace_allow_localhost_lets_the_host_in_unless_told_policy() {
    let l3 = repo("manifests/examples/starwars/sw_l3_l4_policy.yaml");
    let args = [
        "--policy",
        &l3,
        "-s",
        "reserved:host",
        "-d",
        "k8s:org=empire,k8s:class=deathstar",
        "--dport",
        "15021/TCP",
    ];
    let open = trace(&args);
    assert_eq!(open["verdict"], "allowed", "{open:#}");
    assert_eq!(open["decided_by"], serde_json::Value::Null, "{open:#}");
    assert_eq!(open["decided_by_setting"], "allow-localhost", "{open:#}");
    let text = open["explanation"].as_str().unwrap();
    assert!(
        text.contains("ingress: allowed by allow-localhost"),
        "{text}"
    );
    let mut policy = args.to_vec();
    policy.extend(["--allow-localhost", "policy"]);
    let shut = trace(&policy);
    assert_eq!(shut["verdict"], "denied", "{shut:#}");
    assert_eq!(shut.get("decided_by_setting"), None, "{shut:#}");
    let bad = membrane()
        .args(["policy", "trace", "-o", "json"])
        .args(args)
        .args(["--allow-localhost", "sometimes"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("expected auto, always or policy"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

/// `trace` gives the verdict the proxy enforces for a port whose only allow rule carries
/// Kafka rules: denied by default, naming the rule and why; allowed at L4 only with
/// `--unenforced-l7 l4-only`; a caveat either way.
#[test]
fn trace_unenforced_l7_fails_closed_unless_told_otherwise() {
    let kafka = repo(CORPUS_KAFKA);
    let args = [
        "--policy",
        &kafka,
        "-s",
        "k8s:app=empire-outpost",
        "-d",
        "k8s:app=kafka",
        "--dport",
        "9092",
    ];
    let closed = trace(&args);
    assert_eq!(closed["verdict"], "denied", "{closed:#}");
    assert_eq!(
        closed["decided_by"]["policy"], "default/rule2",
        "{closed:#}"
    );
    assert_eq!(
        closed["decided_by"]["rule"], "spec.ingress[0]",
        "{closed:#}"
    );
    let text = closed["explanation"].as_str().unwrap();
    assert!(
        text.contains("kafka rules are not enforced by membrane: denied (fail closed"),
        "{text}"
    );
    assert!(
        closed["caveats"][0]
            .as_str()
            .unwrap()
            .contains("kafka rules of"),
        "{closed:#}"
    );
    let mut l4 = args.to_vec();
    l4.extend(["--unenforced-l7", "l4-only"]);
    let open = trace(&l4);
    assert_eq!(open["verdict"], "allowed", "{open:#}");
    assert_eq!(open["decided_by"]["rule"], "spec.ingress[0]", "{open:#}");
    assert!(
        open["caveats"][0].as_str().unwrap().contains("l4-only"),
        "{open:#}"
    );
    let bad = membrane()
        .args(["policy", "trace", "-o", "json"])
        .args(args)
        .args(["--unenforced-l7", "allow"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("expected fail-closed or l4-only"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
