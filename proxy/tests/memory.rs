//! The heap trim waits for quiet: while a request is in flight no trim runs, however
//! much freed memory is resident; once traffic stops for `--memory-trim-idle`, it runs.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Leaves about 16 MB of freed, resident heap memory that only a trim returns: small
/// blocks (below the mmap threshold) written so their pages are resident, freed under a
/// block that pins the heap's top. Returns the pin.
fn leave_freed_heap() -> Vec<u8> {
    let blocks: Vec<Vec<u8>> = (0..4096).map(|i| vec![(i % 255) as u8 + 1; 4000]).collect();
    let pin = vec![1u8; 4000];
    drop(blocks);
    pin
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_trim_while_a_request_is_in_flight_then_one_when_quiet() {
    let p = start_proxy_with(&[
        "--memory-trim-interval",
        "100ms",
        "--memory-trim-idle",
        "500ms",
    ])
    .await;
    // A request the backend holds for 2.5 s.
    let url = p.url("/v1/slow");
    let slow = tokio::spawn(async move { curl(&["-H", "x-delay-ms: 2500", &url]).await });
    let deadline = Instant::now() + Duration::from_secs(5);
    while stat(&p.running, "http.inbound.downstream_rq_active") != 1 {
        assert!(Instant::now() < deadline, "the slow request never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let trims_before = stat(&p.running, "membrane.heap_trims");
    let pin = leave_freed_heap();
    let free = membrane_proxy::memory::resident_free_bytes();
    assert!(
        free >= 8 * 1024 * 1024,
        "{free} bytes resident but not in use"
    );

    // Twenty check intervals pass with the request in flight: no trim.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(stat(&p.running, "http.inbound.downstream_rq_active"), 1);
    assert_eq!(stat(&p.running, "membrane.heap_trims"), trims_before);

    // The request finishes; after the quiet period the trim runs.
    let (code, headers, _) = slow.await.unwrap();
    assert_eq!(code, 200, "{headers}");
    assert_eq!(stat(&p.running, "http.inbound.downstream_rq_active"), 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while stat(&p.running, "membrane.heap_trims") == trims_before {
        assert!(
            Instant::now() < deadline,
            "no trim after the traffic stopped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        membrane_proxy::memory::resident_free_bytes() < free - 4 * 1024 * 1024,
        "the trim did not return the freed heap"
    );
    drop(pin);
    p.running.drain(Duration::from_secs(1)).await;
}
