//! Privileged: an agent restart keeps established spliced connections. The
//! agent binary attaches and exits (its process, fds and aya handles are
//! gone); a connection established under it keeps being spliced, a new
//! agent process sees it in the pinned maps, and detach still works.

mod common;

use std::{io::BufRead, process::Command};

use common::{Env, AGENT};
use membrane_datapath::Datapath;

fn agent(env: &Env, args: &[&str]) -> String {
    let out = Command::new(&*AGENT)
        .arg("--bpffs")
        .arg(&env.bpffs)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run membrane-agent");
    assert!(
        out.status.success(),
        "membrane-agent {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn agent_restart_keeps_established_splices() {
    let mut env = Env::new();
    let cg = env.cgroup.to_str().unwrap().to_owned();
    agent(&env, &["attach", "--cgroup", &cg]);
    env.server(&["echo", "--listen", "127.0.0.1:9000"]);

    let gate = std::env::temp_dir().join(format!("{}.gate", env.name));
    let gate_s = gate.to_str().unwrap().to_owned();
    let mut client = env.spawn_client(&[
        "client",
        "--connect",
        "127.0.0.1:9000",
        "--bytes",
        "1048576",
        "--rounds",
        "2",
        "--gate",
        &gate_s,
    ]);
    let mut line = String::new();
    client.read_line(&mut line).unwrap();
    assert!(line.starts_with("OK round=0"), "round 0: {line}");
    line.clear();
    client.read_line(&mut line).unwrap();
    assert!(line.starts_with("WAITING"), "{line}");

    // "Restart": a fresh agent process that only knows the pin directory.
    let pairs = agent(&env, &["pairs"]);
    assert!(
        pairs.contains("127.0.0.1:9000"),
        "the established pair is listed after restart: {pairs:?}"
    );
    agent(&env, &["attach", "--cgroup", &cg]); // idempotent re-attach
    let dp = Datapath::open(&env.bpffs).unwrap();
    let before = dp.counters_of("mb_sk_msg").unwrap().redirected_bytes;
    let lo_before = env.lo_tx_packets();

    std::fs::write(&gate, b"go").unwrap();
    line.clear();
    client.read_line(&mut line).unwrap();
    let _ = std::fs::remove_file(&gate);
    assert!(
        line.starts_with("OK round=1 bytes=1048576"),
        "round 1: {line}"
    );

    let after = dp.counters_of("mb_sk_msg").unwrap().redirected_bytes;
    assert!(
        after - before >= 2 * 1048576,
        "round 1 was spliced after the restart: {before} -> {after}"
    );
    assert!(env.lo_tx_packets() - lo_before < 20);

    agent(&env, &["detach", "--cgroup", &cg]);
    env.wait_detached();
}
