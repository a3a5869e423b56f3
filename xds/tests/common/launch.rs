//! `membrane-xds` started with environment settings and a chosen log level:
//! settings given as `MEMBRANE_*` variables reach a new binary and are
//! ignored by an older one, so a test can run against both.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use super::{Guard, Xds};

/// Starts the binary on loopback ephemeral ports with `args`, `env` and
/// `--log log`, reading the bound addresses from its first line.
pub fn start_xds_env(
    source_dir: &std::path::Path,
    args: &[&OsStr],
    env: &[(&str, &str)],
    log: &str,
) -> Xds {
    let mut child = Command::new(env!("CARGO_BIN_EXE_membrane-xds"))
        .args(["--plaintext-xds", "--grpc-addr", "127.0.0.1:0"])
        .args(["--debug-addr", "127.0.0.1:0"])
        .args(["--tls-addr", "127.0.0.1:0", "--log", log])
        .args(args)
        .arg("--source-dir")
        .arg(source_dir)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .expect("spawn membrane-xds");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read address line");
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k} in {line:?}"))
            .parse()
            .unwrap()
    };
    Xds {
        proc: Guard(child),
        grpc: field("grpc="),
        debug: field("debug="),
        tls: line.contains("tls=").then(|| field("tls=")),
        webhook: line.contains("webhook=").then(|| field("webhook=")),
    }
}
