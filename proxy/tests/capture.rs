//! Transparent capture, privileged: two network namespaces joined by a veth pair and an
//! nftables REDIRECT. Inbound: the proxy reads the original destination (SO_ORIGINAL_DST),
//! enforces the ingress policy of that port and delivers to the application at that
//! original destination (the pod's address), never to one of its own ports.
//! Outbound: the application's connection to a remote address is redirected to the proxy,
//! which enforces the egress policy for that destination and connects to it (the proxy runs
//! as uid 1337, which the redirect exempts). Namespaces are removed even on failure.

use std::process::{Child, Command, Stdio};

use membrane_test_support::pki::{Ca, Leaf, Usage};
use membrane_test_support::{sandbox, ChildGuard, Netns};
use std::time::{Duration, Instant};

struct Env {
    children: Vec<ChildGuard>,
    nets: Vec<Netns>,
    dir: std::path::PathBuf,
}

impl Env {
    /// Keeps `child` running until the environment is dropped.
    fn keep(&mut self, child: Child) {
        self.children.push(ChildGuard(child));
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Processes first, then the namespaces (and with them the veth pair), then files.
        self.children.clear();
        self.nets.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(args: &[&str]) {
    membrane_test_support::process::run_args(args);
}

/// Creates network namespaces `a` and `b` joined by a veth pair (devices `PREFIX_A{id}`,
/// `PREFIX_B{id}`) with 10.251.NET.1/30 in `a` and 10.251.NET.2/30 in `b`, links and
/// loopbacks up; dropping the returned guards removes the namespaces (and the pair).
fn link(a: &str, b: &str, (pa, pb): (&str, &str), id: u32, net: u8) -> [Netns; 2] {
    let (na, nb) = (Netns::add(a), Netns::add(b));
    let (va, vb) = (format!("{pa}{id}"), format!("{pb}{id}"));
    let (aa, ab) = (format!("10.251.{net}.1/30"), format!("10.251.{net}.2/30"));
    sandbox::veth(&na, &va, &aa, &nb, &vb, &ab);
    [na, nb]
}

/// Repeats `curl` (every 100 ms, for at most 10 s) until it answers 200, while the sidecar
/// and the redirect come up; returns the last answer.
fn until_200(mut curl: impl FnMut() -> (String, String)) -> (String, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = (String::new(), String::new());
    while Instant::now() < deadline {
        last = curl();
        if last.0 == "200" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    last
}

fn curl_in(ns: &str, extra: &[&str]) -> (String, String) {
    sandbox::curl_in(ns, extra)
}

/// Loads the nftables `table` in namespace `ns` (written to `dir/capture.nft` first).
fn nft(ns: &str, dir: &std::path::Path, table: &str) {
    let rules = dir.join("capture.nft");
    std::fs::write(&rules, table).unwrap();
    run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "nft",
        "-f",
        rules.to_str().unwrap(),
    ]);
}

/// Outbound capture as an iptables-style init sets it up: TCP to `port` from every uid but the
/// sidecar's (1337) is redirected to the outbound listener, 15001.
fn outbound_capture(port: u16) -> String {
    format!(
        "table ip membrane_capture_test {{\n  chain output {{\n    type nat hook output priority -100;\n    meta skuid 1337 return\n    tcp dport {port} redirect to :15001\n  }}\n}}\n"
    )
}

/// Who runs the sidecar.
enum RunAs<'a> {
    /// This test's own build of the binary, as root (inbound capture needs no uid).
    Root,
    /// A copy of the binary the sidecar's uid can read and execute (outbound capture
    /// tells the proxy's own connections apart by that uid).
    Sidecar(&'a std::path::Path),
}

/// The sidecar in namespace `ns`, standalone, with the sidecar's usual ports (listener
/// 15100, admin 15000, metrics 15020, health 15021), its access log off, the policy in
/// `policy`, and `capture` (the capture listener flag and address) plus `extra` flags.
fn sidecar(
    ns: &str,
    run_as: RunAs<'_>,
    upstream: &str,
    capture: [&str; 2],
    labels: &str,
    extra: &[&str],
    policy: &std::path::Path,
) -> std::process::Child {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]);
    match run_as {
        RunAs::Root => cmd.arg(env!("CARGO_BIN_EXE_membrane-proxy")),
        RunAs::Sidecar(binary) => cmd.args(sandbox::AS_SIDECAR).arg(binary),
    };
    cmd.args([
        "standalone",
        "--listen",
        "127.0.0.1:15100",
        "--upstream",
        upstream,
    ])
    .args(capture)
    .args(["--admin", "127.0.0.1:15000", "--metrics", "127.0.0.1:15020"])
    .args(["--health", "127.0.0.1:15021", "--endpoint-labels", labels])
    .args(["--access-log", "false"])
    .args(extra)
    .arg("--policy")
    .arg(policy)
    .stdout(Stdio::null())
    .spawn()
    .unwrap()
}

#[test]
fn redirected_connections_get_the_policy_of_their_original_port() {
    let id = std::process::id() % 100_000;
    let (client, server) = (format!("mbr-c-{id}"), format!("mbr-s-{id}"));
    let dir = std::env::temp_dir().join(format!("membrane-capture-{id}"));
    std::fs::create_dir_all(dir.join("v1")).unwrap();
    let mut env = Env {
        children: vec![],
        nets: vec![],
        dir: dir.clone(),
    };
    env.nets
        .extend(link(&client, &server, ("mvc", "mvs"), id, 7));
    nft(
        &server,
        &dir,
        "table ip membrane_capture_test {\n  chain prerouting {\n    type nat hook prerouting priority dstnat;\n    tcp dport { 8080, 15000 } redirect to :15006\n  }\n}\n",
    );

    // The application: a static file server on every address; from outside the pod the
    // redirect sends its port through the proxy.
    std::fs::write(dir.join("v1/x"), "app-file\n").unwrap();
    env.keep(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &server,
                "python3",
                "-m",
                "http.server",
                "8080",
                "--bind",
                "0.0.0.0",
            ])
            .arg("--directory")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let policy = dir.join("policy.yaml");
    std::fs::write(
        &policy,
        [
            "apiVersion: cilium.io/v2",
            "kind: CiliumNetworkPolicy",
            "metadata: {name: capture, namespace: default}",
            "spec:",
            "  endpointSelector: {matchLabels: {app: backend}}",
            "  ingress:",
            "  - fromEndpoints: [{matchLabels: {org: empire}}]",
            "    toPorts:",
            "    - ports: [{port: \"8080\", protocol: TCP}]",
            "      rules: {http: [{method: GET, path: /v1/.*}]}",
        ]
        .join("\n"),
    )
    .unwrap();
    env.keep(sidecar(
        &server,
        RunAs::Root,
        "127.0.0.1:8080",
        ["--capture-inbound", "0.0.0.0:15006"],
        "k8s:app=backend",
        &["--peer", "10.251.7.1=k8s:org=empire"],
        &policy,
    ));

    // The client addresses the application's port; the redirect sends it through the proxy.
    let url = "http://10.251.7.2:8080/v1/x";
    let last = until_200(|| curl_in(&client, &[url]));
    assert_eq!(
        last,
        ("200".to_owned(), "app-file\n".to_owned()),
        "allowed request through capture"
    );
    let (code, body) = curl_in(&client, &["-X", "PUT", url]);
    assert_eq!((code.as_str(), body.as_str()), ("403", "Access denied\r\n"));
    let (code, _) = curl_in(&client, &["http://10.251.7.2:8080/admin"]);
    assert_eq!(code, "403");
    // Dialling the capture port itself is not a redirected connection: closed, not looped.
    let (code, _) = curl_in(&client, &["http://10.251.7.2:15006/v1/x"]);
    assert_eq!(code, "000");
    // A redirect of one of the sidecar's own ports (here the admin's) is refused, not
    // forwarded to the sidecar.
    let (code, body) = curl_in(&client, &["http://10.251.7.2:15000/config_dump"]);
    assert_eq!(code, "000", "{body}");
    let (_, metrics) = curl_in(&server, &["http://127.0.0.1:15020/stats/prometheus"]);
    assert!(
        metrics.contains(
            "membrane_capture_refused_total{listener=\"inbound\",reason=\"proxy_port\"} 2"
        ),
        "the capture port and the admin port refused as the sidecar's own: {metrics}"
    );
    drop(env);
}

#[test]
fn redirected_outbound_connections_get_the_egress_policy_of_their_destination() {
    let id = std::process::id() % 100_000;
    let (app, remote) = (format!("mbr-a-{id}"), format!("mbr-r-{id}"));
    let dir = std::env::temp_dir().join(format!("membrane-capture-out-{id}"));
    std::fs::create_dir_all(dir.join("v1")).unwrap();
    let mut env = Env {
        children: vec![],
        nets: vec![],
        dir: dir.clone(),
    };
    env.nets.extend(link(&app, &remote, ("mva", "mvr"), id, 9));
    nft(&app, &dir, &outbound_capture(8080));
    std::fs::write(dir.join("v1/x"), "remote-file\n").unwrap();
    env.keep(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &remote,
                "python3",
                "-m",
                "http.server",
                "8080",
                "--bind",
                "10.251.9.2",
            ])
            .arg("--directory")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let policy = dir.join("policy.yaml");
    std::fs::write(
        &policy,
        [
            "apiVersion: cilium.io/v2",
            "kind: CiliumNetworkPolicy",
            "metadata: {name: egress, namespace: default}",
            "spec:",
            "  endpointSelector: {matchLabels: {app: client}}",
            "  egress:",
            "  - toCIDR: [10.251.9.2/32]",
            "    toPorts:",
            "    - ports: [{port: \"8080\", protocol: TCP}]",
            "      rules: {http: [{method: GET, path: /v1/.*}]}",
        ]
        .join("\n"),
    )
    .unwrap();
    // The unprivileged proxy must be able to read its files and execute its binary; the
    // build's target directory may sit under a home directory it cannot enter (/root).
    let binary = dir.join("membrane-proxy");
    std::fs::copy(env!("CARGO_BIN_EXE_membrane-proxy"), &binary).unwrap();
    run(&["chmod", "-R", "a+rX", dir.to_str().unwrap()]);
    env.keep(sidecar(
        &app,
        RunAs::Sidecar(&binary),
        "127.0.0.1:9",
        ["--capture-outbound", "0.0.0.0:15001"],
        "k8s:app=client",
        &[],
        &policy,
    ));
    let url = "http://10.251.9.2:8080/v1/x";
    let last = until_200(|| curl_in(&app, &[url]));
    assert_eq!(
        last,
        ("200".to_owned(), "remote-file\n".to_owned()),
        "allowed egress through capture"
    );
    let (code, body) = curl_in(&app, &["-X", "PUT", url]);
    assert_eq!((code.as_str(), body.as_str()), ("403", "Access denied\r\n"));
    let (code, _) = curl_in(&app, &["http://10.251.9.2:8080/other"]);
    assert_eq!(code, "403");
    drop(env);
}

/// A CA `name.crt`/`name.key` in `dir`, and a server certificate `leaf.crt`/`leaf.key`
/// for DNS `host` signed by it.
fn ca_and_server(dir: &std::path::Path, name: &str, leaf: &str, host: &str) {
    let file = |stem: &str, ext: &str| dir.join(format!("{stem}.{ext}"));
    let ca = Ca::new(name, &file(name, "crt"), &file(name, "key"));
    ca.issue(
        &Leaf::new(host).dns(&[host]).usage(Usage::Server),
        &file(leaf, "crt"),
        &file(leaf, "key"),
    );
}

#[test]
fn captured_egress_tls_is_terminated_inspected_and_reoriginated_verified() {
    let id = std::process::id() % 100_000;
    let (app, remote) = (format!("mbr-ta-{id}"), format!("mbr-tr-{id}"));
    let dir = std::env::temp_dir().join(format!("membrane-capture-tls-{id}"));
    std::fs::create_dir_all(dir.join("www/v1")).unwrap();
    std::fs::create_dir_all(dir.join("secrets")).unwrap();
    let mut env = Env {
        children: vec![],
        nets: vec![],
        dir: dir.clone(),
    };
    // The app trusts `front` (the inspection CA); the remote's certificate is from `back`.
    ca_and_server(&dir, "front", "intercept", "remote.test");
    ca_and_server(&dir, "back", "remote", "remote.test");
    let pem = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .unwrap()
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    std::fs::write(
        dir.join("secrets/tls.yaml"),
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: intercept, namespace: default}}\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: remote-ca, namespace: default}}\nstringData:\n  ca.crt: |\n{}",
            pem("intercept.crt"),
            pem("intercept.key"),
            pem("back.crt")
        ),
    )
    .unwrap();
    env.nets.extend(link(&app, &remote, ("mta", "mtr"), id, 10));
    nft(&app, &dir, &outbound_capture(8443));
    std::fs::write(dir.join("www/v1/x"), "remote-file\n").unwrap();
    // A TLS server in the remote namespace serving www/ (openssl s_server -WWW).
    env.keep(
        Command::new("ip")
            .args(["netns", "exec", &remote, "openssl", "s_server", "-quiet"])
            .args(["-accept", "10.251.10.2:8443", "-WWW"])
            .arg("-cert")
            .arg(dir.join("remote.crt"))
            .arg("-key")
            .arg(dir.join("remote.key"))
            .current_dir(dir.join("www"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let policy = dir.join("policy.yaml");
    std::fs::write(
        &policy,
        [
            "apiVersion: cilium.io/v2",
            "kind: CiliumNetworkPolicy",
            "metadata: {name: egress-tls, namespace: default}",
            "spec:",
            "  endpointSelector: {matchLabels: {app: client}}",
            "  egress:",
            "  - toCIDR: [10.251.10.2/32]",
            "    toPorts:",
            "    - ports: [{port: \"8443\", protocol: TCP}]",
            "      serverNames: [remote.test]",
            "      terminatingTLS: {secret: {name: intercept}}",
            "      originatingTLS: {secret: {name: remote-ca}}",
            "      rules: {http: [{method: GET, path: /v1/.*}]}",
        ]
        .join("\n"),
    )
    .unwrap();
    let binary = dir.join("membrane-proxy");
    std::fs::copy(env!("CARGO_BIN_EXE_membrane-proxy"), &binary).unwrap();
    run(&["chmod", "-R", "a+rX", dir.to_str().unwrap()]);
    let secrets = dir.join("secrets");
    env.keep(sidecar(
        &app,
        RunAs::Sidecar(&binary),
        "127.0.0.1:9",
        ["--capture-outbound", "0.0.0.0:15001"],
        "k8s:app=client",
        &["--secrets-dir", secrets.to_str().unwrap()],
        &policy,
    ));
    let front = dir.join("front.crt").display().to_string();
    let https = |name: &str, extra: &[&str]| {
        let resolve = format!("{name}:8443:10.251.10.2");
        let url = format!("https://{name}:8443/v1/x");
        // HTTP/1.1: `openssl s_server -WWW` speaks no HTTP/2 upstream.
        let mut args = vec!["--http1.1", "--cacert", &front, "--resolve", &resolve];
        args.extend_from_slice(extra);
        args.push(&url);
        curl_in(&app, &args)
    };
    let last = until_200(|| https("remote.test", &[]));
    // The app sees the inspection certificate (it trusts only `front`), the proxy the
    // remote's (verified against `back`), and the request passed the HTTP rules.
    assert_eq!(
        last,
        ("200".to_owned(), "remote-file\n".to_owned()),
        "allowed egress through TLS inspection"
    );
    let (code, body) = https("remote.test", &["-X", "PUT"]);
    assert_eq!((code.as_str(), body.as_str()), ("403", "Access denied\r\n"));
    // Another SNI to the same address: refused at the handshake.
    assert_eq!(https("other.test", &["-k"]).0, "000");
    drop(env);
}
