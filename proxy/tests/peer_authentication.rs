//! Istio's PeerAuthentication through membrane-xds to a `membrane-proxy sidecar`'s inbound
//! capture, live. A real `membrane-xds` (the binary) reads the objects from its directory
//! source; the sidecar runs with Istio's environment in the pod's namespace, its own
//! setting `MEMBRANE_MESH_TLS_MODE=DISABLE` (so nothing below can pass by falling back to
//! it). Privileged: two namespaces joined by a veth pair, the pod's ports 8080 and 9090
//! redirected to 15006 by nftables as Istio's init container does, the mesh PKI made here.
//!
//! Checked: ready only with the mode in force; mesh-wide STRICT refuses plaintext on 8080
//! and serves mutual TLS, while the workload's `portLevelMtls` makes 9090 PERMISSIVE
//! (plaintext served);
//! `/debug/config_dump` shows the `MeshTls` sent; editing the mesh object to PERMISSIVE
//! admits plaintext and back to STRICT refuses it again, without a restart, while a
//! plaintext connection opened under PERMISSIVE keeps being served; a bad edit is refused
//! (named in `/debug/sourcez`) and STRICT stays, while a later good edit of the port-level
//! override goes in force.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use membrane_test_support::pki::{Ca, Leaf};
use membrane_test_support::sandbox::{self, curl_in};
use membrane_test_support::xds::{self as launcher};
use membrane_test_support::{wait_until, ChildGuard, Netns};

/// `membrane-xds`, a binary of another package, built beside this one (`make test` builds
/// every binary first).
fn xds_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_membrane-proxy")).with_file_name("membrane-xds");
    assert!(
        bin.exists(),
        "{} missing: build the workspace's binaries first (cargo build --workspace --bins)",
        bin.display()
    );
    bin
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

/// Replaces a source file whole, as a ConfigMap volume update does (a plain write is seen
/// truncated first: an empty file, which is a valid file without the object).
fn replace(path: &Path, text: &str) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn mesh_policy(mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: istio-system}}\nspec: {{mtls: {{mode: {mode}}}}}\n"
    )
}

fn workload_policy(port_mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: deathstar, namespace: default}}\nspec:\n  selector: {{matchLabels: {{class: deathstar}}}}\n  portLevelMtls:\n    9090: {{mode: {port_mode}}}\n"
    )
}

/// The pods, an L4 policy letting empire ships reach 8080 and 9090, and the two
/// PeerAuthentications: mesh-wide STRICT, 9090 PERMISSIVE for the deathstar.
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
        "    - ports: [{port: \"8080\", protocol: TCP}, {port: \"9090\", protocol: TCP}]",
    ]
    .join("\n");
    std::fs::write(dir.join("cnp.yaml"), cnp).unwrap();
    std::fs::write(dir.join("mesh.yaml"), mesh_policy("STRICT")).unwrap();
    std::fs::write(dir.join("workload.yaml"), workload_policy("PERMISSIVE")).unwrap();
}

/// An HTTP/1.1 (keep-alive) static file server on `port`, as the pod's app.
fn app(server: &Netns, dir: &Path, port: u16) -> ChildGuard {
    let script = "import functools,http.server,sys\n\
                  http.server.SimpleHTTPRequestHandler.protocol_version='HTTP/1.1'\n\
                  h=functools.partial(http.server.SimpleHTTPRequestHandler,directory=sys.argv[2])\n\
                  http.server.ThreadingHTTPServer(('0.0.0.0',int(sys.argv[1])),h).serve_forever()\n";
    let mut c = server.exec("python3");
    c.args(["-c", script, &port.to_string()])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    ChildGuard(c.spawn().unwrap())
}

#[test]
fn peer_authentication_from_the_control_plane_decides_inbound_mtls_live() {
    let id = std::process::id() % 100_000;
    let dir = Dir(std::env::temp_dir().join(format!("membrane-peerauth-{id}")));
    let (app_dir, xds_dir, pki) = (dir.0.join("app"), dir.0.join("xds"), dir.0.join("pki"));
    for d in [app_dir.join("v1"), xds_dir.clone(), pki.clone()] {
        std::fs::create_dir_all(d).unwrap();
    }
    // Declared first, so dropped last: processes go before their namespaces.
    let (client, server) = (
        Netns::add(&format!("mbr-pc-{id}")),
        Netns::add(&format!("mbr-ps-{id}")),
    );
    let (client_ip, server_ip) = ("10.251.14.1", "10.251.14.2");
    sandbox::veth(
        &client,
        &format!("mpk{id}"),
        &format!("{client_ip}/30"),
        &server,
        &format!("mpl{id}"),
        &format!("{server_ip}/30"),
    );
    let mut children: Vec<ChildGuard> = Vec::new();
    let rules = dir.0.join("capture.nft");
    std::fs::write(
        &rules,
        "table ip membrane_peerauth_test {\n  chain prerouting {\n    type nat hook prerouting priority dstnat;\n    tcp dport { 8080, 9090 } redirect to :15006\n  }\n}\n",
    )
    .unwrap();
    membrane_test_support::process::run(server.exec("nft").arg("-f").arg(&rules));
    std::fs::write(app_dir.join("v1/x"), "app-file\n").unwrap();
    children.push(app(&server, &app_dir, 8080));
    children.push(app(&server, &app_dir, 9090));
    for port in [8080, 9090] {
        code_is(
            &server.name,
            &[&format!("http://{server_ip}:{port}/v1/x")],
            "200",
            "the app up",
        );
    }

    // The mesh: one root, the deathstar's workload certificate, a tiefighter client's.
    let root = Ca::in_dir(&pki, "root", "mesh-root");
    let spiffe = |sa: &str| format!("URI:spiffe://cluster.local/ns/default/sa/{sa}");
    root.issue(
        &Leaf::new("deathstar").san(&spiffe("deathstar")),
        &pki.join("cert-chain.pem"),
        &pki.join("key.pem"),
    );
    std::fs::copy(root.cert(), pki.join("root-cert.pem")).unwrap();
    root.issue(
        &Leaf::new("tiefighter").san(&spiffe("tiefighter")),
        &pki.join("client.pem"),
        &pki.join("client-key.pem"),
    );

    source(&xds_dir, client_ip, server_ip);
    let xds_port = "15010";
    let mut xds = Command::new("ip");
    xds.args(["netns", "exec", &server.name])
        .arg(xds_bin())
        .args(["--debug-addr", "127.0.0.1:0", "--tls-addr", "127.0.0.1:0"])
        .args(["--plaintext-xds", "--grpc-addr"])
        .arg(format!("127.0.0.1:{xds_port}"))
        .args(["--poll-ms", "50"]);
    let xds = launcher::spawn(xds, &xds_dir);

    let proxy_config =
        format!(r#"{{"discoveryAddress":"127.0.0.1:{xds_port}","controlPlaneAuthPolicy":"NONE"}}"#);
    let path = |f: &str| pki.join(f).display().to_string();
    let env = [
        ("POD_NAME", "deathstar-1".to_string()),
        ("POD_NAMESPACE", "default".into()),
        ("INSTANCE_IP", server_ip.into()),
        ("SERVICE_ACCOUNT", "deathstar".into()),
        ("PROXY_CONFIG", proxy_config),
        (
            "ISTIO_META_POD_PORTS",
            r#"[{"name":"http","containerPort":8080,"protocol":"TCP"}]"#.into(),
        ),
        ("ISTIO_META_INTERCEPTION_MODE", "REDIRECT".into()),
        ("TRUST_DOMAIN", "cluster.local".into()),
        ("MEMBRANE_CERTS_DIR", "/nonexistent/membrane-certs".into()),
        ("MEMBRANE_MESH_CERT", path("cert-chain.pem")),
        ("MEMBRANE_MESH_KEY", path("key.pem")),
        ("MEMBRANE_MESH_ROOT", path("root-cert.pem")),
        ("MEMBRANE_MESH_TLS_MODE", "DISABLE".into()),
    ];
    let mut sidecar = Command::new("ip");
    sidecar
        .args(["netns", "exec", &server.name])
        .arg(env!("CARGO_BIN_EXE_membrane-proxy"))
        .arg("sidecar")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null());
    children.push(ChildGuard(sidecar.spawn().unwrap()));

    // Ready means the policy and the PeerAuthentication result are both in force.
    let out = Command::new("ip")
        .args(["netns", "exec", &server.name])
        .arg(env!("CARGO_BIN_EXE_membrane-proxy"))
        .args(["wait", "--timeout", "20s", "--period", "100ms"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    let url = |port: u16| format!("http://{server_ip}:{port}/v1/x");
    let tls_url = |port: u16| format!("https://{server_ip}:{port}/v1/x");
    let (cert, key) = (path("client.pem"), path("client-key.pem"));
    let mtls = |port: u16| {
        curl_in(
            &client.name,
            &[
                "--http1.1",
                "-k",
                "--cert",
                &cert,
                "--key",
                &key,
                &tls_url(port),
            ],
        )
    };
    // Mesh-wide STRICT on 8080: plaintext refused, mutual TLS served.
    assert_eq!(curl_in(&client.name, &[&url(8080)]).0, "000", "STRICT");
    assert_eq!(mtls(8080), ("200".into(), "app-file\n".into()));
    // The workload's port-level PERMISSIVE on 9090: plaintext served (mutual TLS there
    // needs Istio's ALPN, which curl cannot offer).
    assert_eq!(
        curl_in(&client.name, &[&url(9090)]),
        ("200".into(), "app-file\n".into())
    );

    // The control plane's view of what it sent.
    let debug = |path: &str| curl_in(&server.name, &[&format!("http://{}{path}", xds.debug())]);
    let (code, dump) = debug("/debug/config_dump?proxyID=deathstar-1.default");
    assert_eq!(code, "200");
    for part in [
        r#""@type":"type.googleapis.com/membrane.mesh.v1.MeshTls""#,
        r#""mode":"STRICT""#,
        r#""port_modes":{"9090":"PERMISSIVE"}"#,
        r#""policies":["istio-system/default","default/deathstar"]"#,
    ] {
        assert!(dump.contains(part), "{part} in {dump}");
    }

    // Edited to PERMISSIVE: plaintext admitted on 8080, no restart.
    replace(&xds_dir.join("mesh.yaml"), &mesh_policy("PERMISSIVE"));
    code_is(&client.name, &[&url(8080)], "200", "8080 PERMISSIVE");
    // A plaintext connection opened now survives the change back to STRICT.
    let marker = dir.0.join("go");
    let keepalive = "import http.client,os,sys,time\n\
                     c=http.client.HTTPConnection(sys.argv[1],8080,timeout=5)\n\
                     c.request('GET','/v1/x');r=c.getresponse();r.read();a=r.status\n\
                     open(sys.argv[2]+'.first','w').close()\n\
                     end=time.time()+30\n\
                     while not os.path.exists(sys.argv[2]) and time.time()<end: time.sleep(0.05)\n\
                     c.request('GET','/v1/x');r=c.getresponse();r.read();print(a,r.status)\n";
    let held = client
        .exec("python3")
        .args(["-c", keepalive, server_ip])
        .arg(&marker)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let first = marker.with_extension("first");
    wait_until(
        Duration::from_secs(10),
        Duration::from_millis(50),
        "the held connection's first request",
        || first.exists().then_some(()),
    );
    replace(&xds_dir.join("mesh.yaml"), &mesh_policy("STRICT"));
    code_is(&client.name, &[&url(8080)], "000", "8080 STRICT again");
    std::fs::write(&marker, "").unwrap();
    let out = held.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "200 200",
        "the connection opened under PERMISSIVE is still served: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A bad edit is refused, naming the object and field; the last good STRICT stays.
    replace(&xds_dir.join("mesh.yaml"), &mesh_policy("STRICTLY"));
    wait_until(
        Duration::from_secs(20),
        Duration::from_millis(100),
        "the bad object refused",
        || {
            let (_, sourcez) = debug("/debug/sourcez");
            sourcez
                .contains(r#"mesh.yaml: PeerAuthentication istio-system/default: spec.mtls.mode: \"STRICTLY\" is not a mode"#)
                .then_some(())
        },
    );
    // A good edit after it goes in force (9090 to STRICT)...
    replace(&xds_dir.join("workload.yaml"), &workload_policy("STRICT"));
    code_is(&client.name, &[&url(9090)], "000", "9090 STRICT");
    assert_eq!(mtls(9090).0, "200");
    // ...beside the last good mesh-wide STRICT: without it 8080 would be the sidecar's
    // own DISABLE and admit plaintext.
    assert_eq!(curl_in(&client.name, &[&url(8080)]).0, "000");
    assert_eq!(mtls(8080).0, "200");

    drop(children);
    drop(xds);
}
