//! A hostile xDS client against the real `membrane-xds`: many streams with
//! fresh node ids, NACKs carrying megabytes of `error_detail` and requests
//! for type URLs nobody serves. The process's memory must stay bounded, the
//! unknown types must be refused by name, and what the flight recorder
//! kept must be cut.

mod common;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::google::rpc::Status;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use common::*;

const NPHDS: &str = "type.googleapis.com/cilium.NetworkPolicyHosts";
/// Streams opened, one after another per worker, each with a fresh node id.
const STREAMS: usize = 10_000;
/// Every this many streams, the NACK carries `BIG` bytes; the others `SMALL`.
const BIG_EVERY: usize = 10;
/// gRPC's default 4 MiB message limit, less room for the other fields.
const BIG: usize = (4 << 20) - 1024;
const SMALL: usize = 16 << 10;
const WORKERS: usize = 8;
/// RSS allowed after the run. The recorder's share at the default limits
/// is about 10,000 records × ~3 KiB (a 1 KiB cut NACK kept twice, the
/// record, the event history) ≈ 30 MiB; the rest is the process itself
/// (~20 MiB) and what the allocator keeps of the 4 MiB request buffers.
const RSS_BOUND_MIB: u64 = 192;
/// Past this during the run the test stops at once: the unbounded
/// recorder would otherwise take the machine's memory.
const RSS_ABORT_MIB: u64 = 1024;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// A small deterministic generator: the type URLs only need to differ.
fn next_rand(state: &AtomicU64) -> u64 {
    let mut x = state.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// One hostile stream: subscribe, NACK the response with `detail`, ask for
/// `bogus`, hang up. Returns the stream's final gRPC status, if any.
async fn hostile_stream(
    ch: Channel,
    node: String,
    detail: String,
    bogus: String,
) -> Option<tonic::Status> {
    let mut client = AggregatedDiscoveryServiceClient::new(ch);
    let (tx, rx) = mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: node,
            ..Default::default()
        }),
        type_url: NPHDS.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut inbound = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("stream opened")
        .into_inner();
    let first = inbound
        .message()
        .await
        .expect("a response")
        .expect("stream open");
    tx.send(DiscoveryRequest {
        type_url: NPHDS.into(),
        response_nonce: first.nonce.clone(),
        error_detail: Some(Status {
            code: 3,
            message: detail,
            details: vec![],
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    tx.send(DiscoveryRequest {
        type_url: bogus,
        ..Default::default()
    })
    .await
    .unwrap();
    drop(tx);
    loop {
        match inbound.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => return None,
            Err(s) => return Some(s),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_hostile_streams_leave_memory_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("cluster.yaml"), starwars::pods(8080)).unwrap();
    // Errors only: 10,000 streams of info lines would drown the output.
    let xds = start_xds_env(tmp.path(), &[], &[], "error");
    let (pid, grpc, debug) = (xds.proc.0.id(), xds.grpc(), xds.debug());
    let base = rss_kib(pid);
    let url = format!("http://{grpc}");
    let channels: Vec<Channel> = {
        let mut v = Vec::new();
        for _ in 0..2 {
            v.push(
                Channel::from_shared(url.clone())
                    .unwrap()
                    .connect()
                    .await
                    .unwrap(),
            );
        }
        v
    };
    let big = "N".repeat(BIG);
    let small = "n".repeat(SMALL);
    let next = Arc::new(AtomicUsize::new(0));
    let refused_by_name = Arc::new(AtomicUsize::new(0));
    let rand = Arc::new(AtomicU64::new(0x5eed));
    let peak = Arc::new(AtomicU64::new(base));
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (ch, next, refused, rand, peak) = (
            channels[w % channels.len()].clone(),
            next.clone(),
            refused_by_name.clone(),
            rand.clone(),
            peak.clone(),
        );
        let (big, small) = (big.clone(), small.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= STREAMS {
                    return;
                }
                let r = next_rand(&rand);
                let node = format!("hostile-{i}-{r:016x}");
                let bogus = format!("type.googleapis.com/hostile.T{r:016x}{}", "z".repeat(100));
                let detail = if i % BIG_EVERY == 0 { &big } else { &small };
                let status = tokio::time::timeout(
                    Duration::from_secs(20),
                    hostile_stream(ch.clone(), node, detail.clone(), bogus.clone()),
                )
                .await
                .unwrap_or_else(|_| panic!("stream {i} hung"));
                if let Some(s) = status {
                    if s.code() == tonic::Code::InvalidArgument
                        && s.message().contains(&bogus[..60])
                    {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if i % 100 == 0 {
                    let now = rss_kib(pid);
                    peak.fetch_max(now, Ordering::Relaxed);
                    assert!(
                        now < RSS_ABORT_MIB << 10,
                        "after {i} streams membrane-xds holds {} MiB (started at {} MiB): stopping",
                        now >> 10,
                        base >> 10
                    );
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let took = started.elapsed();
    // Stream tasks finish closing after their clients go: wait (bounded) for the memory to
    // come back rather than for a moment.
    let settle = Instant::now() + Duration::from_secs(5);
    let mut after = rss_kib(pid);
    while after >= RSS_BOUND_MIB << 10 && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = rss_kib(pid);
    }
    eprintln!(
        "{STREAMS} streams ({} NACKs of {BIG} bytes, the rest {SMALL}) in {took:?}: \
         RSS {} MiB before, peak {} MiB, {} MiB after",
        STREAMS / BIG_EVERY,
        base >> 10,
        peak.load(Ordering::Relaxed) >> 10,
        after >> 10
    );
    assert!(
        after < RSS_BOUND_MIB << 10,
        "RSS after the run is {} MiB, over the {RSS_BOUND_MIB} MiB bound",
        after >> 10
    );

    // Every bogus type was refused, by name, and counted.
    assert_eq!(refused_by_name.load(Ordering::Relaxed), STREAMS);
    let metrics = debug_get(debug, "/metrics").await;
    assert!(
        metrics.contains(&format!(
            "membrane_xds_refused_requests_total{{reason=\"unknown_type\"}} {STREAMS}"
        )),
        "{metrics}"
    );
    // What the recorder kept of a 4 MiB NACK: the start, and how much was cut.
    let flight = debug_json(debug, "/debug/flightz").await;
    let records = flight.as_array().unwrap();
    assert_eq!(records.len(), STREAMS, "within the default cap, all kept");
    let rec = records
        .iter()
        .find(|r| r["node_id"].as_str().unwrap().starts_with("hostile-0-"))
        .expect("stream 0's record");
    assert_eq!(rec["types"].as_object().unwrap().len(), 1, "{rec}");
    let err = rec["types"][NPHDS]["last_nack"]["error"].as_str().unwrap();
    assert!(
        err.len() < 2048 && err.ends_with(&format!("... [{} more bytes cut]", BIG - 1024)),
        "{}",
        &err[err.len().saturating_sub(200)..]
    );
}
