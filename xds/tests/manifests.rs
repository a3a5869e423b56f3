//! The Kubernetes manifests in `manifests/kubernetes/`: valid for the
//! Kubernetes API (offline, with kubernetes-validate), and in step with the
//! code: the ClusterRole grants exactly what the Kubernetes source uses, and
//! the Deployment's arguments are ones membrane-xds accepts.

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::Parser;
use membrane_xds::config::Config;
use membrane_xds::source::kube::KINDS;
use serde::Deserialize;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("..")
}

fn manifests() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("manifests/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        // The kustomization is kustomize's input, no Kubernetes object
        // (tests/overlays.rs builds and checks it).
        .filter(|p| !p.ends_with("kustomization.yaml"))
        .collect();
    v.sort();
    v
}

fn objects() -> Vec<Value> {
    let mut out = Vec::new();
    for p in manifests() {
        let text = std::fs::read_to_string(&p).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            out.push(Value::deserialize(doc).unwrap());
        }
    }
    out
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    let files = manifests();
    let out = std::process::Command::new("python3")
        .arg(root().join("scripts/k8s-validate.py"))
        .args(["-k", "1.34.0"])
        .args(&files)
        .output()
        .expect("run python3");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("{} objects checked, 0 invalid", objects().len())),
        "{text}"
    );
}

#[test]
fn cluster_role_grants_exactly_what_the_kube_source_uses() {
    let objs = objects();
    let role = find(&objs, "ClusterRole", "membrane-xds");
    let mut granted = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        for g in rule["apiGroups"].as_array().unwrap() {
            for r in rule["resources"].as_array().unwrap() {
                for v in rule["verbs"].as_array().unwrap() {
                    granted.insert(format!(
                        "{} {} {}",
                        g.as_str().unwrap(),
                        r.as_str().unwrap(),
                        v.as_str().unwrap()
                    ));
                }
            }
        }
    }
    let mut needed = BTreeSet::new();
    for k in &KINDS {
        for verb in ["list", "watch"] {
            needed.insert(format!("{} {} {verb}", k.group, k.plural));
        }
        if k.policy {
            needed.insert(format!("{} {}/status patch", k.group, k.plural));
        }
    }
    assert_eq!(granted, needed);
    let binding = find(&objs, "ClusterRoleBinding", "membrane-xds");
    assert_eq!(binding["subjects"][0]["name"], "membrane-xds");
    assert_eq!(binding["subjects"][0]["namespace"], "membrane-system");
}

#[test]
fn deployment_runs_the_kube_source_on_istio_ports_and_agent_is_privileged() {
    let objs = objects();
    let deploy = find(&objs, "Deployment", "membrane-xds");
    let spec = &deploy["spec"]["template"]["spec"];
    assert_eq!(spec["serviceAccountName"], "membrane-xds");
    let c = &spec["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    // The arguments are ones the binary accepts, and turn the source on.
    let cfg = Config::try_parse_from(std::iter::once("membrane-xds").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(cfg.kube);
    // mTLS only: no unauthenticated xDS in a cluster.
    assert!(!cfg.plaintext_xds, "{args:?}");
    assert_eq!(cfg.tls_addr.port(), 15012);
    let mount = c["volumeMounts"][0]["mountPath"].as_str().unwrap();
    for f in [&cfg.tls_cert, &cfg.tls_key, &cfg.ca_cert] {
        let f = f.as_ref().expect("mTLS is configured");
        assert!(f.starts_with(mount), "{f:?} is not under {mount}");
    }
    assert_eq!(cfg.debug_addr.port(), 15014);
    let ports: BTreeSet<u64> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, BTreeSet::from([15012, 15014, 15017]));
    let svc = find(&objs, "Service", "membrane-xds");
    let targets: BTreeSet<&str> = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["targetPort"].as_str().unwrap())
        .collect();
    let names: BTreeSet<&str> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(targets, names, "every container port is reachable by name");

    let ds = find(&objs, "DaemonSet", "membrane-agent");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["containers"][0]["securityContext"]["privileged"], true);
    let host_paths: BTreeSet<&str> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    assert!(host_paths.contains("/sys/fs/bpf"), "{host_paths:?}");
    assert!(host_paths.contains("/sys/fs/cgroup"), "{host_paths:?}");
    // The node daemon: fed by the mTLS port as its node, with the certificate of the
    // account the control plane serves node agents to, and pods registered over its socket.
    let env: std::collections::BTreeMap<&str, &serde_json::Value> = spec["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e))
        .collect();
    assert_eq!(
        env["MEMBRANE_XDS_ADDRESS"]["value"],
        "https://membrane-xds.membrane-system.svc:15012"
    );
    assert_eq!(
        env["MEMBRANE_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    let account = format!(
        "--agent-service-account={}/{}",
        ds["metadata"]["namespace"].as_str().unwrap(),
        spec["serviceAccountName"].as_str().unwrap()
    );
    let xds = find(&objs, "Deployment", "membrane-xds");
    assert!(
        xds["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str() == Some(account.as_str())),
        "membrane-xds is told the agents' account {account}"
    );
    // The CNI plugin is installed by an init container onto the node's CNI paths.
    let init = &spec["initContainers"][0];
    assert!(
        init["args"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str() == Some("--agent-socket=/var/run/membrane/agent.sock")),
        "pods are registered with the agent"
    );
    assert_eq!(init["command"], serde_json::json!(["membrane-cni"]));
    assert_eq!(init["args"][0], "install");
    assert!(host_paths.contains("/opt/cni/bin") && host_paths.contains("/etc/cni/net.d"));
    let mounted: BTreeSet<&str> = init["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    for arg in init["args"].as_array().unwrap().iter().skip(1) {
        let arg = arg.as_str().unwrap();
        if let Some(dir) = arg
            .strip_prefix("--bin-dir=")
            .or_else(|| arg.strip_prefix("--conf-dir="))
        {
            assert!(mounted.contains(dir), "{dir} is mounted: {mounted:?}");
        }
    }
}

#[test]
fn injection_webhook_reaches_the_webhook_port_of_membrane_xds() {
    let objs = objects();
    let deploy = find(&objs, "Deployment", "membrane-xds");
    let c = &deploy["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let cfg = Config::try_parse_from(std::iter::once("membrane-xds").chain(args.iter().copied()))
        .unwrap();
    assert_eq!(cfg.webhook_addr.port(), 15017);
    let cert = cfg.webhook_cert.expect("the webhook is on");
    let mount = c["volumeMounts"][0]["mountPath"].as_str().unwrap();
    assert!(cert.starts_with(mount), "{cert:?} is not under {mount}");
    // The sidecar dials the Service's mTLS xDS port by its DNS name.
    let svc = find(&objs, "Service", "membrane-xds");
    let port_of = |name: &str| {
        svc["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["targetPort"] == name)
            .unwrap_or_else(|| panic!("no Service port for {name}"))["port"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(
        cfg.sidecar_xds_address,
        format!(
            "https://membrane-xds.membrane-system.svc:{}",
            port_of("https-xds")
        )
    );
    let webhook_port_name = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["containerPort"] == 15017)
        .unwrap()["name"]
        .as_str()
        .unwrap();

    let mwc = find(
        &objs,
        "MutatingWebhookConfiguration",
        "membrane-sidecar-injector",
    );
    let hooks = mwc["webhooks"].as_array().unwrap();
    let mut selected = BTreeSet::new();
    for h in hooks {
        let s = &h["clientConfig"]["service"];
        assert_eq!(s["name"], "membrane-xds");
        assert_eq!(s["namespace"], "membrane-system");
        assert_eq!(s["path"], "/inject");
        assert_eq!(s["port"].as_u64().unwrap(), port_of(webhook_port_name));
        assert_eq!(h["sideEffects"], "None");
        assert_eq!(h["admissionReviewVersions"], serde_json::json!(["v1"]));
        let rule = &h["rules"][0];
        assert_eq!(rule["operations"], serde_json::json!(["CREATE"]));
        assert_eq!(rule["resources"], serde_json::json!(["pods"]));
        let sel = &h["namespaceSelector"];
        for (k, v) in sel["matchLabels"].as_object().into_iter().flatten() {
            selected.insert(format!("{k}={}", v.as_str().unwrap()));
        }
        for e in sel["matchExpressions"].as_array().into_iter().flatten() {
            if e["operator"] == "In" {
                selected.insert(format!(
                    "{}={}",
                    e["key"].as_str().unwrap(),
                    e["values"][0].as_str().unwrap()
                ));
            }
        }
    }
    assert_eq!(
        selected,
        BTreeSet::from([
            "istio-injection=enabled".to_string(),
            "istio.io/rev=default".to_string(),
            "membrane-injection=enabled".to_string()
        ])
    );
}
