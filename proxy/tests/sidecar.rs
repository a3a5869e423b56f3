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

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use membrane_test_support::sandbox::{self, curl_in};
use membrane_test_support::xds::{self as launcher};
use membrane_test_support::{wait_until, ChildGuard, Netns};

/// `membrane-xds`, a binary of another package: a workspace build puts it beside this
/// package's binary (`make test` builds every binary first). Building it from inside the
/// test would race the build that runs the test, so a missing binary is an error saying
/// how to get it.
fn xds_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_membrane-proxy")).with_file_name("membrane-xds");
    assert!(
        bin.exists(),
        "{} missing: build the workspace's binaries first (cargo build --workspace --bins)",
        bin.display()
    );
    bin
}

/// `membrane-proxy sidecar` (run by `wrapper` when given, e.g. `ip netns exec NS`) with
/// exactly `env` (and PATH) as its environment: no flag, as Istio's injection runs it.
fn sidecar_cmd(wrapper: &[&str], env: &[(&str, &str)]) -> Command {
    let bin = env!("CARGO_BIN_EXE_membrane-proxy");
    let mut c = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    c.arg("sidecar")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied());
    c
}

/// `membrane-proxy wait` in the pod's namespace, as the postStart hook runs it.
fn wait_in(ns: &str, timeout: &str) -> std::process::Output {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            env!("CARGO_BIN_EXE_membrane-proxy"),
            "wait",
        ])
        .args(["--timeout", timeout, "--period", "100ms"])
        .output()
        .expect("run membrane-proxy wait")
}

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

/// The pods and the deathstar's policy as membrane-xds's directory source reads them: the
/// deathstar at the server end of the veth pair, a tiefighter at the client end; empire
/// ships may GET /v1/... on 8080 and nothing else.
fn source(dir: &Path, client: &str, server: &str) {
    let pods = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: deathstar-1, namespace: default, labels: {{org: empire, class: deathstar}}}}\nstatus: {{podIP: {server}}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: tiefighter, namespace: default, labels: {{org: empire, class: tiefighter}}}}\nstatus: {{podIP: {client}}}\n"
    );
    std::fs::write(dir.join("pods.yaml"), pods).unwrap();
    let cnp = [
        "apiVersion: cilium.io/v2",
        "kind: CiliumNetworkPolicy",
        "metadata: {name: deathstar, namespace: default}",
        "spec:",
        "  endpointSelector: {matchLabels: {class: deathstar}}",
        "  ingress:",
        "  - fromEndpoints: [{matchLabels: {org: empire}}]",
        "    toPorts:",
        "    - ports: [{port: \"8080\", protocol: TCP}]",
        "      rules: {http: [{method: GET, path: /v1/.*}]}",
    ]
    .join("\n");
    std::fs::write(dir.join("cnp.yaml"), cnp).unwrap();
}

/// Removes the test's files when dropped (after the processes and namespaces).
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn code_is(ns: &str, args: &[&str], want: &str, what: &str) -> (String, String) {
    wait_until(
        Duration::from_secs(20),
        Duration::from_millis(100),
        what,
        || {
            let got = curl_in(ns, args);
            (got.0 == want).then_some(got)
        },
    )
}

#[test]
fn the_sidecar_configured_by_istios_environment_enforces_its_pods_policy() {
    let id = std::process::id() % 100_000;
    let dir = Dir(std::env::temp_dir().join(format!("membrane-sidecar-{id}")));
    let (app_dir, xds_dir) = (dir.0.join("app"), dir.0.join("xds"));
    std::fs::create_dir_all(app_dir.join("v1")).unwrap();
    std::fs::create_dir_all(&xds_dir).unwrap();
    // Declared first, so dropped last: processes go before their namespaces.
    let (client, server) = (
        Netns::add(&format!("mbr-sc-{id}")),
        Netns::add(&format!("mbr-ss-{id}")),
    );
    let (client_ip, server_ip) = ("10.251.13.1", "10.251.13.2");
    sandbox::veth(
        &client,
        &format!("mvk{id}"),
        &format!("{client_ip}/30"),
        &server,
        &format!("mvl{id}"),
        &format!("{server_ip}/30"),
    );
    let mut children: Vec<ChildGuard> = Vec::new();
    // Istio's init container: the pod's inbound port to 15006.
    let rules = dir.0.join("capture.nft");
    std::fs::write(
        &rules,
        "table ip membrane_sidecar_test {\n  chain prerouting {\n    type nat hook prerouting priority dstnat;\n    tcp dport 8080 redirect to :15006\n  }\n}\n",
    )
    .unwrap();
    membrane_test_support::process::run(server.exec("nft").arg("-f").arg(&rules));
    // The app: static files on every address of the pod.
    std::fs::write(app_dir.join("v1/x"), "app-file\n").unwrap();
    std::fs::write(app_dir.join("healthz"), "ok\n").unwrap();
    let mut app = server.exec("python3");
    app.args([
        "-m",
        "http.server",
        "8080",
        "--bind",
        "0.0.0.0",
        "--directory",
    ])
    .arg(&app_dir)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    children.push(ChildGuard(app.spawn().unwrap()));
    // Up once it answers inside the pod (local connections are not redirected).
    code_is(
        &server.name,
        &[&format!("http://{server_ip}:8080/v1/x")],
        "200",
        "the app up",
    );

    // The sidecar first, with the control plane not up yet: it must be unready and deny.
    let xds_port = "15010";
    let proxy_config = format!(
        r#"{{"discoveryAddress":"127.0.0.1:{xds_port}","controlPlaneAuthPolicy":"NONE","proxyAdminPort":15000,"statusPort":15020,"holdApplicationUntilProxyStarts":true}}"#
    );
    let probers = r#"{"/app-health/app/readyz":{"httpGet":{"path":"/healthz","port":8080,"scheme":"HTTP"},"timeoutSeconds":2},"/app-health/app/livez":{"httpGet":{"path":"/gone","port":8080}},"/app-health/app/startupz":{"tcpSocket":{"port":8080}},"/app-health/db/livez":{"tcpSocket":{"port":8081},"timeoutSeconds":1}}"#;
    let env = [
        ("POD_NAME", "deathstar-1"),
        ("POD_NAMESPACE", "default"),
        ("INSTANCE_IP", server_ip),
        ("SERVICE_ACCOUNT", "default"),
        ("HOST_IP", client_ip),
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
    let sidecar = sidecar_cmd(&["ip", "netns", "exec", &server.name], &env)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    children.push(ChildGuard(sidecar));
    let pod = |port: u16, path: &str| format!("http://{server_ip}:{port}{path}");
    code_is(
        &client.name,
        &[&pod(15021, "/healthz/ready")],
        "503",
        "sidecar up, unready",
    );
    let (code, _) = curl_in(&client.name, &[&pod(8080, "/v1/x")]);
    assert_eq!(code, "403", "everything denied before the first policy");
    // holdApplicationUntilProxyStarts' hook: not ready yet, so it gives up (exit 1).
    let out = wait_in(&server.name, "300ms");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not ready after"),
        "{out:?}"
    );

    // The control plane comes up where PROXY_CONFIG says.
    source(&xds_dir, client_ip, server_ip);
    let mut xds = Command::new("ip");
    xds.args(["netns", "exec", &server.name])
        .arg(xds_bin())
        .args(["--debug-addr", "127.0.0.1:0", "--tls-addr", "127.0.0.1:0"])
        .args(["--plaintext-xds", "--grpc-addr"])
        .arg(format!("127.0.0.1:{xds_port}"))
        .args(["--poll-ms", "50"]);
    let xds = launcher::spawn(xds, &xds_dir);

    // The hook returns once the first policy is in force.
    let out = wait_in(&server.name, "20s");
    assert!(out.status.success(), "{out:?}");
    let (code, _) = curl_in(&client.name, &[&pod(15021, "/healthz/ready")]);
    assert_eq!(code, "200", "ready once the policy is in force");
    let (code, _) = curl_in(&client.name, &[&pod(15020, "/healthz/ready")]);
    assert_eq!(code, "200", "readiness on the status port too");
    // The policy of the pod the node id names, on the capture path.
    let (code, body) = curl_in(&client.name, &[&pod(8080, "/v1/x")]);
    assert_eq!((code.as_str(), body.as_str()), ("200", "app-file\n"));
    let (code, body) = curl_in(&client.name, &["-X", "PUT", &pod(8080, "/v1/x")]);
    assert_eq!((code.as_str(), body.as_str()), ("403", "Access denied\r\n"));
    let (code, _) = curl_in(&client.name, &[&pod(8080, "/healthz")]);
    assert_eq!(
        code, "403",
        "the policy denies the app's health path to peers"
    );
    // The control plane knows the sidecar by Istio's node id: syncz names it as istiod
    // does, POD.NAMESPACE of a sidecar (both taken from the node id).
    let (code, syncz) = curl_in(
        &server.name,
        &[&format!("http://{}/debug/syncz", xds.debug())],
    );
    assert_eq!(code, "200");
    assert!(
        syncz.contains(r#""proxy":"deathstar-1.default","proxy_type":"sidecar""#),
        "{syncz}"
    );

    // App probes through the status port, as the kubelet sends them.
    let probe = |path: &str| curl_in(&client.name, &[&pod(15020, path)]);
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
    let (code, metrics) = curl_in(&client.name, &[&pod(15090, "/stats/prometheus")]);
    assert_eq!(code, "200");
    assert!(metrics.contains("membrane_requests_total"), "{metrics}");
    // The admin port is the pod's own.
    let (code, _) = curl_in(&client.name, &[&pod(15000, "/server_info")]);
    assert_eq!(code, "000", "admin on localhost only");
    let (code, _) = curl_in(&server.name, &["http://127.0.0.1:15000/server_info"]);
    assert_eq!(code, "200");

    drop(children);
    drop(xds);
}
