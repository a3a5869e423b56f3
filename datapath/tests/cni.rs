//! Privileged: `membrane-cni` as a container runtime calls it (environment,
//! configuration on stdin, result or error JSON on stdout) against a loaded
//! datapath and a real network namespace.

mod common;

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::Env;
use membrane_datapath::{Datapath, DatapathSettings, NetnsCookie};
use serde_json::{json, Value};

const CNI: &str = env!("CARGO_BIN_EXE_membrane-cni");

/// Exit success and stdout (parsed when not empty).
fn cni(command: &str, envs: &[(&str, &str)], config: &Value) -> (bool, Option<Value>) {
    let mut child = Command::new(CNI)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", "/opt/cni/bin")
        .envs(envs.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(config.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v = (!text.trim().is_empty()).then(|| serde_json::from_str(&text).unwrap());
    (out.status.success(), v)
}

struct Pod {
    netns: PathBuf,
    state: PathBuf,
    config: Value,
}

fn pod(env: &Env) -> Pod {
    let state = std::env::temp_dir().join(format!("{}-cni", env.name));
    let prev = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "mac": "0a:58:0a:f4:00:05", "sandbox": "/run/netns/x"}],
        "ips": [{"address": "10.244.0.5/24", "gateway": "10.244.0.1", "interface": 0}],
    });
    Pod {
        netns: PathBuf::from("/run/netns").join(&env.netns),
        config: json!({
            "cniVersion": "1.0.0",
            "name": "k8s-pod-network",
            "type": "membrane-cni",
            "bpffs": env.bpffs,
            "stateDir": state,
            "excludeNamespaces": ["kube-system"],
            "prevResult": prev,
        }),
        state,
    }
}

fn ino(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().ino()
}

fn cookie(p: &Path) -> NetnsCookie {
    membrane_datapath::netns_cookie(p).unwrap()
}

#[test]
fn add_check_del_wire_the_pod_namespace_into_the_datapath() {
    let env = Env::new();
    let dp = env.attach(&DatapathSettings {
        capture_inbound: true,
        ..DatapathSettings::default()
    });
    let p = pod(&env);
    let netns = p.netns.to_str().unwrap();
    let ids = [
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", netns),
        ("CNI_ARGS", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0"),
    ];

    let (ok, out) = cni("ADD", &ids, &p.config);
    assert!(ok, "{out:?}");
    // A chained plugin passes the previous result through.
    assert_eq!(out.unwrap(), p.config["prevResult"]);
    assert!(dp.netns_attached(cookie(&p.netns)), "sk_lookup attached");
    assert!(dp
        .attachments()
        .unwrap()
        .contains(&format!("netns-cookie-{}", cookie(&p.netns))));
    // ADD again (a runtime retry) is harmless.
    assert!(cni("ADD", &ids, &p.config).0);

    let (ok, out) = cni("CHECK", &ids, &p.config);
    assert!(ok && out.is_none(), "{out:?}");

    // Someone unpinned the link: CHECK says so.
    dp.detach_netns(&p.netns).unwrap();
    let (ok, out) = cni("CHECK", &ids, &p.config);
    assert!(!ok);
    assert_eq!(out.unwrap()["code"], 100);
    assert!(cni("ADD", &ids, &p.config).0);

    // DEL detaches and forgets; twice is fine; DEL without CNI_NETNS too.
    let (ok, out) = cni("DEL", &ids, &p.config);
    assert!(ok && out.is_none(), "{out:?}");
    assert!(!dp.netns_attached(cookie(&p.netns)));
    assert!(!p.state.join("c0ffee-eth0").exists());
    assert!(cni("DEL", &ids, &p.config).0);
    assert!(cni("DEL", &ids[..2], &p.config).0);
    // A damaged record does not block DEL for good.
    std::fs::write(p.state.join("c0ffee-eth0"), "garbage").unwrap();
    assert!(cni("DEL", &ids, &p.config).0);
    assert!(!p.state.join("c0ffee-eth0").exists());

    // A pod in an excluded namespace is passed through untouched.
    let kube_system = [
        ids[0],
        ids[1],
        ids[2],
        ("CNI_ARGS", "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=dns"),
    ];
    assert!(cni("ADD", &kube_system, &p.config).0);
    assert!(!dp.netns_attached(cookie(&p.netns)));

    // GC forgets what the runtime no longer lists (and nothing without a list).
    assert!(cni("ADD", &ids, &p.config).0);
    assert!(cni("GC", &[], &p.config).0);
    assert!(dp.netns_attached(cookie(&p.netns)));
    let mut gc = p.config.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "other", "ifname": "eth0"}]);
    assert!(cni("GC", &[], &gc).0);
    assert!(!dp.netns_attached(cookie(&p.netns)));
    let _ = std::fs::remove_dir_all(&p.state);
}

/// Live (not defunct) sk_lookup links attached to the namespace with inode `ino`, as
/// the kernel lists them (`bpftool link`): what is really attached, whatever the pins say.
fn sk_lookup_links_on(ino: u64) -> usize {
    let out = Command::new("bpftool")
        .args(["-j", "link", "show"])
        .output()
        .unwrap();
    assert!(out.status.success(), "bpftool link show");
    let links: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    links
        .iter()
        .filter(|l| l["type"] == "netns" && l["attach_type"] == "sk_lookup")
        .filter(|l| l["netns_ino"].as_u64() == Some(ino))
        .count()
}

#[test]
fn a_stale_pin_of_a_reused_namespace_inode_is_not_an_attachment() {
    let env = Env::new();
    let dp = env.attach(&DatapathSettings {
        capture_inbound: true,
        ..DatapathSettings::default()
    });
    let p = pod(&env);
    let new_ns = membrane_test_support::Netns::add(&format!("{}-new", env.netns));
    let new_path = new_ns.path();
    let new_ino = ino(&new_path);
    let links = env.bpffs.join("links");

    // What an old pod leaves when its namespace is gone and the inode number is reused
    // by the next pod's: a link pinned under the number (attached to the old namespace,
    // defunct now), and a record of the number.
    dp.attach_netns(&p.netns).unwrap();
    let old_pin = std::fs::read_dir(&links)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|d| {
            d.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("netns-")
        })
        .expect("the old pod's link is pinned");
    std::fs::rename(&old_pin, links.join(format!("netns-{new_ino}"))).unwrap();
    let _ = Command::new("ip")
        .args(["netns", "del", &env.netns])
        .status();
    std::fs::create_dir_all(&p.state).unwrap();
    std::fs::write(p.state.join("c0ffee-eth0"), new_ino.to_string()).unwrap();

    let netns = new_path.to_str().unwrap();
    let ids = [
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", netns),
    ];
    // The new pod has no inbound capture: CHECK must say so.
    assert_eq!(sk_lookup_links_on(new_ino), 0);
    let (ok, out) = cni("CHECK", &ids, &p.config);
    assert!(!ok, "CHECK passed for a namespace without capture: {out:?}");
    assert_eq!(out.unwrap()["code"], 100);

    // ADD for a new pod in it really attaches, and then CHECK passes.
    let new_pod = [("CNI_CONTAINERID", "d00d"), ids[1], ids[2]];
    let (ok, out) = cni("ADD", &new_pod, &p.config);
    assert!(ok, "{out:?}");
    assert_eq!(
        sk_lookup_links_on(new_ino),
        1,
        "ADD took a stale pin for an attachment"
    );
    let (ok, out) = cni("CHECK", &new_pod, &p.config);
    assert!(ok && out.is_none(), "{out:?}");
    assert!(cni("DEL", &new_pod, &p.config).0);
    assert_eq!(sk_lookup_links_on(new_ino), 0, "DEL detached it");
    let _ = std::fs::remove_dir_all(&p.state);
}

#[test]
fn version_status_and_errors_follow_the_spec() {
    let env = Env::new();
    let p = pod(&env);
    let netns = p.netns.to_str().unwrap();
    let ids = [
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", netns),
    ];

    let (ok, out) = cni("VERSION", &[], &json!({"cniVersion": "0.4.0"}));
    assert!(ok);
    let out = out.unwrap();
    assert_eq!(out["cniVersion"], "0.4.0");
    assert!(out["supportedVersions"]
        .as_array()
        .unwrap()
        .contains(&json!("1.1.0")));

    // The datapath is not loaded yet: not ready, and ADD asks to be retried
    // rather than start the pod without capture.
    let (ok, out) = cni("STATUS", &[], &p.config);
    assert!(!ok);
    assert_eq!(out.unwrap()["code"], 50);
    let (ok, out) = cni("ADD", &ids, &p.config);
    assert!(!ok);
    let out = out.unwrap();
    assert_eq!(out["code"], 11, "{out}");
    assert_eq!(out["cniVersion"], "1.0.0");
    assert!(out["details"]
        .as_str()
        .unwrap()
        .contains(env.bpffs.to_str().unwrap()));

    let _dp: Datapath = env.attach(&DatapathSettings::default());
    assert!(cni("STATUS", &[], &p.config).0);

    // Bad input: each names what was wrong.
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Value, u32);
    let cases: Vec<Case> = vec![
        ("ADD", ids[..2].to_vec(), p.config.clone(), 4),
        (
            "ADD",
            ids.to_vec(),
            json!({"cniVersion": "0.2.0", "name": "n", "type": "membrane-cni"}),
            1,
        ),
        (
            "ADD",
            ids.to_vec(),
            json!({"cniVersion": "1.0.0", "bpffs": "relative/dir"}),
            7,
        ),
        (
            "ADD",
            ids.to_vec(),
            json!({"cniVersion": "1.0.0", "excludeNamespaces": "kube-system"}),
            7,
        ),
        (
            "ADD",
            vec![ids[0], ids[1], ("CNI_NETNS", "/run/netns/no-such-pod")],
            p.config.clone(),
            3,
        ),
        (
            "ADD",
            vec![("CNI_CONTAINERID", "../x"), ids[1], ids[2]],
            p.config.clone(),
            4,
        ),
        ("FROB", ids.to_vec(), p.config.clone(), 4),
    ];
    for (command, envs, config, code) in cases {
        let (ok, out) = cni(command, &envs, &config);
        assert!(!ok, "{command} {config}");
        let out = out.unwrap();
        assert_eq!(out["code"], code, "{command} {envs:?} {config}: {out}");
        assert!(!out["msg"].as_str().unwrap().is_empty());
    }
    // Not JSON at all.
    let mut child = Command::new(CNI)
        .env("CNI_COMMAND", "ADD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"{not json").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["code"], 6);
    assert!(!p.state.exists(), "nothing recorded by failed calls");
}

fn installer(args: &[&str], dirs: &Path) -> (bool, String) {
    let out = Command::new(CNI)
        .env_remove("CNI_COMMAND")
        .args(args)
        .arg("--bin-dir")
        .arg(dirs.join("bin"))
        .arg("--conf-dir")
        .arg(dirs.join("net.d"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn install_chains_the_plugin_into_the_primary_list_and_uninstall_takes_it_out() {
    let dirs = tempfile::tempdir().unwrap();
    let (bin, netd) = (dirs.path().join("bin"), dirs.path().join("net.d"));
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&netd).unwrap();

    // Nothing to chain into yet: a clear error, nothing written.
    let (ok, out) = installer(&["install"], dirs.path());
    assert!(!ok);
    assert!(
        out.contains("no .conflist") && out.contains("net.d"),
        "{out}"
    );

    let primary = json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "plugins": [
            {"type": "calico", "ipam": {"type": "calico-ipam"}},
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    });
    let other = json!({"cniVersion": "1.0.0", "name": "other", "plugins": [{"type": "bridge"}]});
    std::fs::write(netd.join("10-calico.conflist"), primary.to_string()).unwrap();
    std::fs::write(netd.join("99-other.conflist"), other.to_string()).unwrap();
    let read = |name: &str| -> Value {
        serde_json::from_slice(&std::fs::read(netd.join(name)).unwrap()).unwrap()
    };

    for _ in 0..2 {
        let (ok, out) = installer(
            &["install", "--exclude-namespace", "kube-system"],
            dirs.path(),
        );
        assert!(ok, "{out}");
        let list = read("10-calico.conflist");
        let plugins = list["plugins"].as_array().unwrap();
        assert_eq!(plugins.len(), 3, "installed once: {list}");
        assert_eq!(plugins[..2], primary["plugins"].as_array().unwrap()[..]);
        assert_eq!(plugins[2]["type"], "membrane-cni");
        assert_eq!(plugins[2]["excludeNamespaces"], json!(["kube-system"]));
        assert_eq!(list["name"], "k8s-pod-network");
    }
    assert_eq!(read("99-other.conflist"), other, "only the primary list");
    let copied = std::fs::metadata(bin.join("membrane-cni")).unwrap();
    assert_eq!(copied.mode() & 0o111, 0o111, "executable");
    assert_eq!(copied.len(), std::fs::metadata(CNI).unwrap().len());

    // With the node daemon: pods are registered with it, and the runtime is asked for
    // their cgroup.
    let (ok, out) = installer(
        &["install", "--agent-socket", "/var/run/membrane/agent.sock"],
        dirs.path(),
    );
    assert!(ok, "{out}");
    let list = read("10-calico.conflist");
    let entry = &list["plugins"][2];
    assert_eq!(
        entry["agentSocket"], "/var/run/membrane/agent.sock",
        "{list}"
    );
    assert_eq!(entry["capabilities"], json!({"cgroupPath": true}), "{list}");

    let (ok, out) = installer(&["uninstall"], dirs.path());
    assert!(ok, "{out}");
    assert_eq!(read("10-calico.conflist"), primary);
    assert!(!bin.join("membrane-cni").exists());
    assert!(installer(&["uninstall"], dirs.path()).0, "twice is fine");
}
