//! Hot restart with the policy from the control plane: a successor that took the
//! listeners over serves only once membrane-xds gave it its policy (never with the
//! deny-all placeholder); until then its predecessor serves every request, right.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::load::request;
use super::*;

/// The deathstar's sidecar as `start_proxy_with` configures it, on `listeners`, with the
/// handover socket `sock`.
fn config(
    backend: SocketAddr,
    xds: SocketAddr,
    sock: &Path,
    listeners: [SocketAddr; 4],
) -> membrane_proxy::config::Config {
    let [listen, admin, metrics, health] = listeners.map(|a| a.to_string());
    let (backend, xds) = (backend.to_string(), format!("http://{xds}"));
    let args = [
        "membrane-proxy",
        "standalone",
        "--listen",
        &listen,
        "--admin",
        &admin,
        "--metrics",
        &metrics,
        "--health",
        &health,
        "--upstream",
        &backend,
        "--xds-address",
        &xds,
        "--node-id",
        NODE,
        "--xds-backoff-initial",
        "50ms",
        "--xds-backoff-max",
        "300ms",
        "--access-log",
        "false",
        "--handover-socket",
        sock.to_str().unwrap(),
    ];
    let ProxyCommand::Standalone(cfg) = Cli::try_parse_from(args).unwrap().command else {
        unreachable!("a standalone command line")
    };
    *cfg
}

/// The restart epoch of the process answering `admin`.
async fn epoch(admin: SocketAddr) -> u64 {
    let (_, info) = get(admin, "/server_info").await;
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    info["command_line_options"]["restart_epoch"]
        .as_u64()
        .unwrap_or_else(|| panic!("no restart epoch: {info}"))
}

fn deny_all() -> membrane_proxy::policy::Enforcer {
    membrane_proxy::policy::deny_all("no policy from the control plane yet")
}

/// The Star Wars verdicts, asked over and over: the tiefighter lands (200) and may not
/// touch the exhaust port (403), the xwing may not land (403). Every other outcome is a
/// failure.
async fn load(
    dst: SocketAddr,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let asks = [
        (tiefighter(), "POST", "/v1/request-landing", 200),
        (tiefighter(), "PUT", "/v1/exhaust-port", 403),
        (xwing(), "POST", "/v1/request-landing", 403),
    ];
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let (src, method, path, want) = asks[n % asks.len()];
        n += 1;
        match request(src, dst, method, path).await {
            Ok(got) if got == want => {
                ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(got) => failures.lock().unwrap().push(format!(
                "{method} {path} from {src}: {got}, expected {want}"
            )),
            Err(e) => failures
                .lock()
                .unwrap()
                .push(format!("{method} {path} from {src}: {e}")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_takes_over_only_once_the_control_plane_gave_it_its_policy() {
    let backend = common::start_backend().await;
    let port = backend.port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cluster.yaml"), pods(port)).unwrap();
    std::fs::write(dir.path().join("policy.yaml"), cnp(port, "")).unwrap();
    let sock = dir.path().join("proxy-handover.sock");

    let xds = start_xds(dir.path(), "127.0.0.1:0".parse().unwrap());
    let grpc = xds.grpc;
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let cfg = config(backend, grpc, &sock, [any; 4]);
    let (old, old_server) = membrane_proxy::handover::start(&cfg, deny_all(), None)
        .await
        .unwrap();
    let mut old_server = old_server.expect("a handover socket");
    let a = old.addrs;
    within_10s("the first proxy's policy", || async {
        get(a.admin, "/ready").await.0 == 200
    })
    .await;

    let (ok, failures, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(AtomicBool::new(false)),
    );
    let clients: Vec<_> = (0..3)
        .map(|_| tokio::spawn(load(a.listen, ok.clone(), failures.clone(), stop.clone())))
        .collect();
    let progress = |more: u64| {
        let ok = ok.clone();
        async move {
            let target = ok.load(Ordering::Relaxed) + more;
            within_10s("requests to go on succeeding", || async {
                ok.load(Ordering::Relaxed) >= target
            })
            .await
        }
    };
    progress(60).await;

    // The control plane goes away; a successor starts on the same listeners. It has the
    // sockets, but no policy: it must not accept (its deny-all would answer the
    // tiefighter's landing 403), so the old proxy serves on, with its last good policy.
    drop(xds);
    let next_cfg = config(
        backend,
        grpc,
        &sock,
        [a.listen, a.admin, a.metrics, a.health],
    );
    let successor =
        tokio::spawn(
            async move { membrane_proxy::handover::start(&next_cfg, deny_all(), None).await },
        );
    progress(150).await;
    assert!(
        !successor.is_finished(),
        "the successor serves without its policy"
    );
    assert_eq!(epoch(a.admin).await, 0);

    // The control plane returns: the successor gets its policy, serves, and the old
    // proxy drains.
    let _xds = start_xds(dir.path(), grpc);
    let (new, new_server) = tokio::time::timeout(Duration::from_secs(20), successor)
        .await
        .expect("the successor serves once its policy is in force")
        .unwrap()
        .unwrap();
    assert_eq!(new.epoch(), 1);
    let handed_to = tokio::time::timeout(Duration::from_secs(5), old_server.handed_over())
        .await
        .expect("the old proxy is asked to drain");
    assert_eq!(handed_to, std::process::id());
    old_server.close();
    old.drain_after_handover(Duration::from_secs(2)).await;
    assert!(sock.exists(), "the successor's handover socket stays");

    progress(60).await;
    assert_eq!(epoch(a.admin).await, 1);
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {failures:#?}",
        failures.len(),
        ok.load(Ordering::Relaxed) + failures.len() as u64
    );
    new_server.expect("a handover socket").close();
    new.drain(Duration::from_secs(1)).await;
}
