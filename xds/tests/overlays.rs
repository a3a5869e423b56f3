//! The install as a person applies it: `manifests/kubernetes` (the base
//! kustomization) and the overlays of `manifests/overlays/` (etcd, Istio,
//! cert-manager, built from `manifests/components/`), built offline with
//! scripts/kustomize-build.py (the subset of kustomize they use), each output
//! valid for Kubernetes 1.34 and for our CRDs, and wired together: the etcd
//! members and membrane-xds's `--etcd` list name the same pods, the Istio
//! overlay leaves injection to istiod and trusts its root, and cert-manager
//! issues every Secret a pod mounts, for the names the pods are reached by.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use clap::Parser;
use membrane_xds::config::Config;
use serde::Deserialize;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("..")
}

fn manifests() -> PathBuf {
    root().join("manifests")
}

/// Builds the kustomization in `dir`.
fn build(dir: &Path) -> Vec<Value> {
    let out = std::process::Command::new("python3")
        .arg(root().join("scripts/kustomize-build.py"))
        .arg(dir)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect()
}

/// A kustomization of the base with `components`, in a temp dir.
fn build_with(components: &[&str]) -> Vec<Value> {
    let tmp = tempfile::tempdir().unwrap();
    let mut k = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- {}\ncomponents:\n",
        manifests().join("kubernetes").display()
    );
    for c in components {
        k.push_str(&format!(
            "- {}\n",
            manifests().join("components").join(c).display()
        ));
    }
    std::fs::write(tmp.path().join("kustomization.yaml"), k).unwrap();
    build(tmp.path())
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

/// membrane-xds's configuration as the Deployment in `objs` gives it.
fn xds_config(objs: &[Value]) -> Config {
    let c = &find(objs, "Deployment", "membrane-xds")["spec"]["template"]["spec"]["containers"][0];
    let args = strs(&c["args"]);
    Config::try_parse_from(std::iter::once("membrane-xds").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// Mount path → the volume's source (`secret NAME` / `configMap NAME`) of a pod template.
fn mounts(pod: &Value, container: usize) -> BTreeMap<String, String> {
    let volumes: BTreeMap<&str, &Value> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    pod["containers"][container]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| {
            // A claim of a volumeClaimTemplate is no pod volume.
            let v = volumes.get(m["name"].as_str().unwrap())?;
            let source = if let Some(s) = v["secret"]["secretName"].as_str() {
                format!("secret {s}")
            } else if let Some(c) = v["configMap"]["name"].as_str() {
                format!("configMap {c}")
            } else {
                return None;
            };
            Some((m["mountPath"].as_str().unwrap().to_string(), source))
        })
        .collect()
}

/// The source of the volume mounted at the directory holding `file`.
fn source_of(mounts: &BTreeMap<String, String>, file: &Path) -> String {
    let dir = file.parent().unwrap().to_str().unwrap();
    mounts
        .get(dir)
        .unwrap_or_else(|| panic!("{} is on no mounted volume: {mounts:?}", file.display()))
        .clone()
}

#[test]
fn base_kustomization_lists_every_manifest_and_every_build_validates() {
    let base = manifests().join("kubernetes");
    let k: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(base.join("kustomization.yaml")).unwrap())
            .unwrap();
    let listed: BTreeSet<&str> = strs(&k["resources"]).into_iter().collect();
    let files: BTreeSet<String> = std::fs::read_dir(&base)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".yaml") && f != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed,
        files.iter().map(String::as_str).collect(),
        "manifests/kubernetes/kustomization.yaml's resources"
    );

    let tmp = tempfile::tempdir().unwrap();
    let mut builds: Vec<(String, Vec<Value>)> = vec![("base".into(), build(&base))];
    for o in ["with-etcd", "with-istio", "with-cert-manager"] {
        builds.push((o.into(), build(&manifests().join("overlays").join(o))));
    }
    builds.push((
        "all components".into(),
        build_with(&["etcd", "cert-manager", "istio"]),
    ));
    for (name, objs) in &builds {
        // cert-manager's kinds have no schema offline; the test below checks
        // what they refer to.
        let (cm, checked): (Vec<&Value>, Vec<&Value>) = objs
            .iter()
            .partition(|o| o["apiVersion"] == "cert-manager.io/v1");
        let file = tmp.path().join(format!("{}.yaml", name.replace(' ', "-")));
        let text: String = checked
            .iter()
            .map(|o| format!("---\n{}", serde_yaml_ng::to_string(o).unwrap()))
            .collect();
        std::fs::write(&file, text).unwrap();
        let out = std::process::Command::new("python3")
            .arg(root().join("scripts/k8s-validate.py"))
            .arg("--crds")
            .arg(&base)
            .args(["-k", "1.34.0"])
            .arg(&file)
            .output()
            .expect("run python3");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {text}");
        assert!(
            text.contains(&format!("{} objects checked, 0 invalid", checked.len())),
            "{name}: {text}"
        );
        let mut seen = BTreeSet::new();
        for o in objs {
            let key = format!(
                "{} {}/{}",
                o["kind"],
                o["metadata"]["namespace"].as_str().unwrap_or(""),
                o["metadata"]["name"].as_str().unwrap()
            );
            assert!(seen.insert(key.clone()), "{name}: {key} twice");
        }
        assert_eq!(
            cm.is_empty(),
            !name.contains("cert-manager") && name != "all components"
        );
    }
}

#[test]
fn with_etcd_membrane_xds_is_a_client_of_every_member() {
    let objs = build(&manifests().join("overlays/with-etcd"));
    let sts = find(&objs, "StatefulSet", "membrane-etcd");
    let ns = sts["metadata"]["namespace"].as_str().unwrap();
    let svc_name = sts["spec"]["serviceName"].as_str().unwrap();
    let svc = find(&objs, "Service", svc_name);
    assert_eq!(svc["spec"]["clusterIP"], "None", "a headless Service");
    assert_eq!(svc["spec"]["publishNotReadyAddresses"], true);
    assert_eq!(
        svc["spec"]["selector"],
        sts["spec"]["selector"]["matchLabels"]
    );
    let port = |name: &str| {
        svc["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no Service port {name}"))["port"]
            .as_u64()
            .unwrap()
    };
    let (client, peer) = (port("client"), port("peer"));
    let replicas = sts["spec"]["replicas"].as_u64().unwrap();
    assert_eq!(replicas, 3);
    let pod = &sts["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let args: BTreeMap<&str, &str> = strs(&c["args"])
        .into_iter()
        .map(|a| a.split_once('=').unwrap_or((a, "")))
        .collect();
    let host = |i: u64| {
        format!(
            "{}-{i}.{svc_name}.{ns}.svc",
            sts["metadata"]["name"].as_str().unwrap()
        )
    };
    let want_cluster: Vec<String> = (0..replicas)
        .map(|i| {
            format!(
                "{}-{i}=https://{}:{peer}",
                sts["metadata"]["name"].as_str().unwrap(),
                host(i)
            )
        })
        .collect();
    assert_eq!(args["--initial-cluster"], want_cluster.join(","));
    assert_eq!(args["--name"], "$(POD_NAME)");
    assert_eq!(
        args["--initial-advertise-peer-urls"],
        format!("https://$(POD_NAME).{svc_name}.{ns}.svc:{peer}")
    );
    assert_eq!(
        args["--advertise-client-urls"],
        format!("https://$(POD_NAME).{svc_name}.{ns}.svc:{client}")
    );
    assert_eq!(
        c["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    // TLS everywhere, from the mounted Secret; data on the claimed volume.
    let m = mounts(pod, 0);
    for flag in [
        "--trusted-ca-file",
        "--cert-file",
        "--key-file",
        "--peer-trusted-ca-file",
        "--peer-cert-file",
        "--peer-key-file",
    ] {
        assert_eq!(
            source_of(&m, Path::new(args[flag])),
            "secret membrane-etcd-tls",
            "{flag}"
        );
    }
    assert!(
        args.contains_key("--client-cert-auth") && args.contains_key("--peer-client-cert-auth")
    );
    let claim = sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
        .as_str()
        .unwrap();
    let data_mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == claim)
        .expect("the claim is mounted");
    assert!(args["--data-dir"].starts_with(data_mount["mountPath"].as_str().unwrap()));
    // Every flag is one the real etcd knows.
    let help = std::process::Command::new("etcd")
        .arg("--help")
        .output()
        .expect("run etcd");
    let help =
        String::from_utf8_lossy(&help.stdout).into_owned() + &String::from_utf8_lossy(&help.stderr);
    for flag in args.keys() {
        assert!(
            help.contains(&format!("  {flag}")),
            "etcd has no flag {flag}"
        );
    }

    let cfg = xds_config(&objs);
    assert!(cfg.kube, "still the Kubernetes source");
    let want: Vec<String> = (0..replicas)
        .map(|i| format!("https://{}:{client}", host(i)))
        .collect();
    assert_eq!(cfg.etcd, want);
    let xpod = &find(&objs, "Deployment", "membrane-xds")["spec"]["template"]["spec"];
    let xm = mounts(xpod, 0);
    for f in [&cfg.etcd_ca, &cfg.etcd_cert, &cfg.etcd_key] {
        let f = f.as_ref().expect("etcd TLS with a client certificate");
        assert_eq!(source_of(&xm, f), "secret membrane-etcd-client");
    }
    assert_eq!(cfg.etcd_replica.as_deref(), Some("$(POD_NAME)"));
    assert!(xpod["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "POD_NAME"
            && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"));
}

#[test]
fn with_istio_injection_is_istiods_and_its_root_is_trusted() {
    let objs = build(&manifests().join("overlays/with-istio"));
    assert!(
        !objs
            .iter()
            .any(|o| o["kind"] == "MutatingWebhookConfiguration"),
        "membrane's injector is gone"
    );
    let cfg = xds_config(&objs);
    let xpod = &find(&objs, "Deployment", "membrane-xds")["spec"]["template"]["spec"];
    let m = mounts(xpod, 0);
    let ca = cfg.ca_cert.expect("mTLS clients are verified");
    assert_eq!(source_of(&m, &ca), "configMap istio-ca-root-cert");
    assert_eq!(ca.file_name().unwrap(), "root-cert.pem");
    // Its own pair is still the membrane-xds-tls Secret.
    assert_eq!(
        source_of(&m, cfg.tls_cert.as_ref().unwrap()),
        "secret membrane-xds-tls"
    );
}

#[test]
fn with_cert_manager_every_mounted_secret_is_issued_for_its_names() {
    let objs = build_with(&["etcd", "cert-manager"]);
    let certs: BTreeMap<&str, &Value> = objs
        .iter()
        .filter(|o| o["kind"] == "Certificate")
        .map(|o| (o["spec"]["secretName"].as_str().unwrap(), o))
        .collect();
    let issuers: BTreeSet<&str> = objs
        .iter()
        .filter(|o| o["kind"] == "Issuer")
        .map(|o| o["metadata"]["name"].as_str().unwrap())
        .collect();
    for c in certs.values() {
        let r = &c["spec"]["issuerRef"];
        assert_eq!(r["kind"], "Issuer");
        assert!(issuers.contains(r["name"].as_str().unwrap()), "{r}");
        assert_eq!(c["metadata"]["namespace"], "membrane-system");
    }
    let ca_issuer = find(&objs, "Issuer", "membrane-ca");
    assert!(certs[ca_issuer["spec"]["ca"]["secretName"].as_str().unwrap()]["spec"]["isCA"] == true);
    // Every Secret a membrane pod mounts is a Certificate's.
    let mut mounted = BTreeSet::new();
    for (kind, name) in [
        ("Deployment", "membrane-xds"),
        ("DaemonSet", "membrane-agent"),
        ("StatefulSet", "membrane-etcd"),
        ("Deployment", "membrane-relay"),
    ] {
        let pod = &find(&objs, kind, name)["spec"]["template"]["spec"];
        for v in pod["volumes"].as_array().unwrap() {
            if let Some(s) = v["secret"]["secretName"].as_str() {
                assert!(
                    certs.contains_key(s),
                    "{kind} {name} mounts Secret {s}, which no Certificate issues"
                );
                mounted.insert(s);
            }
        }
    }
    assert_eq!(mounted.len(), 5, "{mounted:?}");

    let cfg = xds_config(&objs);
    let uri = |secret: &str| strs(&certs[secret]["spec"]["uris"])[0].to_string();
    // The Service name is what sidecars, agents and the API server dial.
    let xds_cert = certs["membrane-xds-tls"];
    assert!(strs(&xds_cert["spec"]["dnsNames"]).contains(&"membrane-xds.membrane-system.svc"));
    let usages = strs(&xds_cert["spec"]["usages"]);
    assert!(usages.contains(&"server auth"), "{usages:?}");
    // The agents' identity is the one membrane-xds serves node agents to.
    let (ns, sa) = &cfg.agent_service_account;
    assert_eq!(
        uri("membrane.membrane-agent"),
        format!("spiffe://{}/ns/{ns}/sa/{sa}", cfg.trust_domain)
    );
    // The relay's identity is the one membrane-xds serves the relay's snapshot to, and its
    // certificate names the Service it serves on.
    let (ns, sa) = &cfg.relay_service_account;
    assert_eq!(
        uri("membrane.membrane-relay"),
        format!("spiffe://{}/ns/{ns}/sa/{sa}", cfg.trust_domain)
    );
    assert!(strs(&certs["membrane.membrane-relay"]["spec"]["dnsNames"])
        .contains(&"membrane-relay.membrane-system.svc"));
    // The agent and the relay read Istio's file names from cert-manager's keys.
    for (kind, name) in [
        ("DaemonSet", "membrane-agent"),
        ("Deployment", "membrane-relay"),
    ] {
        let ds = &find(&objs, kind, name)["spec"]["template"]["spec"];
        let env: BTreeMap<&str, &str> = ds["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| Some((e["name"].as_str()?, e["value"].as_str()?)))
            .collect();
        let certs_vol = ds["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "certs")
            .unwrap();
        let items: BTreeMap<&str, &str> = certs_vol["secret"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| (i["key"].as_str().unwrap(), i["path"].as_str().unwrap()))
            .collect();
        for (key, var) in [
            ("tls.crt", "MEMBRANE_XDS_CERT"),
            ("tls.key", "MEMBRANE_XDS_KEY"),
            ("ca.crt", "MEMBRANE_XDS_CA"),
        ] {
            assert_eq!(
                format!("/etc/certs/{}", items[key]),
                env[var],
                "{name}: {var} is cert-manager's {key}"
            );
        }
    }
    // The webhook's caBundle comes from the Certificate of the webhook's own pair.
    let mwc = find(
        &objs,
        "MutatingWebhookConfiguration",
        "membrane-sidecar-injector",
    );
    let from = mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        .as_str()
        .unwrap();
    let (cns, cname) = from.split_once('/').unwrap();
    let webhook_cert = objs
        .iter()
        .find(|o| {
            o["kind"] == "Certificate"
                && o["metadata"]["namespace"] == cns
                && o["metadata"]["name"] == cname
        })
        .unwrap_or_else(|| panic!("no Certificate {from}"));
    let xm = mounts(
        &find(&objs, "Deployment", "membrane-xds")["spec"]["template"]["spec"],
        0,
    );
    assert_eq!(
        source_of(&xm, cfg.webhook_cert.as_ref().unwrap()),
        format!(
            "secret {}",
            webhook_cert["spec"]["secretName"].as_str().unwrap()
        )
    );
    // etcd: members are reached by their pod names, the client is membrane-xds.
    let etcd = certs["membrane-etcd-tls"];
    let names = strs(&etcd["spec"]["dnsNames"]);
    for url in &cfg.etcd {
        let host = url
            .trim_start_matches("https://")
            .split(':')
            .next()
            .unwrap();
        let wildcard = format!("*.{}", host.split_once('.').unwrap().1);
        assert!(
            names.contains(&wildcard.as_str()),
            "{host} not covered by {names:?}"
        );
    }
    assert!(
        strs(&etcd["spec"]["usages"]).contains(&"client auth"),
        "peers dial each other"
    );
    assert_eq!(
        uri("membrane-etcd-client"),
        format!(
            "spiffe://{}/ns/membrane-system/sa/membrane-xds",
            cfg.trust_domain
        )
    );
}

#[test]
fn the_builder_refuses_what_it_does_not_do_naming_it() {
    let run = |kustomization: &str, patch: &str| {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("kustomization.yaml"), kustomization).unwrap();
        std::fs::write(tmp.path().join("patch.yaml"), patch).unwrap();
        let out = std::process::Command::new("python3")
            .arg(root().join("scripts/kustomize-build.py"))
            .arg(tmp.path())
            .output()
            .expect("run python3");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let base = manifests().join("kubernetes");
    let k = |extra: &str| {
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- {}\n{extra}",
            base.display()
        )
    };
    // A field of kustomize's that this subset does not implement.
    let err = run(&k("namePrefix: x-\n"), "");
    assert!(err.contains("unsupported fields ['namePrefix']"), "{err}");
    // A JSON6902 `test` that does not hold stops the build, naming the object.
    let err = run(
        &k("patches:\n- path: patch.yaml\n  target: {kind: Deployment, name: membrane-xds}\n"),
        "- op: test\n  path: /spec/replicas\n  value: 7\n",
    );
    assert!(
        err.contains("Deployment membrane-system/membrane-xds")
            && err.contains("found 1, expected 7"),
        "{err}"
    );
    // Deleting what is not there.
    let err = run(
        &k("patches:\n- path: patch.yaml\n"),
        "$patch: delete\napiVersion: v1\nkind: Service\nmetadata: {name: nothing, namespace: membrane-system}\n",
    );
    assert!(err.contains("no unique object"), "{err}");
}
