//! What the CLI's integration tests share: a real membrane-xds started in process on a
//! Star Wars source directory (stopped when its guard drops), curl against an admin or
//! debug port, and the Python prelude that loads Envoy's message definitions
//! (xds-protos) and membrane's compiled Cilium protos, so a dump decodes as Envoy's own
//! `envoy.admin.v3.ConfigDump`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use clap::Parser;
use membrane_test_support::starwars;

/// An in-process membrane-xds, shut down on drop (also when the test fails).
pub struct ControlPlane {
    rt: tokio::runtime::Runtime,
    running: Option<membrane_xds::app::Running>,
    /// Its debug HTTP address (`--debug-addr`).
    pub debug: String,
    /// Its plaintext xDS gRPC address (`--grpc-addr`).
    pub grpc: SocketAddr,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            self.rt.block_on(r.shutdown());
        }
    }
}

/// membrane-xds on loopback ephemeral ports, plaintext xDS, polling every 100 ms, reading
/// the Star Wars source (the deathstar's upstream on 8080) it writes to `dir/src`.
pub fn control_plane(dir: &Path) -> ControlPlane {
    let src = dir.join("src");
    std::fs::create_dir(&src).unwrap();
    starwars::write_source(&src, 8080);
    let cfg = membrane_xds::config::Config::parse_from([
        "membrane-xds",
        "--source-dir",
        src.to_str().unwrap(),
        "--debug-addr",
        "127.0.0.1:0",
        "--plaintext-xds",
        "--grpc-addr",
        "127.0.0.1:0",
        "--poll-ms",
        "100",
    ]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let running = rt
        .block_on(membrane_xds::app::start(&cfg))
        .expect("membrane-xds");
    let debug = running.addrs.debug.to_string();
    let grpc = running.addrs.grpc.unwrap();
    ControlPlane {
        rt,
        running: Some(running),
        debug,
        grpc,
    }
}

/// GET with curl (Envoy's admin answers chunked); the body, or `None` on any failure.
pub fn curl(url: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "10", url])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8(out.stdout).unwrap())
}

/// A Python script that decodes dumps: first it imports every Envoy message xds-protos
/// ships (so that any `Any` in a dump resolves) and adds membrane's compiled Cilium protos
/// (not in xds-protos), the descriptor set at `sys.argv[cilium_arg]`, to the default
/// `pool`; then `body`.
pub fn python_decoder(cilium_arg: usize, body: &str) -> String {
    format!(
        r#"
import importlib, json, pkgutil, sys
import envoy
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
for m in pkgutil.walk_packages(envoy.__path__, 'envoy.'):
    if m.name.endswith('_pb2'):
        try:
            importlib.import_module(m.name)
        except Exception:
            pass
fds = descriptor_pb2.FileDescriptorSet.FromString(open(sys.argv[{cilium_arg}], 'rb').read())
pool = descriptor_pool.Default()
for f in fds.file:
    try:
        pool.FindFileByName(f.name)
    except KeyError:
        pool.Add(f)
{body}"#
    )
}
