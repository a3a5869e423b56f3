//! Child processes: a guard that kills and reaps what a test started, running a
//! command to completion with its failure in the panic message, and finding another
//! package's binary of the workspace.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

/// Kills (by pid) and reaps the child on drop, so a failing test leaves nothing running.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl std::ops::Deref for ChildGuard {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `cmd` to completion and returns its stdout; panics with its stderr when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// [`run`] for a command line given as words (`["ip", "netns", "add", "x"]`).
pub fn run_args(args: &[&str]) -> String {
    run(Command::new(args[0]).args(&args[1..]))
}

/// The workspace's binary `name`, beside `bin` (one of the test's own package's binaries,
/// its `CARGO_BIN_EXE_*`). Cargo gives a test no `CARGO_BIN_EXE_` for another package's
/// binary, but a workspace build (`make test` builds every binary first) puts them side by
/// side. Building it from inside the test would race the build that runs the test, so a
/// missing binary panics saying how to get it.
pub fn sibling_bin(bin: &str, name: &str) -> PathBuf {
    let path = Path::new(bin).with_file_name(name);
    assert!(
        path.exists(),
        "{} missing: build the workspace's binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}
