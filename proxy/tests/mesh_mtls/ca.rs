//! The workload certificate from the CA instead of files, against the real membrane-xds
//! CA (Istio's `CreateCertificate` on its mTLS port, tokens checked by TokenReview against
//! a recorded API server) and a real Envoy configured as Istio configures istio-proxy.
//!
//! Pod `b` runs membrane-xds (`--kube` pointed at a loopback HTTPS stand-in for the API
//! server that answers the lists empty and the TokenReviews from recorded answers), and
//! a membrane sidecar with no certificate files that asks the CA with b's token, with a
//! short lifetime so it renews during the test. Envoy in `a` talks Istio mTLS to it
//! (inbound, STRICT), and the sidecar originates Istio mTLS to Envoy's inbound chain in
//! `a` (outbound). Checked: unready until the certificate is in force; both directions
//! verify the CA-issued certificate; renewal serves a new certificate to new handshakes
//! while Envoy's open HTTP/2 connection keeps serving; a sidecar asking for another
//! identity and one with a forged token are refused, say why, stay unready and serve no
//! plaintext; a sidecar whose policy comes over membrane-xds's mTLS port presents its
//! CA-issued certificate there (from memory) and becomes ready.

use super::*;

/// The API server's stand-in: HTTPS on 127.0.0.1:6443; every list is empty, watches end
/// at once (the client watches again), and a TokenReview is answered from `answers`
/// (token → status), unknown tokens as the API server answers them.
const FAKE_API: &str = r#"
import http.server, json, ssl, sys
cert, key, answers = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def reply(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if "watch=true" in self.path:
            return self.reply(200, {"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1",
                "metadata": {"resourceVersion": "1", "annotations": {"k8s.io/initial-events-end": "true"}}}})
        self.reply(200, {"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": []})
    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["content-length"])))
        status = answers.get(req["spec"]["token"], {"user": {}, "error": "[invalid bearer token, token lookup failed]"})
        self.reply(201, {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "metadata": {}, "spec": req["spec"], "status": status})
    def do_PATCH(self):
        self.reply(404, {"kind": "Status", "code": 404})
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 6443), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
s.socket = ctx.wrap_socket(s.socket, server_side=True)
s.serve_forever()
"#;

/// The recorded TokenReview statuses: b's projected token.
fn answers() -> String {
    serde_json::json!({
        "b-istio-token": {
            "authenticated": true,
            "user": {
                "username": "system:serviceaccount:default:b",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:default", "system:authenticated"],
                "extra": {"authentication.kubernetes.io/pod-name": ["b-1"]}
            },
            "audiences": ["istio-ca"]
        }
    })
    .to_string()
}

/// The serial number and SANs of the certificate a new mTLS handshake with `addr` gets.
fn served_cert(ns: &str, addr: &str, a: &Path) -> String {
    let script = format!(
        "openssl s_client -connect {addr} -cert {c} -key {k} -alpn istio-http/1.1,istio,http/1.1 </dev/null 2>/dev/null | openssl x509 -noout -serial -issuer -ext subjectAltName 2>&1",
        c = a.join("cert-chain.pem").display(),
        k = a.join("key.pem").display(),
    );
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c", &script])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Policy for b: a may call 8081 (GET), b may call a's Envoy on 9443 (GET).
fn policy(net: u8) -> String {
    format!(
        "{}\n---\n{}",
        ingress_policy(net),
        [
            "apiVersion: cilium.io/v2",
            "kind: CiliumNetworkPolicy",
            "metadata: {name: mesh-out-b, namespace: default}",
            "spec:",
            "  endpointSelector: {matchLabels: {app: b}}",
            "  egress:",
            &format!("  - toCIDR: [10.251.{net}.1/32]"),
            "    toPorts:",
            "    - ports: [{port: \"9443\", protocol: TCP}]",
            "      rules: {http: [{method: GET}]}",
        ]
        .join("\n")
    )
}

/// The flags of a sidecar in b whose certificate comes from the CA at `ca` with `token`,
/// as `identity`; no certificate files exist at `--mesh-*`.
fn ca_flags(dir: &Path, ca: &str, token: &str, identity: &str, n: u16) -> Vec<String> {
    let token_file = dir.join(format!("token-{n}"));
    std::fs::write(&token_file, token).unwrap();
    let none = dir.join(format!("no-files-{n}"));
    let mut f = mesh_flags(&none);
    f.extend(
        [
            "--mesh-ca-address",
            ca,
            "--mesh-ca-identity",
            identity,
            "--mesh-ca-token",
            token_file.to_str().unwrap(),
            "--mesh-ca-root",
            dir.join("root").join("ca.pem").to_str().unwrap(),
            "--mesh-ca-ttl",
            "10s",
            "--mesh-ca-grace-ratio",
            "0.5",
            "--mesh-tls-mode",
            "STRICT",
        ]
        .map(String::from),
    );
    f
}

fn health(ns: &str, n: u16) -> String {
    curl(
        ns,
        &[&format!("http://127.0.0.1:{}/healthz/ready", 15400 + n)],
    )
    .0
}

#[test]
fn a_certificate_from_the_ca_serves_envoy_both_ways_and_renews() {
    let net = 49;
    let (mut env, a, b) = Env::new("c", net);
    let (a_addr, b_addr) = (format!("10.251.{net}.1"), format!("10.251.{net}.2"));
    let root = mesh_pki(&env.dir, &["a"]);
    let da = env.dir.join("a");
    let other = Ca::in_dir(&env.dir, "other", "other mesh root");
    issue(&other, &env.dir.join("x"), "x", "x");
    let root_dir = env.dir.join("root");
    std::fs::create_dir_all(&root_dir).unwrap();
    std::fs::copy(root.cert(), root_dir.join("ca.pem")).unwrap();
    // The control plane's certificate and the API server's, from the mesh root.
    let xds_cert = root.issue_in(
        &env.dir,
        "xds",
        &Leaf::new("membrane-xds").san("IP:127.0.0.1"),
    );
    let api_cert = root.issue_in(
        &env.dir,
        "api",
        &Leaf::new("kube-apiserver").san("IP:127.0.0.1"),
    );
    std::fs::write(env.dir.join("answers.json"), answers()).unwrap();
    std::fs::write(env.dir.join("fake_api.py"), FAKE_API).unwrap();
    let mut api = Command::new("ip");
    api.args(["netns", "exec", &b, "python3"])
        .arg(env.dir.join("fake_api.py"))
        .args([&api_cert.cert, &api_cert.key])
        .arg(env.dir.join("answers.json"));
    env.spawn(api, "api.log");
    let kubeconfig = env.dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:6443\n    certificate-authority: {}\n\
             users:\n- name: x\n  user:\n    token: xds-token\ncontexts:\n- name: c\n  context: {{cluster: c, user: x}}\ncurrent-context: c\n",
            root.cert().display()
        ),
    )
    .unwrap();
    let source = env.dir.join("source");
    std::fs::create_dir_all(&source).unwrap();
    // Pod b-1 runs as b at b's address: the sidecar whose xDS connection presents the
    // CA-issued certificate (sidecar 3) is that pod.
    std::fs::write(
        source.join("pods.yaml"),
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: b-1, namespace: default, labels: {{app: b}}}}\nspec: {{serviceAccountName: b}}\nstatus: {{podIP: {b_addr}}}\n"),
    )
    .unwrap();
    let mut xds = Command::new("ip");
    xds.args(["netns", "exec", &b])
        .arg(membrane_test_support::process::sibling_bin(
            env!("CARGO_BIN_EXE_membrane-proxy"),
            "membrane-xds",
        ))
        .args([
            "--debug-addr",
            "127.0.0.1:0",
            "--tls-addr",
            "127.0.0.1:15012",
        ])
        .arg("--tls-cert")
        .arg(&xds_cert.cert)
        .arg("--tls-key")
        .arg(&xds_cert.key)
        .arg("--ca-cert")
        .arg(root.cert())
        .arg("--ca-key")
        .arg(&root.files.key)
        // b's sidecars share b's token, so one identity's limit; room for the refused
        // ones' retries beside sidecar 0's renewals.
        .args(["--ca-requests-per-minute", "200"])
        .args(["--kube", "--kube-sync-secs", "5", "--kubeconfig"])
        .arg(&kubeconfig);
    // Started after the API server answers (the stand-in is up within the wait).
    wait_until(
        Duration::from_secs(10),
        Duration::from_millis(100),
        "the API server's stand-in",
        || {
            let (code, _) = curl(&b, &["-k", "https://127.0.0.1:6443/api/v1/pods"]);
            (code == "200").then_some(())
        },
    );
    let xds = membrane_test_support::xds::spawn(xds, &source);
    let ca = "https://127.0.0.1:15012";

    // Istio's init container in b: inbound 8081 (STRICT sidecar 0), 8082 (sidecar 1)
    // and 8083 (sidecar 2) to their captures; the app's outbound 9443 to sidecar 0.
    env.nft(
        &b,
        "table ip istio_capture {\n  chain prerouting {\n    type nat hook prerouting priority dstnat;\n    tcp dport 8081 redirect to :15006\n    tcp dport 8082 redirect to :15016\n    tcp dport 8083 redirect to :15026\n  }\n  chain output {\n    type nat hook output priority -100;\n    meta skuid 1337 return\n    tcp dport 9443 redirect to :15001\n  }\n}\n",
    );
    env.app(&b, &["8081", "8082", "8083"]);
    env.app(&a, &["8090"]);
    let binary = env.dir.join("membrane-proxy");
    std::fs::copy(env!("CARGO_BIN_EXE_membrane-proxy"), &binary).unwrap();
    let policy = policy(net);
    let id_b = spiffe("b");
    let mut extra = ca_flags(&env.dir, ca, "b-istio-token", &id_b, 0);
    extra.extend(["--capture-inbound".into(), "0.0.0.0:15006".into()]);
    extra.extend(["--capture-outbound".into(), "0.0.0.0:15001".into()]);
    extra.extend(["--mesh-outbound-cidrs".into(), format!("{a_addr}/32")]);
    // Another identity with b's token, and a forged token.
    let mut other_id = ca_flags(&env.dir, ca, "b-istio-token", &spiffe("c"), 1);
    other_id.extend(["--capture-inbound".into(), "0.0.0.0:15016".into()]);
    let mut forged = ca_flags(&env.dir, ca, "forged-token", &id_b, 2);
    forged.extend(["--capture-inbound".into(), "0.0.0.0:15026".into()]);
    membrane_test_support::process::run_args(&["chmod", "-R", "a+rX", env.dir.to_str().unwrap()]);
    for (n, flags) in [(0, &extra), (1, &other_id), (2, &forged)] {
        membrane(&mut env, &b, &binary, true, n, "k8s:app=b", &policy, flags);
    }

    // Sidecar 3: policy over xDS from membrane-xds's mTLS port, presenting the
    // certificate the CA issued it (held in memory only).
    let mut xds_client = ca_flags(&env.dir, ca, "b-istio-token", &id_b, 3);
    xds_client.extend(["--capture-inbound".into(), "0.0.0.0:15036".into()]);
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &b]).args(sandbox::AS_SIDECAR);
    cmd.arg(&binary).arg("standalone");
    cmd.args(["--listen", "127.0.0.1:15103", "--upstream", "127.0.0.1:9"])
        .args(["--admin", "127.0.0.1:15203", "--metrics", "127.0.0.1:15303"])
        .args(["--health", "127.0.0.1:15403", "--xds-address", ca])
        .arg("--node-id")
        .arg(format!(
            "sidecar~{b_addr}~b-1.default~default.svc.cluster.local"
        ))
        .arg("--xds-ca")
        .arg(root_dir.join("ca.pem"))
        .arg("--xds-cert-from-mesh")
        .args(&xds_client);
    membrane_test_support::process::run_args(&["chmod", "-R", "a+rX", env.dir.to_str().unwrap()]);
    env.spawn(cmd, "membrane-3.log");

    // Ready once the certificate is in force; it is the CA's, for b.
    wait_until(
        Duration::from_secs(20),
        Duration::from_millis(100),
        "sidecar 0 ready with its certificate",
        || (health(&b, 0) == "200").then_some(()),
    );
    assert!(env
        .log("membrane-0.log")
        .contains("mesh mTLS certificate from the CA in force"));
    env.envoy(&a, "envoy-client", &client_envoy(&b_addr, &da));
    env.envoy(&a, "envoy-server", &server_envoy(&da, &env.dir.join("x")));

    // Envoy → membrane: Istio mTLS with the CA-issued certificate, HTTP/1.1 and HTTP/2.
    let xfcc_by = format!("By={id_b};");
    for path in ["/strict/h1", "/strict/h2"] {
        let body = until_200(&a, &[&format!("http://127.0.0.1:10000{path}")]);
        assert!(
            body.contains(&xfcc_by),
            "{path}: XFCC by b's issued id: {body}"
        );
        assert!(body.contains(&format!(";URI={}", spiffe("a"))), "{body}");
    }
    let first = served_cert(&a, &format!("{b_addr}:8081"), &da);
    assert!(
        first.contains(&format!("URI:{id_b}")) && first.contains("mesh root"),
        "{first}"
    );

    // membrane → Envoy: the app's connection originated as Istio mTLS with the same
    // certificate; Envoy verified it against the mesh root and names b.
    let body = until_200(
        &b,
        &[
            "-H",
            &format!("Host: {HOST}"),
            &format!("http://{a_addr}:9443/x"),
        ],
    );
    assert!(
        body.contains(&format!("URI={id_b}")),
        "Envoy verified b: {body}"
    );

    // Renewal (10 s lifetime, renewed at half): a new handshake gets a new certificate
    // while Envoy's open HTTP/2 connection keeps serving.
    let admin = "127.0.0.1:15900";
    let cx = "cluster.strict_h2.upstream_cx_total";
    assert_eq!(envoy_stat(&a, admin, cx), Some(1));
    let serial = |s: &str| {
        s.lines()
            .find(|l| l.starts_with("serial="))
            .unwrap_or("")
            .to_owned()
    };
    wait_until(
        Duration::from_secs(20),
        Duration::from_millis(200),
        "a renewed certificate on a new handshake",
        || {
            let now = served_cert(&a, &format!("{b_addr}:8081"), &da);
            (!serial(&now).is_empty() && serial(&now) != serial(&first)).then_some(())
        },
    );
    let body = until_200(&a, &["http://127.0.0.1:10000/strict/h2"]);
    assert!(body.contains(&xfcc_by), "{body}");
    assert_eq!(
        envoy_stat(&a, admin, cx),
        Some(1),
        "the open connection was kept"
    );
    let metrics = curl(&b, &[&format!("http://{}/metrics", xds.debug())]).1;
    let issued = metrics
        .lines()
        .find_map(|l| l.strip_prefix("membrane_xds_ca_requests_total{reason=\"issued\"} "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(issued >= 2, "issued and renewed: {metrics}");

    // Another identity with b's token, and a forged token: refused by the CA, named in
    // the sidecar's log, never ready, and no plaintext served in their stead.
    wait_until(
        Duration::from_secs(10),
        Duration::from_millis(100),
        "the refusals logged",
        || {
            let (l1, l2) = (env.log("membrane-1.log"), env.log("membrane-2.log"));
            (l1.contains("refused the request (PermissionDenied)")
                && l1.contains(&spiffe("c"))
                && l2.contains("refused the request (Unauthenticated)")
                && l2.contains("token lookup failed"))
            .then_some(())
        },
    );
    for (n, port) in [(1, 8082), (2, 8083)] {
        assert_eq!(health(&b, n), "503", "sidecar {n} is not ready");
        let (code, _) = curl(&a, &[&format!("http://{b_addr}:{port}/p")]);
        assert_eq!(code, "000", "sidecar {n}: no plaintext");
    }
    let (code, _) = curl(
        &a,
        &[
            "-k",
            "--cert",
            da.join("cert-chain.pem").to_str().unwrap(),
            "--key",
            da.join("key.pem").to_str().unwrap(),
            &format!("https://{b_addr}:8082/t"),
        ],
    );
    assert_eq!(
        code, "000",
        "sidecar 1 has no certificate to serve mTLS with"
    );
    // Sidecar 3 got its policy over mTLS with the in-memory certificate: ready (policy
    // and PeerAuthentication modes in force), and membrane-xds knows it as pod b-1.
    wait_until(
        Duration::from_secs(20),
        Duration::from_millis(100),
        "sidecar 3 ready with policy over mTLS xDS",
        || (health(&b, 3) == "200").then_some(()),
    );
    // Polled: under a loaded machine the sidecar's streams may be (re)opening when it first
    // reports ready (its certificate renews every 5 s here), and syncz lists open streams only.
    wait_until(
        Duration::from_secs(20),
        Duration::from_millis(100),
        "membrane-xds lists sidecar 3 as pod b-1 in syncz",
        || {
            let syncz = curl(&b, &[&format!("http://{}/debug/syncz", xds.debug())]).1;
            syncz.contains("b-1.default").then_some(())
        },
    );
    drop(xds);
    drop(env);
}
