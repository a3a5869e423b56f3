//! Privileged: `membrane-agent attach` with Istio's capture annotations from
//! a downward API file. The exclusions reach the maps and the traffic; a bad
//! value is refused naming the annotation and the value, and the settings in
//! force stay as they were; re-attaching says what it changed.

mod common;

use std::process::{Command, Output};

use common::{Env, AGENT};
use membrane_datapath::{Datapath, InboundPorts};

fn agent(env: &Env, args: &[&str]) -> Output {
    let annotations = annotations_path(env);
    Command::new(AGENT)
        .arg("--bpffs")
        .arg(&env.bpffs)
        .args([
            "attach",
            "--capture",
            "--proxy-uid",
            "4294967294",
            "--cgroup",
        ])
        .arg(&env.cgroup)
        .arg("--pod-annotations")
        .arg(&annotations)
        .args(args)
        .output()
        .unwrap()
}

fn annotations_path(env: &Env) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{}.annotations", env.name))
}

fn write_annotations(env: &Env, text: &str) {
    std::fs::write(annotations_path(env), text).unwrap();
}

#[test]
fn annotations_program_capture_and_bad_values_change_nothing() {
    let mut env = Env::new();
    let _cleanup = Cleanup(annotations_path(&env));
    env.add_pod_iface(&["10.77.0.1/24", "10.78.0.1/24"]);
    env.server(&["hello", "--listen", "10.77.0.1:8080"]);
    env.server(&["hello", "--listen", "10.77.0.1:8081"]);
    env.server(&["hello", "--listen", "10.78.0.1:8080"]);
    write_annotations(
        &env,
        "kubernetes.io/config.source=\"api\"\n\
         traffic.sidecar.istio.io/excludeOutboundPorts=\"8081\"\n\
         traffic.sidecar.istio.io/excludeOutboundIPRanges=\"10.78.0.0/16\"\n\
         traffic.sidecar.istio.io/excludeInboundPorts=\"8443\"\n",
    );
    let out = agent(&env, &[]);
    assert!(out.status.success(), "{out:?}");
    let dp = Datapath::open(&env.bpffs).unwrap();
    let good = dp.settings().unwrap();
    let c = good.capture.as_ref().unwrap();
    assert_eq!(c.exclude_ports, vec![8081]);
    assert_eq!(c.exclude_cidrs, vec!["10.78.0.0/16".parse().unwrap()]);
    assert_eq!(
        good.inbound_ports,
        InboundPorts::AllExcept(vec![8443, 15020, 15021, 15090])
    );

    env.server(&["capture-proxy", "--listen", "[::]:15001", "--mark", "1337"]);
    let fetch = |a: &str| env.client(&["fetch", "--connect", a]);
    assert!(fetch("10.77.0.1:8080").starts_with("proxy orig=10.77.0.1:8080\n"));
    assert_eq!(fetch("10.77.0.1:8081"), "hello from 10.77.0.1:8081\n");
    assert_eq!(fetch("10.78.0.1:8080"), "hello from 10.78.0.1:8080\n");

    // A bad value: refused, named, and the settings in force are untouched.
    write_annotations(
        &env,
        "traffic.sidecar.istio.io/excludeOutboundPorts=\"9000\"\n\
         traffic.sidecar.istio.io/includeOutboundIPRanges=\"10.0.0.0/8,10.300.0.0/16\"\n",
    );
    let out = agent(&env, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("traffic.sidecar.istio.io/includeOutboundIPRanges")
            && err.contains("\"10.300.0.0/16\" is not an IP range"),
        "{err}"
    );
    assert_eq!(dp.settings().unwrap(), good, "nothing half-applied");
    assert_eq!(fetch("10.77.0.1:8081"), "hello from 10.77.0.1:8081\n");

    // Re-attaching the same cgroup keeps it attached and says what changed.
    write_annotations(&env, "traffic.sidecar.istio.io/excludeOutboundPorts=\"\"\n");
    let out = agent(&env, &[]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("already attached"), "{said}");
    assert!(
        said.contains("settings changed: capture:") && said.contains("\"exclude_ports\":[8081]"),
        "{said}"
    );
    assert!(fetch("10.77.0.1:8081").starts_with("proxy orig=10.77.0.1:8081\n"));
    // Unchanged settings: nothing reported as changed.
    let out = agent(&env, &[]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!said.contains("settings changed"), "{said}");
}

/// Removes the annotations file however the test ends.
struct Cleanup(std::path::PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
