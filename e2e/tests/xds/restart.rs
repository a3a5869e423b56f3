//! membrane-xds killed (SIGKILL) and started again under load: the sidecar keeps enforcing
//! while its control plane is away, resyncs from the new process without a window of
//! wrong verdicts, and follows an edit made after the return.

use std::path::{Path, PathBuf};
use std::time::Duration;

use membrane_test_support::xds::{self as launcher, Xds as XdsProcess};

use super::load::{Load, Probe, Tally};
use super::*;

/// A binary of another package of the workspace. Cargo tells a test only where its own
/// package's binaries are; a workspace build (`make test`'s `cargo build --workspace
/// --bins`, or `cargo nextest run --workspace`) puts the others beside them, in the
/// directory above this test's own executable. Building it from inside the test would
/// race the build that runs the test, so a missing binary is an error saying how to get it.
pub(crate) fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("this test's executable");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .join(name);
    assert!(
        bin.exists(),
        "{} missing: build the workspace's binaries first (cargo build --workspace --bins)",
        bin.display()
    );
    bin
}

/// A pod whose label set only the first control plane ever sees: it is removed before
/// the kill, so the restarted control plane, numbering identities afresh, numbers the
/// others differently (it comes first in the file).
fn shuttle() -> String {
    "kind: Pod\nmetadata: {name: shuttle, namespace: default, labels: {org: empire, class: shuttle}}\nstatus: {podIP: 127.0.0.5}\n---\n".to_owned()
}

/// What the deathstar's policy says: the tiefighter lands, the exhaust port is closed to
/// everyone, the xwing gets nothing.
pub(crate) fn probes() -> [Probe; 3] {
    [
        Probe {
            name: "tiefighter lands",
            src: tiefighter(),
            method: "POST",
            path: "/v1/request-landing",
            want: 200,
        },
        Probe {
            name: "tiefighter exhaust port denied",
            src: tiefighter(),
            method: "PUT",
            path: "/v1/exhaust-port",
            want: 403,
        },
        Probe {
            name: "xwing denied",
            src: xwing(),
            method: "POST",
            path: "/v1/request-landing",
            want: 403,
        },
    ]
}

/// The first value of `key` anywhere in `v`.
fn find<'a>(v: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => {
            m.get(key).or_else(|| m.values().find_map(|x| find(x, key)))
        }
        serde_json::Value::Array(a) => a.iter().find_map(|x| find(x, key)),
        _ => None,
    }
}

/// The NPDS and NPHDS versions the sidecar has in force (its `/config_dump`).
pub(crate) async fn proxy_versions(admin: SocketAddr) -> (String, String) {
    let (_, body) = get(admin, "/config_dump").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let s = |k| {
        find(&v, k)
            .and_then(|x| x.as_str())
            .unwrap_or("")
            .to_owned()
    };
    (s("npds_version"), s("nphds_version"))
}

/// The versions the control plane holds for the deathstar's sidecar, once the sidecar
/// ACKed both to this process; `None` before.
pub(crate) async fn acked_versions(debug: SocketAddr) -> Option<(String, String)> {
    let (code, body) = get(
        debug,
        &format!("/debug/config_dump?proxyID={NODE}&format=membrane"),
    )
    .await;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let acked = |t: &str| {
        let t = &v["types"][t];
        (t["version"].is_string() && t["version"] == t["acked_version"])
            .then(|| t["version"].as_str().unwrap().to_owned())
    };
    Some((
        acked(membrane_api::type_url::NETWORK_POLICY)?,
        acked(membrane_api::type_url::NETWORK_POLICY_HOSTS)?,
    ))
}

/// Waits until the sidecar ACKed the control plane's current NPDS and NPHDS, and has
/// those in force; their versions.
pub(crate) async fn synced(debug: SocketAddr, admin: SocketAddr) -> (String, String) {
    membrane_test_support::eventually(
        Duration::from_secs(20),
        "the sidecar to ACK the control plane's NPDS and NPHDS",
        || async {
            let want = acked_versions(debug).await?;
            (proxy_versions(admin).await == want).then_some(want)
        },
    )
    .await
}

/// The restart: SIGKILL, a stretch of load with no control plane, the same binary on the
/// same address and source again, and the sidecar synced to it.
async fn kill_and_restart(xds: &mut XdsProcess, load: &Load, admin: SocketAddr) {
    load.wait_for(300, "load before the kill").await;
    xds.kill();
    load.wait_for(500, "load while membrane-xds is away").await;
    assert_eq!(
        get(admin, "/ready").await.0,
        200,
        "ready without the control plane"
    );
    xds.restart();
    synced(xds.debug(), admin).await;
    load.wait_for(300, "load after the resync").await;
}

/// The (NPDS, NPHDS) versions the sidecar had in force, sampled every few milliseconds
/// (for at most three minutes) until stopped.
struct States {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Vec<(String, String)>>,
}

impl States {
    fn watch(admin: SocketAddr) -> States {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut seen: Vec<(String, String)> = Vec::new();
            let start = std::time::Instant::now();
            while stopped.try_recv().is_err() && start.elapsed() < Duration::from_secs(180) {
                let now = proxy_versions(admin).await;
                if seen.last() != Some(&now) {
                    seen.push(now);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            seen
        });
        States { stop, task }
    }

    async fn stop(self) -> Vec<(String, String)> {
        let _ = self.stop.send(());
        self.task.await.expect("state watcher")
    }
}

fn assert_no_failures(t: &Tally, when: &str) {
    eprintln!(
        "{when}: {} requests, {} failed; answered as the policy says: {:?}",
        t.sent(),
        t.failed,
        t.ok
    );
    assert_eq!(t.failed, 0, "{when}: failed requests: {:#?}", t.failures);
    for p in probes() {
        assert!(
            t.ok.get(p.name).is_some_and(|n| *n > 0),
            "{when}: no {}",
            p.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_keep_enforcing_while_membrane_xds_is_killed_and_resync_without_a_flush() {
    let backend = common::start_backend().await;
    let port = backend.port();
    let dir = tempfile::tempdir().unwrap();
    let cluster = dir.path().join("cluster.yaml");
    std::fs::write(&cluster, shuttle() + &pods(port)).unwrap();
    std::fs::write(dir.path().join("policy.yaml"), cnp(port, "")).unwrap();
    let mut cmd = launcher::command(workspace_bin("membrane-xds"));
    cmd.args(launcher::PLAINTEXT).args(["--poll-ms", "50"]);
    let mut xds = launcher::spawn(cmd, dir.path());
    let proxy = start_proxy(backend, xds.grpc()).await;
    let admin = proxy.addrs.admin;
    let first = synced(xds.debug(), admin).await;

    // The shuttle leaves while the first control plane runs: only its history now
    // differs from what a new process will see.
    std::fs::write(&cluster, pods(port)).unwrap();
    let before = membrane_test_support::eventually(
        Duration::from_secs(20),
        "the shuttle's removal to reach the sidecar",
        || async {
            let now = synced(xds.debug(), admin).await;
            (now.1 != first.1).then_some(now)
        },
    )
    .await;

    // Round 1: the restarted process numbers identities afresh (the shuttle took the
    // first number in the old one), so what it sends differs from what is in force. The
    // sidecar must never mix old and new numbers, not even for one request.
    let load = Load::start(proxy.addrs.listen, &probes(), 4);
    let states = States::watch(admin);
    kill_and_restart(&mut xds, &load, admin).await;
    let renumbered = proxy_versions(admin).await;
    assert_ne!(
        renumbered.1, before.1,
        "the restarted control plane was meant to number identities differently"
    );

    // Round 2: the same source, the same numbering: a resync changes nothing, the
    // versions in force are the ones before the kill (no flush, no reload to empty).
    kill_and_restart(&mut xds, &load, admin).await;
    assert_eq!(
        proxy_versions(admin).await,
        renumbered,
        "a resync to the same content changed what is in force"
    );
    let tally = load.stop().await;
    assert_no_failures(&tally, "membrane-xds killed twice");
    // Whatever the load happened to hit, the sidecar never had one control plane's NPDS
    // in force beside the other's NPHDS.
    let seen = states.stop().await;
    assert!(
        seen.iter().all(|s| *s == before || *s == renumbered),
        "in force at some moment: {seen:?}; served together: {before:?}, {renumbered:?}"
    );

    // An edit after the return arrives: the exhaust port opens for the empire.
    std::fs::write(dir.path().join("policy.yaml"), cnp(port, ALLOW_EXHAUST)).unwrap();
    within_10s("the edit made after the restart", || async {
        status_from(tiefighter(), proxy.addrs.listen, "PUT", "/v1/exhaust-port").await == 200
    })
    .await;
    assert_eq!(
        status_from(xwing(), proxy.addrs.listen, "PUT", "/v1/exhaust-port").await,
        403
    );
    proxy.drain(Duration::from_secs(1)).await;
}
