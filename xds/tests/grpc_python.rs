//! A real gRPC xDS peer (Python grpcio with xds-protos) resolves a listener,
//! cluster and endpoints from membrane-xds, then calls a service through an
//! `xds:///` target (see `grpc_xds_client.py`).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpc_xds_client_resolves_listener_cluster_and_calls_through_xds() {
    let tmp = tempfile::tempdir().unwrap();
    let xds = start_xds(tmp.path());
    let script = format!(
        "{}/tests/grpc_xds_client.py",
        std::env::var("CARGO_MANIFEST_DIR").unwrap()
    );
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::task::spawn_blocking({
            let addr = xds.grpc().to_string();
            let dir = tmp.path().to_path_buf();
            move || {
                Command::new("python3")
                    .arg(script)
                    .arg(addr)
                    .arg(dir)
                    .output()
                    .expect("python3")
            }
        }),
    )
    .await
    .expect("python client timed out")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    for want in [
        "ok listener echo.default.svc.cluster.local:80 -> outbound|80||echo.default.svc.cluster.local",
        "ok cluster outbound|80||echo.default.svc.cluster.local type EDS",
        "ok endpoints 127.0.0.1:",
        "ok xds:/// call answered pong:hi",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
    // The flight recorder saw the raw client ACK all three types.
    let rec = debug_json(
        xds.debug(),
        "/debug/flightz?proxyID=membrane-test-grpc-client",
    )
    .await;
    for t in ["Listener", "Cluster", "ClusterLoadAssignment"] {
        let key = rec["types"]
            .as_object()
            .unwrap()
            .keys()
            .find(|k| k.ends_with(&format!(".{t}")))
            .cloned()
            .unwrap_or_else(|| panic!("no {t} in {rec}"));
        let tr = &rec["types"][&key];
        assert!(tr["acked_version"].is_string(), "{t} not ACKed: {tr}");
        assert_eq!(tr["acked_version"], tr["sent_version"], "{t}: {tr}");
    }
}
