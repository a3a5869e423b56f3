//! Launching the real `membrane-xds` on loopback: every listener on port 0, the bound
//! addresses read back from the line the binary prints on stdout when it is up
//! (`grpc=ADDR debug=ADDR [tls=ADDR] [webhook=ADDR]`).
//!
//! The binary's path comes from the caller (`env!("CARGO_BIN_EXE_membrane-xds")` in the
//! xds crate's tests), since only the package that builds a binary is told where it is.
//!
//! A control plane can be killed (SIGKILL, as a crash or an OOM kill would) and started
//! again with the same flags on the addresses it bound before ([`Xds::kill`],
//! [`Xds::restart`]): clients hold its address, as they hold a Service's.

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    cmd.arg("--source-dir").arg(source_dir);
    let program = cmd.get_program().to_owned();
    let args: Vec<OsString> = cmd.get_args().map(OsStr::to_owned).collect();
    let log = Arc::new(Mutex::new(String::new()));
    let (proc, line, _) = launch(cmd, &log);
    Xds {
        proc,
        line,
        log,
        program,
        args,
    }
}

/// Spawns `cmd` with its stderr passed on and kept in `log`; the first stdout line (empty
/// when the process exits first) and the thread copying its stderr, which ends with it.
fn launch(
    mut cmd: Command,
    log: &Arc<Mutex<String>>,
) -> (ChildGuard, String, std::thread::JoinHandle<()>) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("spawn membrane-xds");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let proc = ChildGuard(child);
    let kept = log.clone();
    // Ends when the process does (its stderr closes).
    let logger = std::thread::spawn(move || {
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
    (proc, line, logger)
}

/// How often [`Xds::restart`] tries again when one of its ports was taken meanwhile.
const RESTART_ATTEMPTS: u32 = 20;

/// A running `membrane-xds`, killed (by pid) and reaped on drop.
#[derive(Debug)]
pub struct Xds {
    /// The process.
    pub proc: ChildGuard,
    /// The address line it printed.
    pub line: String,
    log: Arc<Mutex<String>>,
    program: OsString,
    args: Vec<OsString>,
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

    /// Kills the process with SIGKILL (no shutdown: open streams break, leases are not
    /// revoked) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.proc.0.kill();
        let _ = self.proc.0.wait();
    }

    /// Kills the process if it still runs, then starts it again with the same flags, every
    /// listener on the address the last run bound; returns once it listens. If another
    /// process took one of those ports meanwhile, it retries for a bounded time, then
    /// panics naming the port.
    pub fn restart(&mut self) {
        self.kill();
        let mut args = self.args.clone();
        for (flag, key) in [
            ("--grpc-addr", "grpc"),
            ("--debug-addr", "debug"),
            ("--tls-addr", "tls"),
            ("--webhook-addr", "webhook"),
        ] {
            let (Some(i), Some(bound)) = (args.iter().position(|a| a == flag), self.addr(key))
            else {
                continue;
            };
            if let Some(v) = args.get_mut(i + 1) {
                *v = bound.to_string().into();
            }
        }
        let start = Instant::now();
        for attempt in 1.. {
            let mut cmd = Command::new(&self.program);
            cmd.args(&args);
            let before = self.log.lock().unwrap().len();
            let (proc, line, logger) = launch(cmd, &self.log);
            if !line.is_empty() {
                self.proc = proc;
                self.line = line;
                return;
            }
            let _ = logger.join();
            let log = self.log.lock().unwrap()[before..].to_owned();
            assert!(
                log.contains("Address already in use")
                    && attempt < RESTART_ATTEMPTS
                    && start.elapsed() < Duration::from_secs(30),
                "membrane-xds did not restart on {:?}: {log}",
                self.line
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The injection webhook's address, when it is enabled.
    pub fn webhook(&self) -> Option<SocketAddr> {
        self.addr("webhook")
    }
}
