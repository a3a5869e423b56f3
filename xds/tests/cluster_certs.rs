//! scripts/cluster-certs.sh, the certificate story for clusters without
//! cert-manager: its Secrets are valid Kubernetes objects, and the material
//! in them (decoded from the Secrets, as the kubelet mounts it) is what the
//! real parts accept: a real etcd serves TLS with the members' Secret and
//! takes membrane-xds's client Secret, the real membrane-xds serves its mTLS
//! port with its Secret and feeds the node agent and a sidecar the script
//! made certificates for, and refuses one from another CA.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use membrane_xds::kvstore;
use serde::Deserialize;
use serde_json::Value;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use common::*;

const LIMIT: Duration = Duration::from_secs(20);

fn root() -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("..")
}

/// Runs the script into `out` with `args`.
fn make(out: &Path, args: &[&str]) {
    let o = std::process::Command::new("bash")
        .arg(root().join("scripts/cluster-certs.sh"))
        .arg("--out")
        .arg(out)
        .args(args)
        .output()
        .expect("run bash");
    assert!(
        o.status.success(),
        "cluster-certs.sh: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Every Secret of `secrets.yaml`, its items written as files under
/// `dir/NAMESPACE/NAME/KEY` (what a Secret volume holds).
fn mount_secrets(secrets: &Path, dir: &Path) -> BTreeMap<String, PathBuf> {
    let text = std::fs::read_to_string(secrets).unwrap();
    let mut out = BTreeMap::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let s = Value::deserialize(doc).unwrap();
        let name = format!(
            "{}/{}",
            s["metadata"]["namespace"].as_str().unwrap(),
            s["metadata"]["name"].as_str().unwrap()
        );
        let d = dir.join(&name);
        std::fs::create_dir_all(&d).unwrap();
        for (k, v) in s["data"].as_object().unwrap() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap())
                .unwrap_or_else(|e| panic!("{name} {k}: {e}"));
            std::fs::write(d.join(k), bytes).unwrap();
        }
        out.insert(name, d);
    }
    out
}

/// The first NPDS answer to `node` over mTLS with `ca` and `identity`, or why not.
async fn first_npds(
    addr: std::net::SocketAddr,
    ca: &Path,
    identity: (&Path, &Path),
    node: &str,
) -> Result<(), String> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .identity(Identity::from_pem(
            std::fs::read(identity.0).unwrap(),
            std::fs::read(identity.1).unwrap(),
        ))
        // The name sidecars and agents dial: the Service's.
        .domain_name("membrane-xds.membrane-system.svc");
    let ch = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    first_npds_on(ch, node).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scripts_secrets_serve_etcd_the_control_plane_agents_and_sidecars() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    make(&out, &["--workload", "default/deathstar"]);
    let secrets = out.join("secrets.yaml");
    let v = std::process::Command::new("python3")
        .arg(root().join("scripts/k8s-validate.py"))
        .args(["-k", "1.34.0"])
        .arg(&secrets)
        .output()
        .expect("run python3");
    let text = String::from_utf8_lossy(&v.stdout);
    assert!(
        v.status.success() && text.contains("6 objects checked, 0 invalid"),
        "{text}"
    );
    let s = mount_secrets(&secrets, &tmp.path().join("mounted"));
    let xds_tls = &s["membrane-system/membrane-xds-tls"];
    let etcd_tls = &s["membrane-system/membrane-etcd-tls"];
    let etcd_client = &s["membrane-system/membrane-etcd-client"];
    let agent = &s["membrane-system/membrane.membrane-agent"];
    let sidecar = &s["default/membrane.deathstar"];

    // etcd with the members' Secret, as the StatefulSet mounts it (the
    // certificate names localhost and 127.0.0.1 for etcdctl in the pod).
    let etcd = Etcd::start_tls(
        &etcd_tls.join("tls.crt"),
        &etcd_tls.join("tls.key"),
        &etcd_tls.join("ca.crt"),
    );
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(
        src.join("pods.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: deathstar-1, namespace: default, labels: {class: deathstar}}\n\
         spec: {serviceAccountName: deathstar, containers: [{name: app}]}\nstatus: {podIP: 127.0.0.2}\n",
    )
    .unwrap();
    let p = |d: &Path, f: &str| d.join(f).into_os_string();
    let args: Vec<std::ffi::OsString> = vec![
        "--tls-cert".into(),
        p(xds_tls, "tls.crt"),
        "--tls-key".into(),
        p(xds_tls, "tls.key"),
        "--ca-cert".into(),
        p(xds_tls, "ca.crt"),
        "--agent-service-account=membrane-system/membrane-agent".into(),
        "--etcd".into(),
        etcd.url().into(),
        "--etcd-ca".into(),
        p(etcd_client, "ca.crt"),
        "--etcd-cert".into(),
        p(etcd_client, "tls.crt"),
        "--etcd-key".into(),
        p(etcd_client, "tls.key"),
    ];
    let mut cmd = membrane_test_support::xds::command(env!("CARGO_BIN_EXE_membrane-xds"));
    cmd.args(&args).args(["--poll-ms", "50"]);
    let xds = membrane_test_support::xds::spawn(cmd, &src);
    let addr = xds.tls().expect("the mTLS port");

    // The control plane reached etcd with its client Secret: the pod's
    // identity is allocated there.
    let client_tls = kvstore::EtcdTls {
        ca: etcd_client.join("ca.crt"),
        client: Some((etcd_client.join("tls.crt"), etcd_client.join("tls.key"))),
    };
    let c = etcd_client_tls(&etcd, Some(&client_tls)).await;
    eventually(LIMIT, "an identity allocated in etcd", || {
        let mut c = c.clone();
        async move {
            let ids = kvstore::list(&mut c, kvstore::ID_BY_LABELS).await.ok()?;
            (!ids.is_empty()).then_some(())
        }
    })
    .await;

    // The agent's Secret is the node agent's identity; the sidecar's is the
    // deathstar pod's. Both verify the server by the Service's name.
    let files = |d: &PathBuf| (d.join("cert-chain.pem"), d.join("key.pem"));
    let (ac, ak) = files(agent);
    first_npds(
        addr,
        &agent.join("root-cert.pem"),
        (&ac, &ak),
        "membrane-agent~node-1",
    )
    .await
    .expect("the agent is served");
    let (sc, sk) = files(sidecar);
    first_npds(
        addr,
        &sidecar.join("root-cert.pem"),
        (&sc, &sk),
        "sidecar~127.0.0.2~deathstar-1.default~default.svc.cluster.local",
    )
    .await
    .expect("the deathstar sidecar is served");

    // A second run makes another CA: its agent certificate is refused.
    let other = tmp.path().join("other");
    make(&other, &[]);
    let o = mount_secrets(
        &other.join("secrets.yaml"),
        &tmp.path().join("other-mounted"),
    );
    let (oc, ok) = files(&o["membrane-system/membrane.membrane-agent"]);
    let err = first_npds(
        addr,
        &agent.join("root-cert.pem"),
        (&oc, &ok),
        "membrane-agent~node-1",
    )
    .await
    .expect_err("a certificate of another CA");
    assert!(!err.contains("no answer"), "refused, not timed out: {err}");
    drop(xds);
}

#[test]
fn bad_arguments_are_refused_naming_them() {
    let tmp = tempfile::tempdir().unwrap();
    for (args, want) in [
        (
            vec!["--workload", "default"],
            "--workload default: expected NAMESPACE/SERVICE_ACCOUNT",
        ),
        (vec!["--days", "soon"], "--days soon: not a number of days"),
        (
            vec!["--ca-dir", "/nonexistent"],
            "--ca-dir /nonexistent: no ca-cert.pem",
        ),
    ] {
        let o = std::process::Command::new("bash")
            .arg(root().join("scripts/cluster-certs.sh"))
            .arg("--out")
            .arg(tmp.path().join("x"))
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{args:?}: {err}");
    }
}

/// Istio's plug-in CA layout (`cacerts`: an intermediate `ca-cert.pem` and
/// `ca-key.pem`, its `cert-chain.pem`, the `root-cert.pem`): leaves carry the
/// chain and the trust anchor written is the root.
#[test]
fn an_intermediate_ca_in_istios_layout_signs_chains_to_its_root() {
    let tmp = tempfile::tempdir().unwrap();
    let openssl = |args: &[&str]| {
        let o = std::process::Command::new("openssl")
            .args(args)
            .current_dir(tmp.path())
            .output()
            .expect("run openssl");
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let ec = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
    openssl(&[&["genpkey"][..], &ec, &["-out", "root.key"]].concat());
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        "root.key",
        "-days",
        "30",
        "-subj",
        "/CN=istio root",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
        "-out",
        "root.pem",
    ]);
    std::fs::create_dir(tmp.path().join("cacerts")).unwrap();
    openssl(&[&["genpkey"][..], &ec, &["-out", "cacerts/ca-key.pem"]].concat());
    openssl(&[
        "req",
        "-new",
        "-key",
        "cacerts/ca-key.pem",
        "-subj",
        "/CN=istio intermediate",
        "-out",
        "i.csr",
    ]);
    std::fs::write(
        tmp.path().join("i.ext"),
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "i.csr",
        "-CA",
        "root.pem",
        "-CAkey",
        "root.key",
        "-CAcreateserial",
        "-days",
        "30",
        "-extfile",
        "i.ext",
        "-out",
        "cacerts/ca-cert.pem",
    ]);
    let inter = std::fs::read_to_string(tmp.path().join("cacerts/ca-cert.pem")).unwrap();
    let rootpem = std::fs::read_to_string(tmp.path().join("root.pem")).unwrap();
    std::fs::write(
        tmp.path().join("cacerts/cert-chain.pem"),
        format!("{inter}{rootpem}"),
    )
    .unwrap();
    std::fs::write(tmp.path().join("cacerts/root-cert.pem"), &rootpem).unwrap();

    let out = tmp.path().join("out");
    make(
        &out,
        &["--ca-dir", tmp.path().join("cacerts").to_str().unwrap()],
    );
    let s = mount_secrets(&out.join("secrets.yaml"), &tmp.path().join("mounted"));
    let xds_tls = &s["membrane-system/membrane-xds-tls"];
    assert_eq!(
        std::fs::read_to_string(xds_tls.join("ca.crt")).unwrap(),
        rootpem
    );
    let chain = std::fs::read_to_string(xds_tls.join("tls.crt")).unwrap();
    assert_eq!(
        chain.matches("BEGIN CERTIFICATE").count(),
        3,
        "leaf, intermediate, root"
    );
    let verified = openssl(&[
        "verify",
        "-CAfile",
        xds_tls.join("ca.crt").to_str().unwrap(),
        "-untrusted",
        xds_tls.join("tls.crt").to_str().unwrap(),
        xds_tls.join("tls.crt").to_str().unwrap(),
    ]);
    assert!(verified.contains("OK"), "{verified}");
    // Without the intermediate the leaf does not verify: the chain is what makes it.
    std::fs::write(
        tmp.path().join("leaf.pem"),
        &chain[..chain.find("-----END CERTIFICATE-----").unwrap() + 25],
    )
    .unwrap();
    let o = std::process::Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(xds_tls.join("ca.crt"))
        .arg(tmp.path().join("leaf.pem"))
        .output()
        .unwrap();
    assert!(!o.status.success());
}
