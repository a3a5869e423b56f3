//! The golden pods the injection tests share: `tests/inject_golden/NAME.in.json`, each a
//! Pod as the API server sends it to the webhook; the webhook's JSON patch applied to a
//! pod; and Kubernetes 1.34's schemas (strict: unknown fields are errors) as the judge of
//! what comes out.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use serde_json::Value;

/// `tests/inject_golden/`, where the cases' `.in.json` and `.out.json` files are.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/inject_golden")
}

/// The input pod of case `case` (`NAME.in.json`).
pub fn pod(case: &str) -> Value {
    let path = dir().join(format!("{case}.in.json"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `pod` with the JSON patch of an AdmissionReview `response` applied; `None` when the
/// response carries no patch.
pub fn patched(pod: &Value, response: &Value) -> Option<Value> {
    let b64 = response.get("patch")?.as_str().unwrap();
    assert_eq!(response["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    let mut out = pod.clone();
    json_patch::patch(&mut out, &patch).unwrap();
    Some(out)
}

/// Every object in `files` is valid by Kubernetes 1.34's schemas.
pub fn validate(files: &[PathBuf]) {
    let out = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/k8s-validate.py"))
        .args(["-k", "1.34.0"])
        .args(files)
        .output()
        .expect("python3");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    let want = format!("{} objects checked, 0 invalid", files.len());
    assert!(text.contains(&want), "{text}");
}
