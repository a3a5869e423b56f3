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
