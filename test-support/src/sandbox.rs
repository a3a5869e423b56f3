//! Privileged test sandboxes: a network namespace, a cgroup v2 child and a bpffs pin
//! directory of the test's own, each removed when its guard drops (also when the test
//! fails). Nothing here touches the root cgroup or a host interface.
//!
//! A harness that attaches BPF holds these guards as fields after its own `Drop` (which
//! kills its processes and detaches the programs): fields drop in declaration order, so
//! declare `PinDir`, then `Cgroup`, then `Netns` to remove pins first and the namespace last.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::process::run;

/// Where to mount cgroup2 when the host has none mounted.
const FALLBACK_CG2: &str = "/run/membrane-test-cgroup2";

/// `membrane-test-PID-SEQ`: unique per process and call, so parallel tests never share a
/// namespace, cgroup or pin directory.
pub fn unique_name() -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    format!(
        "membrane-test-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A network namespace (`ip netns add`), loopback up; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    /// The name `ip netns` knows it by.
    pub name: String,
}

impl Netns {
    /// Adds the namespace `name` and brings its loopback up.
    pub fn add(name: &str) -> Netns {
        run(Command::new("ip").args(["netns", "add", name]));
        // The guard exists from here on, so a failure below still deletes the namespace.
        let ns = Netns { name: name.into() };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME ARGS...`; its stdout (panics when it fails).
    pub fn ip(&self, args: &[&str]) -> String {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// `/run/netns/NAME`, the path a CNI plugin or `setns` is given.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`).
    pub fn exec(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// The command prefix that runs a program as the sidecar's uid and gid (1337, which the
/// capture exempts), with no supplementary groups.
pub const AS_SIDECAR: [&str; 6] = [
    "setpriv",
    "--reuid",
    "1337",
    "--regid",
    "1337",
    "--clear-groups",
];

/// Runs curl inside the namespace `ns` (`-s --max-time 3`, then `args`); returns (status
/// code, body). A connection that fails gives status `000`.
pub fn curl_in(ns: &str, args: &[&str]) -> (String, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-s", "--max-time", "3"])
        .args(["-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("curl in {ns}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_owned(), body.to_owned())
}

/// Joins `a` and `b` with a veth pair (`dev_a` in `a`, `dev_b` in `b`), gives them
/// `addr_a` and `addr_b` (CIDR strings) and brings both up. Deleting either namespace
/// deletes the pair.
pub fn veth(a: &Netns, dev_a: &str, addr_a: &str, b: &Netns, dev_b: &str, addr_b: &str) {
    run(Command::new("ip").args([
        "link", "add", dev_a, "netns", &a.name, "type", "veth", "peer", "name", dev_b, "netns",
        &b.name,
    ]));
    for (ns, dev, addr) in [(a, dev_a, addr_a), (b, dev_b, addr_b)] {
        ns.ip(&["addr", "add", addr, "dev", dev]);
        ns.ip(&["link", "set", dev, "up"]);
    }
}

/// The cgroup2 mount point, mounting one at a test location when the host has none.
pub fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let found = mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_src, dst, kind) = (f.next()?, f.next()?, f.next()?);
        (kind == "cgroup2").then(|| PathBuf::from(dst))
    });
    if let Some(p) = found {
        return p;
    }
    std::fs::create_dir_all(FALLBACK_CG2).unwrap();
    run(Command::new("mount").args(["-t", "cgroup2", "none", FALLBACK_CG2]));
    PathBuf::from(FALLBACK_CG2)
}

/// A child cgroup `name` under the cgroup2 root; removed on drop once its processes are
/// gone (kill them first: a cgroup with members cannot be removed).
#[derive(Debug)]
pub struct Cgroup {
    /// Its directory.
    pub path: PathBuf,
}

impl Cgroup {
    /// Creates the cgroup `name`.
    pub fn create(name: &str) -> Cgroup {
        let path = cgroup2_root().join(name);
        std::fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("create test cgroup {}: {e}", path.display()));
        Cgroup { path }
    }

    /// A command that moves itself into this cgroup, then runs `program args`.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(r#"cg="$1"; shift; echo $$ > "$cg/cgroup.procs" && exec "$@""#)
            .arg("sh")
            .arg(&self.path)
            .arg(program)
            .args(args);
        c
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Killed members leave asynchronously: retry for up to 2 s.
        for _ in 0..100 {
            if !self.path.exists() || std::fs::remove_dir(&self.path).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A pin directory `/sys/fs/bpf/NAME` (not created here: the datapath creates it when it
/// attaches, after mounting bpffs if needed); removed with everything pinned in it on drop.
#[derive(Debug)]
pub struct PinDir {
    /// The directory.
    pub path: PathBuf,
}

impl PinDir {
    /// The pin directory for `name`.
    pub fn new(name: &str) -> PinDir {
        PinDir {
            path: PathBuf::from("/sys/fs/bpf").join(name),
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
