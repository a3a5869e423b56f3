//! `membrane bpf sockmap list` against a real datapath: attached to a cgroup of this test's
//! own, with a connected socket pair inside a network namespace of its own (root only, as
//! CI runs; everything is removed on drop, also when the test fails).

use membrane_datapath::{ensure_bpffs, Datapath, DatapathSettings};
use membrane_test_support::{Cgroup, ChildGuard, Netns, PinDir};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// The test's own cgroup and pin directory, and the namespace and process a test adds.
struct Guard {
    child: Option<ChildGuard>,
    // Torn down after `Drop for Guard` detached the datapath, in this order.
    pins: PinDir,
    cg: Cgroup,
    netns: Option<Netns>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.child = None;
        if let Ok(dp) = Datapath::open(&self.pins.path) {
            let _ = dp.detach(&self.cg.path);
        }
    }
}

// A server and a client in one process, connected over loopback, held open until killed.
const PAIR: &str = r#"
import socket, sys, time
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
cli = socket.create_connection(srv.getsockname())
acc, _ = srv.accept()
cli.sendall(b"x"); acc.recv(1)
print(srv.getsockname()[1], flush=True)
time.sleep(60)
"#;

/// A cgroup of the test's own (and a pin directory) named `name`, with the
/// datapath attached; everything goes when the guard is dropped.
fn attached(name: &str) -> (Guard, Datapath) {
    let pins = PinDir::new(name);
    ensure_bpffs(pins.path()).unwrap();
    let g = Guard {
        child: None,
        pins,
        cg: Cgroup::create(name),
        netns: None,
    };
    let dp = Datapath::attach(&g.pins.path, &g.cg.path, &DatapathSettings::default()).unwrap();
    (g, dp)
}

#[test]
fn sockmap_list_shows_the_spliced_pair() {
    let name = format!("membrane-cli-test-{}", std::process::id());
    let (mut g, _dp) = attached(&name);
    let netns = g.netns.insert(Netns::add(&name)).name.clone();

    // Join the cgroup first, then the netns, then run the pair.
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec ip netns exec {} python3 -c '{}'",
        g.cg.path.display(),
        netns,
        PAIR
    );
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    g.child = Some(ChildGuard(child));
    let port = line.trim().to_string();
    assert!(port.parse::<u16>().is_ok(), "pair did not start: {line:?}");

    let out = Command::new(env!("CARGO_BIN_EXE_membrane"))
        .args([
            "bpf",
            "sockmap",
            "list",
            "-o",
            "json",
            "--bpffs",
            g.pins.path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pairs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let server = format!("127.0.0.1:{port}");
    let found = pairs
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["a_local"] == server.as_str() || p["b_local"] == server.as_str());
    assert!(found, "the pair on port {port} is not listed: {pairs}");
}

#[test]
fn sockmap_list_without_a_datapath_says_so() {
    let out = Command::new(env!("CARGO_BIN_EXE_membrane"))
        .args([
            "bpf",
            "sockmap",
            "list",
            "--bpffs",
            "/sys/fs/bpf/membrane-cli-test-absent",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no membrane datapath is pinned here"), "{err}");
}

#[test]
fn lb_list_shows_services_and_backends() {
    let (g, dp) = attached(&format!("membrane-cli-lb-{}", std::process::id()));
    dp.set_service(
        "10.96.0.10:80".parse().unwrap(),
        &[
            "10.0.1.5:8080".parse().unwrap(),
            "[fd00::5]:8080".parse().unwrap(),
        ],
    )
    .unwrap();
    dp.set_service("[fd00::10]:443".parse().unwrap(), &[])
        .unwrap();
    let list = |format: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_membrane"))
            .args(["bpf", "lb", "list", "-o", format, "--bpffs"])
            .arg(&g.pins.path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let json: serde_json::Value = serde_json::from_str(&list("json")).unwrap();
    assert_eq!(
        json,
        serde_json::json!([
            {"frontend": "10.96.0.10:80", "backends": ["10.0.1.5:8080", "[fd00::5]:8080"]},
            {"frontend": "[fd00::10]:443", "backends": []},
        ])
    );
    let text = list("text");
    assert!(
        text.contains("[fd00::10]:443") && text.contains("connects refused"),
        "{text}"
    );
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("10.96.0.10:80"))
            .count(),
        2
    );
}
