//! TLS termination: curl over HTTPS with ALPN h2 and http/1.1, policy enforced on the
//! decrypted requests, and certificate reload without restart.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// A self-signed certificate for `name`, made with the openssl CLI.
fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .args([
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            &format!("subjectAltName=DNS:{name}"),
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    (cert, key)
}

fn openssl(args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for `name` it signed (webpki refuses a CA certificate as a
/// server's own); returns (ca cert, leaf cert, leaf key).
fn ca_and_leaf(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let p = |f: &str| dir.join(f).display().to_string();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=membrane test CA",
        "-keyout",
        &p("ca.key"),
        "-out",
        &p("ca.crt"),
    ]);
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        &format!("/CN={name}"),
        "-keyout",
        &p("leaf.key"),
        "-out",
        &p("leaf.csr"),
    ]);
    std::fs::write(
        dir.join("leaf.ext"),
        format!("subjectAltName=DNS:{name}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p("leaf.csr"),
        "-CA",
        &p("ca.crt"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &p("leaf.ext"),
        "-out",
        &p("leaf.crt"),
    ]);
    (
        dir.join("ca.crt"),
        dir.join("leaf.crt"),
        dir.join("leaf.key"),
    )
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("membrane-proxy-tls-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_alpn_h2_and_http1_enforces_policy() {
    let dir = tmpdir("alpn");
    let (cert, key) = self_signed(&dir, "backend.test");
    let (c, k) = (cert.display().to_string(), key.display().to_string());
    let p = start_proxy_with(&["--tls-cert", &c, "--tls-key", &k]).await;
    let port = p.addr().port();
    let resolve = format!("backend.test:{port}:127.0.0.1");
    let url = |path: &str| format!("https://backend.test:{port}{path}");

    let (code, headers, _) = curl(&[
        "--cacert",
        &c,
        "--resolve",
        &resolve,
        "--http1.1",
        &url("/v1/x"),
    ])
    .await;
    assert_eq!(code, 200, "{headers}");
    assert!(headers.contains("x-seen-version: http/1.1"), "{headers}");

    let (code, headers, _) = curl(&[
        "--cacert",
        &c,
        "--resolve",
        &resolve,
        "--http2",
        &url("/v1/x"),
    ])
    .await;
    assert_eq!(code, 200, "{headers}");
    assert!(
        headers.starts_with("http/2 200"),
        "ALPN h2 expected: {headers}"
    );
    assert!(headers.contains("x-seen-version: http/2.0"), "{headers}");

    let (code, _, body) = curl(&[
        "--cacert",
        &c,
        "--resolve",
        &resolve,
        "-X",
        "PUT",
        &url("/v1/exhaust-port"),
    ])
    .await;
    assert_eq!((code, body.as_str()), (403, "Access denied\r\n"));

    // Plain HTTP on a TLS listener gets nothing.
    let (code, _, _) = curl(&[&format!("http://127.0.0.1:{port}/v1/x")]).await;
    assert_eq!(code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_reload_takes_effect_and_a_bad_pair_is_rejected() {
    let dir = tmpdir("reload");
    let (cert, key) = self_signed(&dir, "backend.test");
    let live_cert = dir.join("live.crt");
    let live_key = dir.join("live.key");
    std::fs::copy(&cert, &live_cert).unwrap();
    std::fs::copy(&key, &live_key).unwrap();
    let (lc, lk) = (
        live_cert.display().to_string(),
        live_key.display().to_string(),
    );
    let p = start_proxy_with(&["--tls-cert", &lc, "--tls-key", &lk]).await;
    let port = p.addr().port();
    let resolve = format!("backend.test:{port}:127.0.0.1");
    let url = format!("https://backend.test:{port}/v1/x");
    let first = cert.display().to_string();
    assert_eq!(
        curl(&["--cacert", &first, "--resolve", &resolve, &url])
            .await
            .0,
        200
    );

    // A new certificate for the same name, signed by a different key.
    let (cert2, key2) = self_signed(&tmpdir("reload2"), "backend.test");
    let second = cert2.display().to_string();
    std::fs::copy(&cert2, &live_cert).unwrap();
    std::fs::copy(&key2, &live_key).unwrap();
    let store = p.running.tls.as_ref().expect("TLS configured");
    store.reload().unwrap();
    assert_eq!(
        curl(&["--cacert", &second, "--resolve", &resolve, &url])
            .await
            .0,
        200
    );
    assert_eq!(
        curl(&["--cacert", &first, "--resolve", &resolve, &url])
            .await
            .0,
        0,
        "old cert still served"
    );

    // A broken key is refused and the current certificate stays.
    std::fs::write(&live_key, "not a key").unwrap();
    assert!(store.reload().is_err());
    assert_eq!(
        curl(&["--cacert", &second, "--resolve", &resolve, &url])
            .await
            .0,
        200
    );
    tokio::time::sleep(Duration::from_millis(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_origination_with_alpn() {
    let dir = tmpdir("origin");
    let (ca, cert, key) = ca_and_leaf(&dir, "backend.test");
    let backend = start_tls_backend(&cert, &key).await;
    let ca = ca.display().to_string();
    let cfg = config(
        backend,
        &[
            "--upstream-tls",
            "true",
            "--upstream-ca",
            &ca,
            "--upstream-server-name",
            "backend.test",
        ],
    );
    let running = membrane_proxy::start(&cfg, membrane_proxy::policy::load(&cfg).unwrap(), None)
        .await
        .unwrap();
    let url = format!("http://{}/v1/x", running.addrs.listen);
    let (code, headers, _) = curl(&[&url]).await;
    assert_eq!(code, 200, "{headers}");
    assert!(headers.contains("x-seen-tls: true"), "{headers}");
    assert!(headers.contains("x-seen-version: http/1.1"), "{headers}");
    assert!(
        headers.contains(&format!("x-seen-host: {}", running.addrs.listen)),
        "Host kept: {headers}"
    );
    // h2c downstream becomes h2 over TLS (ALPN h2) upstream.
    let (code, headers, _) = curl(&["--http2-prior-knowledge", &url]).await;
    assert_eq!(code, 200, "{headers}");
    assert!(headers.contains("x-seen-version: http/2.0"), "{headers}");
    assert!(headers.contains("x-seen-tls: true"), "{headers}");

    // An upstream whose certificate the CA does not vouch for is not talked to.
    let (other, _, _) = ca_and_leaf(&tmpdir("origin-other"), "backend.test");
    let other = other.display().to_string();
    let cfg = config(
        backend,
        &[
            "--upstream-tls",
            "true",
            "--upstream-ca",
            &other,
            "--upstream-server-name",
            "backend.test",
        ],
    );
    let untrusted = membrane_proxy::start(&cfg, membrane_proxy::policy::load(&cfg).unwrap(), None)
        .await
        .unwrap();
    let (code, _, _) = curl(&[&format!("http://{}/v1/x", untrusted.addrs.listen)]).await;
    assert_eq!(code, 503);
}
