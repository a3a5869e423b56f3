//! Privileged test harness: each `Env` owns a network namespace, a cgroup v2
//! child, a bpffs pin directory (the guards of `membrane-test-support`) and the
//! processes it spawned, and removes all of them on drop (also when the test
//! fails). Nothing touches the root cgroup or a host interface: the programs
//! attach to the child cgroup and all traffic stays inside the namespace.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use membrane_datapath::{ensure_bpffs, Datapath, DatapathSettings};
use membrane_test_support::{run, unique_name, Cgroup, ChildGuard, Netns, PinDir};

pub const SOCKBENCH: &str = env!("CARGO_BIN_EXE_membrane-sockbench");
/// `membrane-agent`, a binary of another package (membrane-agent), so Cargo gives these
/// tests no `CARGO_BIN_EXE_` for it: a workspace build (`make test`'s `cargo build
/// --workspace --bins`, `cargo nextest run --workspace`, or `cargo build -p
/// membrane-agent`) puts it next to `membrane-sockbench`. A missing binary is an error
/// that says how to get it (building it from inside the test would race the build that
/// runs the test).
pub static AGENT: std::sync::LazyLock<PathBuf> = std::sync::LazyLock::new(|| {
    let bin = Path::new(SOCKBENCH).with_file_name("membrane-agent");
    assert!(
        bin.exists(),
        "{} missing: build it first (cargo build -p membrane-agent)",
        bin.display()
    );
    bin
});

pub struct Env {
    pub name: String,
    pub netns: String,
    pub cgroup: PathBuf,
    pub bpffs: PathBuf,
    children: Vec<ChildGuard>,
    // Torn down after `Drop for Env` detached the programs, in this order: pins,
    // cgroup (its processes are gone by then), namespace.
    pins: PinDir,
    cg: Cgroup,
    ns: Netns,
}

fn sh(cmd: &mut Command) -> String {
    run(cmd)
}

impl Env {
    pub fn new() -> Self {
        let name = unique_name();
        let pins = PinDir::new(&name);
        ensure_bpffs(pins.path()).expect("bpffs");
        let cg = Cgroup::create(&name);
        let ns = Netns::add(&name);
        Env {
            netns: ns.name.clone(),
            cgroup: cg.path.clone(),
            bpffs: pins.path.clone(),
            name,
            children: Vec::new(),
            pins,
            cg,
            ns,
        }
    }

    /// `ip -n NETNS ARGS...`
    pub fn ip(&self, args: &[&str]) -> String {
        self.ns.ip(args)
    }

    /// A "pod" interface with the given addresses (CIDR strings). A port-less
    /// bridge: a virtual device every kernel here has (dummy and veth may be
    /// modules that are not installed); local delivery does not need carrier.
    pub fn add_pod_iface(&self, addrs: &[&str]) {
        self.ip(&["link", "add", "mbpod0", "type", "bridge"]);
        for a in addrs {
            if a.contains(':') {
                self.ip(&["addr", "add", a, "dev", "mbpod0", "nodad"]);
            } else {
                self.ip(&["addr", "add", a, "dev", "mbpod0"]);
            }
        }
        self.ip(&["link", "set", "mbpod0", "up"]);
    }

    pub fn attach(&self, settings: &DatapathSettings) -> Datapath {
        Datapath::attach(&self.bpffs, &self.cgroup, settings).expect("attach datapath")
    }

    /// Run `bin args` inside the cgroup and the netns (bounded); its stdout.
    pub fn run_in_pod(&self, bin: &str, args: &[&str]) -> String {
        self.run_bounded(self.command(bin, args), Duration::from_secs(30))
    }

    /// A command that runs `bin args` inside the cgroup and the netns.
    fn command(&self, bin: &str, args: &[&str]) -> Command {
        let mut c = self.cg.command("ip", &["netns", "exec", &self.netns, bin]);
        c.args(args);
        c
    }

    /// Start a sockbench server in the cgroup + netns; returns once it
    /// printed READY.
    pub fn server(&mut self, args: &[&str]) {
        let mut child = self
            .command(SOCKBENCH, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn server");
        let stdout = child.stdout.take().unwrap();
        self.children.push(ChildGuard(child));
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert!(
            line.starts_with("READY"),
            "server {args:?} did not start: {line:?}"
        );
    }

    /// Run a sockbench client in the cgroup + netns to completion (30 s cap).
    pub fn client(&self, args: &[&str]) -> String {
        self.run_bounded(self.command(SOCKBENCH, args), Duration::from_secs(30))
    }

    /// Run a sockbench client in the netns but *outside* the test cgroup.
    pub fn client_outside_cgroup(&self, args: &[&str]) -> String {
        let mut c = self.ns.exec(SOCKBENCH);
        c.args(args);
        self.run_bounded(c, Duration::from_secs(30))
    }

    /// Start a client that keeps running (e.g. with --gate); output via the
    /// returned reader.
    pub fn spawn_client(&mut self, args: &[&str]) -> BufReader<std::process::ChildStdout> {
        let mut child = self
            .command(SOCKBENCH, args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn client");
        let out = BufReader::new(child.stdout.take().unwrap());
        self.children.push(ChildGuard(child));
        out
    }

    /// Start a client that runs until its stdin closes (drop the returned
    /// stdin), in the cgroup + netns; output via the returned reader.
    pub fn spawn_client_piped(
        &mut self,
        args: &[&str],
    ) -> (
        std::process::ChildStdin,
        BufReader<std::process::ChildStdout>,
    ) {
        let mut child = self
            .command(SOCKBENCH, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn client");
        let stdin = child.stdin.take().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        self.children.push(ChildGuard(child));
        (stdin, out)
    }

    fn run_bounded(&self, mut cmd: Command, limit: Duration) -> String {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(_status) = child.try_wait().unwrap() {
                let out = child.wait_with_output().unwrap();
                assert!(
                    out.status.success(),
                    "{cmd:?} failed: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{cmd:?} did not finish within {limit:?}");
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Packets sent on the namespace's loopback interface so far.
    pub fn lo_tx_packets(&self) -> u64 {
        let out = sh(Command::new("ip").args([
            "netns",
            "exec",
            &self.netns,
            "cat",
            "/sys/class/net/lo/statistics/tx_packets",
        ]));
        out.trim().parse().expect("tx_packets")
    }

    /// Programs attached to the test cgroup, as bpftool lists them.
    pub fn cgroup_progs(&self) -> String {
        sh(Command::new("bpftool")
            .args(["cgroup", "show"])
            .arg(&self.cgroup))
    }

    /// Waits (at most 5 s) until none of our programs is attached to the test cgroup: the
    /// kernel releases a link unpinned from bpffs from a work queue (`bpf_link_put`
    /// defers), so a check made right after a detach races the release.
    pub fn wait_detached(&self) {
        membrane_test_support::wait_until(
            Duration::from_secs(5),
            Duration::from_millis(10),
            "no mb_ program left on the test cgroup",
            || (!self.cgroup_progs().contains("mb_")).then_some(()),
        )
    }

    pub fn cgroup_path(&self) -> &Path {
        &self.cgroup
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.children.clear();
        if let Ok(dp) = Datapath::open(&self.bpffs) {
            let _ = dp.detach(&self.cgroup);
        }
    }
}

/// A TCP rule of the endpoint's policy map.
pub fn tcp(
    direction: membrane_datapath::policy_map::Direction,
    remote_identity: u32,
    lo: u16,
    hi: u16,
    verdict: membrane_datapath::policy_map::MapVerdict,
) -> membrane_datapath::policy_map::PolicyRule {
    membrane_datapath::policy_map::PolicyRule {
        direction,
        remote_identity,
        proto: 6,
        ports: (lo, hi),
        verdict,
    }
}
