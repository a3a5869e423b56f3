//! `membrane-proxy sidecar` as Istio's injection runs it: the binary with Istio's sidecar
//! environment (POD_NAME, POD_NAMESPACE, INSTANCE_IP, PROXY_CONFIG, ISTIO_META_*,
//! ISTIO_KUBE_APP_PROBERS) and no flags, in a pod's network namespace beside a real
//! `membrane-xds` (the binary, in the same namespace, as istiod would be reachable).
//! Privileged: two namespaces joined by a veth pair, the pod's port redirected to 15006
//! by nftables as Istio's init container would. Checked: readiness 503 and deny-all until
//! the control plane's first policy, then the policy of the pod the node id names enforced
//! on inbound capture; the app's probes answered through 15020 while the policy denies the
//! same paths on the app's port; 15090's metrics; a bad environment refused at start
//! naming the variable.

mod pod_sandbox;

use std::process::Stdio;

use membrane_test_support::sandbox::curl_in;
use pod_sandbox::{code_is, sidecar_cmd, PodSandbox, XDS_PORT};

#[test]
fn a_bad_environment_stops_the_sidecar_naming_the_variable() {
    let pod = [
        ("POD_NAME", "web-0"),
        ("POD_NAMESPACE", "shop"),
        ("INSTANCE_IP", "10.1.2.3"),
        ("MEMBRANE_CERTS_DIR", "/nonexistent"),
    ];
    let cases: [(&str, Option<&str>, &str); 6] = [
        ("POD_NAME", None, "POD_NAME is not set"),
        ("POD_NAMESPACE", None, "POD_NAMESPACE is not set"),
        (
            "INSTANCE_IP",
            Some("10.1.2"),
            "INSTANCE_IP \"10.1.2\": is not an IP address",
        ),
        (
            "PROXY_CONFIG",
            Some("{\"discoveryAddress\": 15012"),
            "PROXY_CONFIG",
        ),
        (
            "ISTIO_KUBE_APP_PROBERS",
            Some("{\"/app-health/web/livez\":{}}"),
            "ISTIO_KUBE_APP_PROBERS",
        ),
        (
            "ISTIO_META_INTERCEPTION_MODE",
            Some("SOMETIMES"),
            "ISTIO_META_INTERCEPTION_MODE",
        ),
    ];
    for (var, value, says) in cases {
        let mut env: Vec<(&str, &str)> = pod.iter().copied().filter(|(k, _)| *k != var).collect();
        if let Some(v) = value {
            env.push((var, v));
        }
        let out = sidecar_cmd(&[], &env)
            .stdin(Stdio::null())
            .output()
            .expect("run membrane-proxy sidecar");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{var}: {stderr}");
        assert!(
            stderr.starts_with(&format!("membrane-proxy: {says}")),
            "{var}: {stderr}"
        );
    }
}

#[test]
fn the_sidecar_configured_by_istios_environment_enforces_its_pods_policy() {
    // The pod's inbound port to 15006, as Istio's init container does.
    let mut net = PodSandbox::new("sidecar", 's', 13, &[8080]);
    let (client, server) = (&net.client.name.clone(), &net.server.name.clone());
    let (client_ip, server_ip) = (net.client_ip.clone(), net.server_ip.clone());
    // The app: static files on every address of the pod.
    std::fs::write(net.app_dir().join("healthz"), "ok\n").unwrap();
    net.app(8080);

    // The sidecar first, with the control plane not up yet: it must be unready and deny.
    let proxy_config = format!(
        r#"{{"discoveryAddress":"127.0.0.1:{XDS_PORT}","controlPlaneAuthPolicy":"NONE","proxyAdminPort":15000,"statusPort":15020,"holdApplicationUntilProxyStarts":true}}"#
    );
    let probers = r#"{"/app-health/app/readyz":{"httpGet":{"path":"/healthz","port":8080,"scheme":"HTTP"},"timeoutSeconds":2},"/app-health/app/livez":{"httpGet":{"path":"/gone","port":8080}},"/app-health/app/startupz":{"tcpSocket":{"port":8080}},"/app-health/db/livez":{"tcpSocket":{"port":8081},"timeoutSeconds":1}}"#;
    let env = [
        ("POD_NAME", "deathstar-1"),
        ("POD_NAMESPACE", "default"),
        ("INSTANCE_IP", server_ip.as_str()),
        ("SERVICE_ACCOUNT", "default"),
        ("HOST_IP", client_ip.as_str()),
        ("PROXY_CONFIG", proxy_config.as_str()),
        (
            "ISTIO_META_POD_PORTS",
            r#"[{"name":"http","containerPort":8080,"protocol":"TCP"}]"#,
        ),
        ("ISTIO_META_APP_CONTAINERS", "app"),
        ("ISTIO_META_CLUSTER_ID", "Kubernetes"),
        ("ISTIO_META_INTERCEPTION_MODE", "REDIRECT"),
        ("ISTIO_META_WORKLOAD_NAME", "deathstar"),
        ("ISTIO_META_MESH_ID", "cluster.local"),
        ("TRUST_DOMAIN", "cluster.local"),
        ("ISTIO_KUBE_APP_PROBERS", probers),
        ("MEMBRANE_CERTS_DIR", "/nonexistent/membrane-certs"),
    ];
    net.sidecar(&env);
    let pod = |port: u16, path: &str| format!("http://{server_ip}:{port}{path}");
    code_is(
        client,
        &[&pod(15021, "/healthz/ready")],
        "503",
        "sidecar up, unready",
    );
    let (code, _) = curl_in(client, &[&pod(8080, "/v1/x")]);
    assert_eq!(code, "403", "everything denied before the first policy");
    // holdApplicationUntilProxyStarts' hook: not ready yet, so it gives up (exit 1).
    let out = net.wait("300ms");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not ready after"),
        "{out:?}"
    );

    // The control plane comes up where PROXY_CONFIG says, with the deathstar's policy:
    // empire ships may GET /v1/... on 8080 and nothing else.
    net.write_source(&[
        "    - ports: [{port: \"8080\", protocol: TCP}]",
        "      rules: {http: [{method: GET, path: /v1/.*}]}",
    ]);
    let xds = net.xds();

    // The hook returns once the first policy is in force.
    let out = net.wait("20s");
    assert!(out.status.success(), "{out:?}");
    let (code, _) = curl_in(client, &[&pod(15021, "/healthz/ready")]);
    assert_eq!(code, "200", "ready once the policy is in force");
    let (code, _) = curl_in(client, &[&pod(15020, "/healthz/ready")]);
    assert_eq!(code, "200", "readiness on the status port too");
    // The policy of the pod the node id names, on the capture path.
    let (code, body) = curl_in(client, &[&pod(8080, "/v1/x")]);
    assert_eq!((code.as_str(), body.as_str()), ("200", "app-file\n"));
    let (code, body) = curl_in(client, &["-X", "PUT", &pod(8080, "/v1/x")]);
    assert_eq!((code.as_str(), body.as_str()), ("403", "Access denied\r\n"));
    let (code, _) = curl_in(client, &[&pod(8080, "/healthz")]);
    assert_eq!(
        code, "403",
        "the policy denies the app's health path to peers"
    );
    // The control plane knows the sidecar by Istio's node id: syncz names it as istiod
    // does, POD.NAMESPACE of a sidecar (both taken from the node id).
    let (code, syncz) = curl_in(server, &[&format!("http://{}/debug/syncz", xds.debug())]);
    assert_eq!(code, "200");
    assert!(
        syncz.contains(r#""proxy":"deathstar-1.default","proxy_type":"sidecar""#),
        "{syncz}"
    );

    // App probes through the status port, as the kubelet sends them.
    let probe = |path: &str| curl_in(client, &[&pod(15020, path)]);
    assert_eq!(
        probe("/app-health/app/readyz"),
        ("200".into(), "ok\n".into())
    );
    assert_eq!(probe("/app-health/app/livez").0, "404", "the app's own 404");
    assert_eq!(
        probe("/app-health/app/startupz").0,
        "200",
        "tcpSocket, open port"
    );
    assert_eq!(
        probe("/app-health/db/livez").0,
        "500",
        "tcpSocket, nothing listening"
    );
    assert_eq!(probe("/app-health/other/livez").0, "404", "no such probe");

    // Istio's Envoy port for Prometheus.
    let (code, metrics) = curl_in(client, &[&pod(15090, "/stats/prometheus")]);
    assert_eq!(code, "200");
    assert!(metrics.contains("membrane_requests_total"), "{metrics}");
    // The admin port is the pod's own.
    let (code, _) = curl_in(client, &[&pod(15000, "/server_info")]);
    assert_eq!(code, "000", "admin on localhost only");
    let (code, _) = curl_in(server, &["http://127.0.0.1:15000/server_info"]);
    assert_eq!(code, "200");

    drop(xds);
}
