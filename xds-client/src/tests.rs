use super::*;

fn tls(dir: &std::path::Path) -> XdsTls {
    XdsTls {
        ca: dir.join("ca.pem"),
        identity: Some((dir.join("cert.pem"), dir.join("key.pem"))),
        poll: Duration::from_millis(10),
        memory: None,
    }
}

#[test]
fn addresses_and_tls_settings_that_do_not_fit_are_refused() {
    let t = tls(std::path::Path::new("/nonexistent"));
    assert!(check("http://127.0.0.1:15010", None).is_ok());
    assert!(check("https://127.0.0.1:15012", Some(&t)).is_ok());
    let e = check("https://127.0.0.1:15012", None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs --xds-ca"), "{e}");
    let e = check("http://127.0.0.1:15010", Some(&t))
        .unwrap_err()
        .to_string();
    assert!(e.contains("need an https:// address"), "{e}");
    let e = check("not a uri", None).unwrap_err().to_string();
    assert!(e.starts_with("--xds-address \"not a uri\""), "{e}");
}

#[test]
fn backoff_grows_is_capped_and_jittered() {
    let (initial, max) = (Duration::from_millis(100), Duration::from_secs(5));
    for attempt in 0..40 {
        let d = backoff(initial, max, attempt);
        let full = initial.saturating_mul(1u32 << attempt.min(16)).min(max);
        assert!(
            d >= full / 2 && d <= full,
            "attempt {attempt}: {d:?} of {full:?}"
        );
    }
    assert!(backoff(initial, max, 30) <= max);
}

#[test]
fn a_missing_tls_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let e = tls(dir.path()).read().unwrap_err().to_string();
    assert!(e.starts_with("--xds-ca ") && e.contains("ca.pem"), "{e}");
}

#[tokio::test(start_paused = true)]
async fn a_rewritten_file_ends_the_connection_and_an_unchanged_one_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let t = tls(dir.path());
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        std::fs::write(dir.path().join(f), f).unwrap();
    }
    let conn = Connection {
        channel: Endpoint::from_static("http://127.0.0.1:1").connect_lazy(),
        files: Some((t.clone(), t.read().unwrap())),
    };
    let unchanged = tokio::time::timeout(Duration::from_secs(1), conn.rotated()).await;
    assert!(
        unchanged.is_err(),
        "rotated() resolved with no file changed"
    );
    std::fs::write(dir.path().join("key.pem"), "rotated key").unwrap();
    tokio::time::timeout(Duration::from_secs(1), conn.rotated())
        .await
        .expect("rotated() did not see the new key");
}

#[test]
fn an_in_memory_identity_is_read_per_connection_and_absent_until_issued() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), "ca").unwrap();
    let current = std::sync::Arc::new(std::sync::Mutex::new(None::<PemPair>));
    let held = current.clone();
    let t = XdsTls {
        identity: None,
        memory: Some(MemoryIdentity(std::sync::Arc::new(move || {
            held.lock().unwrap().clone()
        }))),
        ..tls(dir.path())
    };
    // Nothing issued yet: no connection is attempted without a certificate.
    assert!(matches!(t.read(), Err(ClientError::NoIdentity)));
    *current.lock().unwrap() = Some((b"chain".to_vec(), b"key".to_vec()));
    let first = t.read().unwrap();
    assert_eq!(first.identity, Some((b"chain".to_vec(), b"key".to_vec())));
    // A renewed certificate reads differently, as a rotated file does.
    *current.lock().unwrap() = Some((b"chain2".to_vec(), b"key2".to_vec()));
    assert_ne!(t.read().unwrap(), first);
}
