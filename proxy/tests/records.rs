//! The reporter to the node agent (`--records-socket`): in process, with a unix socket
//! this test serves in the agent's place.
//!
//! - While nothing serves the socket, requests are answered as always and their records
//!   are skipped and counted (`reason="disconnected"`).
//! - Once it is served, each request's outcome arrives as one `l7` monitor event: the
//!   denial with its status and the rule that decided, the allow with the upstream's
//!   status, the protocol and direction.
//! - The listener going away and coming back (an agent restart) is followed by a
//!   reconnect, and records flow again.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixListener;
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use membrane_api::monitor::Event;
use membrane_test_support::wait_until;

const LIMIT: Duration = Duration::from_secs(20);

/// Serves `listener` on a thread: every line read, parsed, into the channel.
fn agent(listener: UnixListener) -> mpsc::Receiver<Event> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(conn).lines().map_while(Result::ok) {
                    if tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    rx
}

fn prometheus(p: &Proxy, metric: &str) -> u64 {
    p.running
        .metrics
        .encode_prometheus()
        .lines()
        .find_map(|l| l.strip_prefix(metric))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_the_agent_as_l7_events_and_survive_its_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("records.sock");
    let p = start_proxy_with(&[
        "--records-socket",
        sock.to_str().unwrap(),
        "--records-flush-interval",
        "20ms",
    ])
    .await;

    // No agent: served as always, the record skipped and counted.
    let (code, _, _) = curl(&[&p.url("/v1/before")]).await;
    assert_eq!(code, 200);
    let skipped = r#"membrane_l7_records_dropped_total{reason="disconnected"} "#;
    assert!(prometheus(&p, skipped) >= 1);

    // The agent comes: requests (repeated until the reporter's backoff found it) arrive.
    let rx = agent(UnixListener::bind(&sock).unwrap());
    let next = |path: &str| {
        let path = path.to_owned();
        move |rx: &mpsc::Receiver<Event>| {
            rx.try_iter()
                .find(|e| e.l7.as_ref().is_some_and(|l| l.path == path))
        }
    };
    let mut denied = None;
    for _ in 0..200 {
        let (code, _, _) = curl(&["-X", "PUT", &p.url("/v1/exhaust-port")]).await;
        assert_eq!(code, 403);
        tokio::time::sleep(Duration::from_millis(100)).await;
        denied = next("/v1/exhaust-port")(&rx);
        if denied.is_some() {
            break;
        }
    }
    let denied = denied.expect("the denial reached the agent");
    assert_eq!(denied.kind, "l7");
    assert_eq!(denied.program, "sidecar");
    assert_eq!(denied.verdict.as_deref(), Some("denied"));
    let l7 = denied.l7.as_ref().unwrap();
    assert_eq!((l7.method.as_str(), l7.status), ("PUT", 403));
    assert_eq!(
        (l7.direction.as_str(), l7.protocol.as_str()),
        ("ingress", "HTTP/1.1")
    );
    assert!(
        l7.rule.as_deref().is_some_and(|r| r.contains("proxy-test")),
        "the rule whose HTTP rules refused it: {denied:?}"
    );
    // Standalone: the destination is the upstream the listener delivers to.
    assert_eq!(denied.dst.as_deref(), Some(p.backend.to_string().as_str()));
    assert_eq!(denied.src_pod, None, "the reporter claims no pods");

    let (code, _, _) = curl(&["--http2-prior-knowledge", &p.url("/v1/allowed")]).await;
    assert_eq!(code, 200);
    let allowed = wait_until(LIMIT, Duration::from_millis(50), "the allow", || {
        next("/v1/allowed")(&rx)
    });
    assert_eq!(allowed.verdict.as_deref(), Some("allowed"));
    let l7 = allowed.l7.as_ref().unwrap();
    assert_eq!((l7.status, l7.protocol.as_str()), (200, "HTTP/2"));
    assert!(
        l7.rule.as_deref().is_some_and(|r| r.contains("http[1]")),
        "{allowed:?}"
    );

    // The agent restarts: a new socket at the path; the reporter reconnects.
    drop(rx);
    std::fs::remove_file(&sock).unwrap();
    let rx = agent(UnixListener::bind(&sock).unwrap());
    let mut again = None;
    for _ in 0..200 {
        curl(&[&p.url("/v1/after")]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        again = next("/v1/after")(&rx);
        if again.is_some() {
            break;
        }
    }
    assert!(again.is_some(), "records flow after the agent's restart");
    assert!(prometheus(&p, "membrane_l7_records_sent_total ") >= 3);
}
