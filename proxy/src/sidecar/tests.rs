use super::*;

/// The sidecar's arguments from flags only (each flag stands for its variable; the test
/// process's own environment sets none of Istio's).
fn args(extra: &[&str]) -> Result<SidecarArgs, clap::Error> {
    let mut argv = vec!["sidecar"];
    argv.extend_from_slice(extra);
    SidecarCli::try_parse_from(argv).map(|c| c.args)
}

const POD: [&str; 6] = [
    "--pod-name",
    "deathstar-6fb5694d8c-2kq4x",
    "--pod-namespace",
    "empire",
    "--instance-ip",
    "10.244.1.7",
];

fn config(extra: &[&str]) -> Result<Config, SidecarError> {
    let mut a = POD.to_vec();
    // No workload certificate in the test's certs dir: plaintext unless told otherwise.
    a.extend(["--certs-dir", "/nonexistent/membrane-certs"]);
    a.extend_from_slice(extra);
    args(&a).unwrap().into_config()
}

#[test]
fn node_id_is_istios() {
    assert_eq!(
        node_id(
            "10.244.1.7".parse().unwrap(),
            "web-0",
            "shop",
            "cluster.local"
        ),
        "sidecar~10.244.1.7~web-0.shop~shop.svc.cluster.local"
    );
    assert_eq!(
        node_id("fd00::7".parse().unwrap(), "web-0", "shop", "corp.example"),
        "sidecar~fd00::7~web-0.shop~shop.svc.corp.example"
    );
    // The proxy's xDS client reads the pod's address back out of it.
    let id = node_id("fd00::7".parse().unwrap(), "web-0", "shop", "cluster.local");
    assert_eq!(
        crate::xds::pod_ip(&id).unwrap(),
        "fd00::7".parse::<IpAddr>().unwrap()
    );
}

#[test]
fn the_environment_becomes_the_mesh_config_standalone_runs() {
    let c = config(&[
        "--proxy-config",
        r#"{"discoveryAddress":"membrane-xds.membrane-system.svc:15010","terminationDrainDuration":"7s","concurrency":2}"#,
        "--pod-ports",
        r#"[{"name":"metrics","containerPort":9000,"protocol":"UDP"},{"name":"http","containerPort":8080,"protocol":"TCP"}]"#,
    ])
    .unwrap();
    assert_eq!(
        c.node_id.as_deref(),
        Some("sidecar~10.244.1.7~deathstar-6fb5694d8c-2kq4x.empire~empire.svc.cluster.local")
    );
    assert_eq!(
        c.xds_address.as_deref(),
        Some("http://membrane-xds.membrane-system.svc:15010")
    );
    assert!(c.xds_ca.is_none() && c.xds_cert.is_none());
    assert_eq!(c.listen.to_string(), LOCAL_LISTEN);
    assert_eq!(c.upstream.to_string(), "127.0.0.1:8080");
    assert_eq!(c.admin.to_string(), "127.0.0.1:15000");
    assert_eq!(c.metrics.to_string(), "0.0.0.0:15020");
    assert_eq!(c.health.to_string(), "0.0.0.0:15021");
    assert_eq!(
        c.stats.map(|a| a.to_string()).as_deref(),
        Some("0.0.0.0:15090")
    );
    assert_eq!(
        c.capture_inbound.map(|a| a.to_string()).as_deref(),
        Some("0.0.0.0:15006")
    );
    assert_eq!(c.capture_outbound.len(), 2);
    assert_eq!(c.app_probe_address.to_string(), "10.244.1.7");
    assert_eq!(c.concurrency, 2);
    assert_eq!(c.drain_timeout, std::time::Duration::from_secs(7));
    assert!(c.policy.is_empty());
    let meta = |k: &str| {
        c.node_meta
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(meta("NAMESPACE"), Some("empire"));
    assert_eq!(meta("INSTANCE_IPS"), Some("10.244.1.7"));
    assert_eq!(meta("INTERCEPTION_MODE"), Some("REDIRECT"));
    assert!(meta("POD_PORTS").is_some_and(|p| p.contains("8080")));
    assert_eq!(meta("CLUSTER_ID"), None, "unset variables are not sent");
}

#[test]
fn flags_override_the_environment_and_standalone_flags_pass_through() {
    let c = config(&[
        "--proxy-config",
        "discoveryAddress: istiod.istio-system.svc:15012\nstatusPort: 16020\nproxyAdminPort: 16000\ncontrolPlaneAuthPolicy: MUTUAL_TLS\n",
        "--node-id",
        "sidecar~10.0.0.9~x.y~y.svc.cluster.local",
        "--xds-address",
        "https://xds.test:15012",
        "--upstream",
        "127.0.0.1:9999",
        "--interception-mode",
        "NONE",
        "--",
        "--concurrency",
        "3",
        "--access-log",
        "false",
    ])
    .unwrap();
    assert_eq!(
        c.node_id.as_deref(),
        Some("sidecar~10.0.0.9~x.y~y.svc.cluster.local")
    );
    assert_eq!(c.xds_address.as_deref(), Some("https://xds.test:15012"));
    // mTLS: Istio's file layout under the certs dir.
    assert_eq!(
        c.xds_cert.as_deref(),
        Some(Path::new("/nonexistent/membrane-certs/cert-chain.pem"))
    );
    assert_eq!(c.metrics.port(), 16020);
    assert_eq!(c.admin.port(), 16000);
    assert_eq!(c.upstream.port(), 9999);
    assert!(c.capture_inbound.is_none() && c.capture_outbound.is_empty());
    assert_eq!(c.concurrency, 3);
    assert!(!c.access_log);
}

#[test]
fn the_scheme_follows_the_certificates_when_the_address_has_none() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["root-cert.pem", "cert-chain.pem", "key.pem"] {
        std::fs::write(dir.path().join(f), "pem").unwrap();
    }
    let d = dir.path().to_str().unwrap();
    let mut a = POD.to_vec();
    a.extend(["--certs-dir", d]);
    let c = args(&a).unwrap().into_config().unwrap();
    assert_eq!(
        c.xds_address.as_deref(),
        Some("https://istiod.istio-system.svc:15012")
    );
    assert_eq!(c.xds_ca, Some(dir.path().join("root-cert.pem")));
    assert_eq!(c.xds_key, Some(dir.path().join("key.pem")));
    // NONE says plaintext whatever is mounted.
    a.extend(["--proxy-config", r#"{"controlPlaneAuthPolicy":"NONE"}"#]);
    let c = args(&a).unwrap().into_config().unwrap();
    assert_eq!(
        c.xds_address.as_deref(),
        Some("http://istiod.istio-system.svc:15012")
    );
    assert!(c.xds_ca.is_none());
}

#[test]
fn without_mounted_files_the_certificate_comes_from_istios_ca() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("istio-token");
    std::fs::write(&token, "jwt").unwrap();
    let certs = dir.path().join("certs");
    let (t, c) = (token.to_str().unwrap(), certs.to_str().unwrap());
    let mut a = POD.to_vec();
    a.extend([
        "--certs-dir",
        c,
        "--istio-token",
        t,
        "--service-account",
        "cart",
    ]);
    a.extend([
        "--istio-root-cert",
        "/roots/root-cert.pem",
        "--trust-domain",
        "corp.example",
    ]);
    let cfg = args(&a).unwrap().into_config().unwrap();
    let m = &cfg.mesh_tls;
    // The discovery address is the CA by default, as Istio's CA_ADDR.
    assert_eq!(
        m.ca.mesh_ca_address.as_deref(),
        Some("istiod.istio-system.svc:15012")
    );
    assert_eq!(
        m.ca.mesh_ca_identity.as_deref(),
        Some("spiffe://corp.example/ns/empire/sa/cart")
    );
    assert_eq!(m.ca.mesh_ca_token, token);
    assert_eq!(m.ca.mesh_ca_cluster_id, "Kubernetes");
    // Mounted files would still win: the mesh reads them where the sidecar mounts them.
    assert_eq!(m.mesh_cert, certs.join("cert-chain.pem"));
    // The control plane: mTLS with that certificate, verified against the mesh root.
    assert_eq!(
        cfg.xds_address.as_deref(),
        Some("https://istiod.istio-system.svc:15012")
    );
    assert_eq!(
        cfg.xds_ca.as_deref(),
        Some(Path::new("/roots/root-cert.pem"))
    );
    assert!(cfg.xds_cert_from_mesh && cfg.xds_cert.is_none());

    // Istio's knobs.
    let mut b = a.clone();
    b.extend(["--ca-addr", "ca.test:15012", "--secret-ttl", "1h30m0s"]);
    b.extend(["--secret-grace-period-ratio", "0.25", "--ecc-curve", "P384"]);
    let m = args(&b).unwrap().into_config().unwrap().mesh_tls;
    assert_eq!(m.ca.mesh_ca_address.as_deref(), Some("ca.test:15012"));
    assert_eq!(m.ca.mesh_ca_ttl, Some(std::time::Duration::from_secs(5400)));
    assert_eq!(m.ca.mesh_ca_grace_ratio, Some(0.25));
    for (flag, value, var) in [
        ("--secret-ttl", "soon", "SECRET_TTL"),
        (
            "--secret-grace-period-ratio",
            "1.5",
            "SECRET_GRACE_PERIOD_RATIO",
        ),
        (
            "--ecc-signature-algorithm",
            "RSA",
            "ECC_SIGNATURE_ALGORITHM",
        ),
        ("--ecc-curve", "P521", "ECC_CURVE"),
    ] {
        let mut bad = a.clone();
        bad.extend([flag, value]);
        let e = args(&bad).unwrap().into_config().unwrap_err().to_string();
        assert!(e.starts_with(&format!("{var} \"{value}\"")), "{e}");
    }

    // Mounted files: no CA, as before.
    std::fs::create_dir(&certs).unwrap();
    for f in ["root-cert.pem", "cert-chain.pem", "key.pem"] {
        std::fs::write(certs.join(f), "pem").unwrap();
    }
    let cfg = args(&a).unwrap().into_config().unwrap();
    assert!(cfg.mesh_tls.ca.mesh_ca_address.is_none());
    assert_eq!(cfg.xds_cert, Some(certs.join("cert-chain.pem")));
    // Neither files nor a token nor CA_ADDR: no CA either (the default token path is
    // not mounted in the test's environment).
    let cfg = config(&[]).unwrap();
    assert!(cfg.mesh_tls.ca.mesh_ca_address.is_none() && !cfg.xds_cert_from_mesh);
}

#[test]
fn an_ipv6_pod_listens_on_ipv6() {
    let a = [
        "--pod-name",
        "p",
        "--pod-namespace",
        "n",
        "--instance-ip",
        "fd00::7",
        "--certs-dir",
        "/nonexistent",
    ];
    let c = args(&a).unwrap().into_config().unwrap();
    assert_eq!(c.metrics.to_string(), "[::]:15020");
    assert_eq!(c.admin.to_string(), "[::1]:15000");
    assert_eq!(c.upstream.to_string(), "[::1]:80");
}

#[test]
fn a_bad_environment_names_the_variable() {
    let err = |a: &[&str]| {
        let mut v = vec!["--certs-dir", "/nonexistent"];
        v.extend_from_slice(a);
        args(&v).unwrap().into_config().unwrap_err().to_string()
    };
    let e = err(&["--pod-namespace", "n", "--instance-ip", "10.0.0.1"]);
    assert!(e.starts_with("POD_NAME is not set"), "{e}");
    let e = err(&["--pod-name", "p", "--instance-ip", "10.0.0.1"]);
    assert!(e.starts_with("POD_NAMESPACE is not set"), "{e}");
    let e = err(&["--pod-name", "p", "--pod-namespace", "n"]);
    assert!(e.starts_with("INSTANCE_IP is not set"), "{e}");
    let pod = ["--pod-name", "p", "--pod-namespace", "n"];
    let with = |extra: &[&str]| {
        let mut v = pod.to_vec();
        v.extend_from_slice(extra);
        err(&v)
    };
    let e = with(&["--instance-ip", "10.0.0.300"]);
    assert!(
        e.starts_with("INSTANCE_IP \"10.0.0.300\": is not an IP address"),
        "{e}"
    );
    let e = with(&["--instance-ip", "10.0.0.1", "--host-ip", "node-1"]);
    assert!(e.starts_with("HOST_IP"), "{e}");
    let e = with(&[
        "--instance-ip",
        "10.0.0.1",
        "--proxy-config",
        "{discoveryAddress: [1",
    ]);
    assert!(e.starts_with("PROXY_CONFIG"), "{e}");
    let e = with(&[
        "--instance-ip",
        "10.0.0.1",
        "--proxy-config",
        r#"{"statusPort":"x"}"#,
    ]);
    assert!(e.starts_with("PROXY_CONFIG"), "{e}");
    let e = with(&["--instance-ip", "10.0.0.1", "--app-probers", r#"{"/x":{}}"#]);
    assert!(e.starts_with("ISTIO_KUBE_APP_PROBERS"), "{e}");
    let e = with(&["--instance-ip", "10.0.0.1", "--pod-ports", "8080"]);
    assert!(e.starts_with("ISTIO_META_POD_PORTS"), "{e}");
    let e = with(&["--instance-ip", "10.0.0.1", "--interception-mode", "EBPF"]);
    assert!(e.starts_with("ISTIO_META_INTERCEPTION_MODE"), "{e}");
    let e = with(&["--instance-ip", "10.0.0.1", "--xds-address", "grpc://x:1"]);
    assert!(e.contains("scheme must be http:// or https://"), "{e}");
    let e = err(&[
        "--pod-name",
        "Bad~Name",
        "--pod-namespace",
        "n",
        "--instance-ip",
        "10.0.0.1",
    ]);
    assert!(e.starts_with("POD_NAME \"Bad~Name\""), "{e}");
    // A standalone flag the sidecar sets itself is refused by standalone's parser.
    let e = with(&["--instance-ip", "10.0.0.1", "--", "--policy", "a.yaml"]);
    assert!(e.contains("--policy"), "{e}");
}
