//! `membrane cert ca|issue` produce Istio's legacy Secret layout that
//! openssl accepts as a client certificate for the SPIFFE id asked for, and
//! the etcd verbs speak TLS with client certificates to a real etcd started
//! with `--client-cert-auth` (certificates from `membrane cert`).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use membrane_test_support::Etcd;
use std::time::{Duration, Instant};

fn membrane(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_membrane"))
        .args(args)
        .env_remove("MEMBRANE_ETCD")
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `membrane cert ca` into DIR/ca, then a certificate for NS/SA into DIR/NAME.
fn issue(dir: &Path, name: &str, ns: &str, sa: &str, extra: &[&str]) {
    let ca = dir.join("ca");
    if !ca.join("ca-cert.pem").exists() {
        ok(membrane(&["cert", "ca", "--out", s(&ca)]));
    }
    let out = dir.join(name);
    let (ca_cert, ca_key) = (ca.join("ca-cert.pem"), ca.join("ca-key.pem"));
    let mut args = vec![
        "cert",
        "issue",
        "--ca-cert",
        s(&ca_cert),
        "--ca-key",
        s(&ca_key),
        "--namespace",
        ns,
        "--service-account",
        sa,
        "--out",
        s(&out),
    ];
    args.extend_from_slice(extra);
    ok(membrane(&args));
}

#[test]
fn issue_writes_the_istio_layout_with_the_spiffe_id() {
    let tmp = tempfile::tempdir().unwrap();
    issue(tmp.path(), "ds", "default", "deathstar", &["--secret"]);
    let d = tmp.path().join("ds");
    let (chain, key, root) = (
        d.join("cert-chain.pem"),
        d.join("key.pem"),
        d.join("root-cert.pem"),
    );
    let verified = openssl(&[
        "verify",
        "-CAfile",
        s(&root),
        "-purpose",
        "sslclient",
        s(&chain),
    ]);
    assert!(verified.contains(": OK"), "{verified}");
    let text = openssl(&["x509", "-in", s(&chain), "-noout", "-text"]);
    assert!(
        text.contains("URI:spiffe://cluster.local/ns/default/sa/deathstar"),
        "{text}"
    );
    assert!(text.contains("prime256v1"), "ECDSA P-256: {text}");
    assert!(text.contains("CA:FALSE"), "{text}");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The key belongs to the certificate.
    let pubkey = |args: &[&str]| openssl(args);
    assert_eq!(
        pubkey(&["x509", "-in", s(&chain), "-noout", "-pubkey"]),
        pubkey(&["pkey", "-in", s(&key), "-pubout"])
    );
    let secret: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(d.join("secret.yaml")).unwrap()).unwrap();
    assert_eq!(secret["metadata"]["name"], "membrane.deathstar");
    assert_eq!(secret["metadata"]["namespace"], "default");
    for k in ["cert-chain.pem", "key.pem", "root-cert.pem"] {
        assert!(secret["data"][k].is_string(), "{k}: {secret}");
    }

    // Bad input names what is wrong.
    let out = membrane(&[
        "cert",
        "issue",
        "--ca-cert",
        s(&root),
        "--ca-key",
        s(&root),
        "--namespace",
        "default",
        "--out",
        s(&tmp.path().join("x")),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--ca-key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn etcd_verbs_speak_tls_with_a_client_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path();
    issue(p, "server", "kube-system", "etcd", &["--ip", "127.0.0.1"]);
    issue(p, "client", "membrane-system", "membrane", &[]);
    let srv = p.join("server");
    // etcd serving TLS only, requiring client certificates; killed on drop.
    let etcd = Etcd::start_tls(
        &srv.join("cert-chain.pem"),
        &srv.join("key.pem"),
        &srv.join("root-cert.pem"),
    );
    let url = etcd.url();
    let cli = p.join("client");
    let (ca, cert, key) = (
        cli.join("root-cert.pem"),
        cli.join("cert-chain.pem"),
        cli.join("key.pem"),
    );
    let tls = [
        "--etcd-ca",
        s(&ca),
        "--etcd-cert",
        s(&cert),
        "--etcd-key",
        s(&key),
    ];
    let with = |verb: &[&str], tls: &[&str]| {
        let mut a = verb.to_vec();
        a.extend(["--etcd", url.as_str()]);
        a.extend_from_slice(tls);
        membrane(&a)
    };
    let start = Instant::now();
    while !with(&["etcd", "identities"], &tls).status.success() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "etcd (TLS) does not answer: {}",
            String::from_utf8_lossy(&with(&["etcd", "identities"], &tls).stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let f = etcd.dir.path().join("cnp.yaml");
    std::fs::write(&f, "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: rule1, namespace: empire}\nspec:\n  endpointSelector: {matchLabels: {class: deathstar}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {org: empire}}]\n").unwrap();
    ok(with(&["policy", "import", s(&f)], &tls));
    let got = ok(with(&["policy", "get", "empire/rule1"], &tls));
    assert!(got.contains("name: rule1"), "{got}");

    // Without a client certificate, or without TLS, etcd refuses.
    let out = with(&["policy", "get", "empire/rule1"], &tls[..2]);
    assert!(
        !out.status.success(),
        "no client certificate must be refused"
    );
    let plain = url.replace("https://", "http://");
    let out = membrane(&["policy", "get", "empire/rule1", "--etcd", &plain]);
    assert!(!out.status.success(), "plaintext must be refused");
    // http:// with --etcd-ca is a configuration error, said so.
    let out = membrane(&[
        "policy",
        "get",
        "empire/rule1",
        "--etcd",
        &plain,
        "--etcd-ca",
        s(&ca),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("use https://"),
        "{err}"
    );
}
