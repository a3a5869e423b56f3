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

mod pod_sandbox;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use membrane_test_support::pki::{Ca, Leaf};
use membrane_test_support::sandbox::curl_in;
use membrane_test_support::wait_until;
use pod_sandbox::{code_is, PodSandbox, XDS_PORT};

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
fn source(net: &PodSandbox) {
    net.write_source(&[
        "    - ports: [{port: \"8080\", protocol: TCP}, {port: \"9090\", protocol: TCP}]",
    ]);
    let dir = net.xds_dir();
    std::fs::write(dir.join("mesh.yaml"), mesh_policy("STRICT")).unwrap();
    std::fs::write(dir.join("workload.yaml"), workload_policy("PERMISSIVE")).unwrap();
}

#[test]
fn peer_authentication_from_the_control_plane_decides_inbound_mtls_live() {
    let mut net = PodSandbox::new("peerauth", 'p', 14, &[8080, 9090]);
    let (client, server) = (&net.client.name.clone(), &net.server.name.clone());
    let server_ip = net.server_ip.clone();
    let (xds_dir, pki) = (net.xds_dir(), net.dir().join("pki"));
    std::fs::create_dir_all(&pki).unwrap();
    net.app(8080);
    net.app(9090);

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

    source(&net);
    let xds = net.xds();

    let proxy_config =
        format!(r#"{{"discoveryAddress":"127.0.0.1:{XDS_PORT}","controlPlaneAuthPolicy":"NONE"}}"#);
    let path = |f: &str| pki.join(f).display().to_string();
    let env = [
        ("POD_NAME", "deathstar-1".to_string()),
        ("POD_NAMESPACE", "default".into()),
        ("INSTANCE_IP", server_ip.clone()),
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
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    net.sidecar(&env);

    // Ready means the policy and the PeerAuthentication result are both in force.
    let out = net.wait("20s");
    assert!(out.status.success(), "{out:?}");

    let url = |port: u16| format!("http://{server_ip}:{port}/v1/x");
    let tls_url = |port: u16| format!("https://{server_ip}:{port}/v1/x");
    let (cert, key) = (path("client.pem"), path("client-key.pem"));
    let mtls = |port: u16| {
        curl_in(
            client,
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
    assert_eq!(curl_in(client, &[&url(8080)]).0, "000", "STRICT");
    assert_eq!(mtls(8080), ("200".into(), "app-file\n".into()));
    // The workload's port-level PERMISSIVE on 9090: plaintext served (mutual TLS there
    // needs Istio's ALPN, which curl cannot offer).
    assert_eq!(
        curl_in(client, &[&url(9090)]),
        ("200".into(), "app-file\n".into())
    );

    // The control plane's view of what it sent.
    let debug = |path: &str| curl_in(server, &[&format!("http://{}{path}", xds.debug())]);
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
    code_is(client, &[&url(8080)], "200", "8080 PERMISSIVE");
    // A plaintext connection opened now survives the change back to STRICT.
    let marker = net.dir().join("go");
    let keepalive = "import http.client,os,sys,time\n\
                     c=http.client.HTTPConnection(sys.argv[1],8080,timeout=5)\n\
                     c.request('GET','/v1/x');r=c.getresponse();r.read();a=r.status\n\
                     open(sys.argv[2]+'.first','w').close()\n\
                     end=time.time()+30\n\
                     while not os.path.exists(sys.argv[2]) and time.time()<end: time.sleep(0.05)\n\
                     c.request('GET','/v1/x');r=c.getresponse();r.read();print(a,r.status)\n";
    let held = net
        .client
        .exec("python3")
        .args(["-c", keepalive, &server_ip])
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
    code_is(client, &[&url(8080)], "000", "8080 STRICT again");
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
    code_is(client, &[&url(9090)], "000", "9090 STRICT");
    assert_eq!(mtls(9090).0, "200");
    // ...beside the last good mesh-wide STRICT: without it 8080 would be the sidecar's
    // own DISABLE and admit plaintext.
    assert_eq!(curl_in(client, &[&url(8080)]).0, "000");
    assert_eq!(mtls(8080).0, "200");

    drop(xds);
}
