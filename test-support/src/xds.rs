//! Launching the real `membrane-xds` on loopback: every listener on port 0, the bound
//! addresses read back from the line the binary prints on stdout when it is up
//! (`grpc=ADDR debug=ADDR [tls=ADDR] [webhook=ADDR]`).
//!
//! The binary's path comes from the caller (`env!("CARGO_BIN_EXE_membrane-xds")` in the
//! xds crate's tests), since only the package that builds a binary is told where it is.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::poll::wait_until;
use crate::process::ChildGuard;

/// A command for `bin` with its debug and TLS listeners on loopback port 0. Add the
/// source flags and the rest, then [`spawn`] it.
pub fn command(bin: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new(bin);
    c.args(["--debug-addr", "127.0.0.1:0"])
        .args(["--tls-addr", "127.0.0.1:0"]);
    c
}

/// The flags that open the plaintext xDS port on loopback port 0 (the trusted local path;
/// without them only mTLS is served).
pub const PLAINTEXT: [&str; 3] = ["--plaintext-xds", "--grpc-addr", "127.0.0.1:0"];

/// Starts `cmd` (built with [`command`]) in its own process group, with `--source-dir
/// source_dir` last, and returns once it printed its addresses. Its log (stderr) is passed
/// on to the test's stderr and kept for [`Xds::wait_for_log`].
pub fn spawn(mut cmd: Command, source_dir: &Path) -> Xds {
    let mut child = cmd
        .arg("--source-dir")
        .arg(source_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("spawn membrane-xds");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let proc = ChildGuard(child);
    let log = Arc::new(Mutex::new(String::new()));
    let kept = log.clone();
    // Ends when the process does (its stderr closes).
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{l}");
            let mut k = kept.lock().unwrap();
            k.push_str(&l);
            k.push('\n');
        }
    });
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read address line");
    Xds { proc, line, log }
}

/// A running `membrane-xds`, killed (by pid) and reaped on drop.
#[derive(Debug)]
pub struct Xds {
    /// The process.
    pub proc: ChildGuard,
    /// The address line it printed.
    pub line: String,
    log: Arc<Mutex<String>>,
}

impl Xds {
    /// The address printed as `KEY=ADDR`, if the line has one.
    pub fn addr(&self, key: &str) -> Option<SocketAddr> {
        let prefix = format!("{key}=");
        self.line
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&prefix))
            .map(|a| {
                a.parse()
                    .unwrap_or_else(|e| panic!("{key} in {:?}: {e}", self.line))
            })
    }

    fn must(&self, key: &str) -> SocketAddr {
        self.addr(key)
            .unwrap_or_else(|| panic!("no {key}= in {:?}", self.line))
    }

    /// The plaintext xDS address (started with [`PLAINTEXT`]).
    pub fn grpc(&self) -> SocketAddr {
        self.must("grpc")
    }

    /// The debug endpoint's address.
    pub fn debug(&self) -> SocketAddr {
        self.must("debug")
    }

    /// The mTLS xDS address, when TLS is configured.
    pub fn tls(&self) -> Option<SocketAddr> {
        self.addr("tls")
    }

    /// Waits (at most `limit`) until its log has a line containing `needle`: a test that
    /// must know a step happened inside the process waits for the step's log line rather
    /// than for a fixed moment.
    pub fn wait_for_log(&self, needle: &str, limit: Duration) {
        wait_until(limit, Duration::from_millis(20), needle, || {
            self.log.lock().unwrap().contains(needle).then_some(())
        })
    }

    /// The injection webhook's address, when it is enabled.
    pub fn webhook(&self) -> Option<SocketAddr> {
        self.addr("webhook")
    }
}
