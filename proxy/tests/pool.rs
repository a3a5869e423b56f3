//! The upstream connection pool over real sockets: idle connections beyond
//! `--upstream-max-idle` are closed, the ones kept are reused, HTTP/1.1 requests share one
//! pool whatever their Host, HTTP/2 requests share one connection per authority, and
//! `--upstream-h2-max-connections` bounds those connections across authorities.

mod common;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{config, stat};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Barrier;

/// Connections the backend accepted and saw closed, the requests that arrived, and which
/// connections carried each authority's requests.
#[derive(Default)]
struct Counts {
    accepted: AtomicUsize,
    closed: AtomicUsize,
    requests: AtomicUsize,
    carriers: Mutex<HashMap<String, HashSet<usize>>>,
}

impl Counts {
    /// The connections (numbered in accept order) that carried requests for `authority`.
    fn carriers(&self, authority: &str) -> HashSet<usize> {
        let carriers = self.carriers.lock().unwrap();
        carriers.get(authority).cloned().unwrap_or_default()
    }
    /// Waits (bounded) until `n` requests have arrived (answered or held).
    async fn wait_requests(&self, n: usize) -> usize {
        for _ in 0..500 {
            if self.requests.load(Ordering::SeqCst) >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.requests.load(Ordering::SeqCst)
    }
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
    fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }
    /// Waits (bounded) until `n` connections have closed; returns how many had.
    async fn wait_closed(&self, n: usize) -> usize {
        for _ in 0..500 {
            if self.closed() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.closed()
    }
}

/// A backend (HTTP/1.1 and h2c) that counts its connections. `GET /v1/hold` answers only
/// once `barrier` has as many requests waiting as it has parties, so that many upstream
/// connections are busy at the same time; other paths answer at once.
async fn counting_backend(barrier: Arc<Barrier>) -> (SocketAddr, Arc<Counts>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let conn = c.accepted.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let counts = c.clone();
                let svc = service_fn(move |req: Request<Incoming>| {
                    let barrier = barrier.clone();
                    let authority = req
                        .uri()
                        .authority()
                        .map(|a| a.to_string())
                        .or_else(|| {
                            let host = req.headers().get(http::header::HOST)?;
                            host.to_str().ok().map(str::to_owned)
                        })
                        .unwrap_or_default();
                    if let Ok(mut carriers) = counts.carriers.lock() {
                        carriers.entry(authority).or_default().insert(conn);
                    }
                    counts.requests.fetch_add(1, Ordering::SeqCst);
                    async move {
                        if req.uri().path() == "/v1/hold" {
                            barrier.wait().await;
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = b.serve_connection(TokioIo::new(s), svc).await;
                c.closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, counts)
}

async fn start(backend: SocketAddr, extra: &[&str]) -> membrane_proxy::Running {
    let cfg = config(backend, extra);
    let enforcer = membrane_proxy::policy::load(&cfg).expect("test policy loads");
    membrane_proxy::start(&cfg, enforcer, None).await.unwrap()
}

/// One HTTP/1.1 request on a fresh downstream connection; returns the status.
async fn get_h1(proxy: SocketAddr, path: &str, host: &str) -> u16 {
    let s = TcpStream::connect(proxy).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    resp.into_body().collect().await.unwrap();
    status
}

/// `n` concurrent `GET /v1/hold` requests, each on its own downstream connection.
async fn hold_wave(proxy: SocketAddr, n: usize) {
    let reqs: Vec<_> = (0..n)
        .map(|_| tokio::spawn(get_h1(proxy, "/v1/hold", "app.test")))
        .collect();
    for r in reqs {
        assert_eq!(r.await.unwrap(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_beyond_the_cap_are_closed_and_the_rest_reused() {
    let barrier = Arc::new(Barrier::new(5));
    let (backend, counts) = counting_backend(barrier).await;
    let p = start(backend, &["--upstream-max-idle", "2"]).await;

    // Five requests in flight together need five upstream connections; when they become
    // idle only two may stay.
    hold_wave(p.addrs.listen, 5).await;
    assert_eq!(counts.accepted(), 5);
    assert_eq!(
        counts.wait_closed(3).await,
        3,
        "idle connections beyond the cap"
    );

    // The two kept are reused: sequential requests dial nothing new, and nothing more closes.
    for _ in 0..4 {
        assert_eq!(get_h1(p.addrs.listen, "/v1/x", "app.test").await, 200);
    }
    assert_eq!(counts.accepted(), 5, "kept connections were not reused");
    assert_eq!(counts.closed(), 3);
    p.drain(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_idle_cap_closes_every_upstream_connection() {
    let (backend, counts) = counting_backend(Arc::new(Barrier::new(1))).await;
    let p = start(backend, &["--upstream-max-idle", "0"]).await;
    for n in 1..=3 {
        assert_eq!(get_h1(p.addrs.listen, "/v1/x", "app.test").await, 200);
        assert_eq!(
            counts.accepted(),
            n,
            "a connection was reused despite cap 0"
        );
        assert_eq!(counts.wait_closed(n).await, n);
    }
    p.drain(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_requests_share_one_pool_whatever_their_host() {
    let (backend, counts) = counting_backend(Arc::new(Barrier::new(1))).await;
    let p = start(backend, &["--upstream-max-idle", "1"]).await;
    // Each distinct Host would be its own pool key (and its own idle connections) if the
    // pool were keyed by the client's authority.
    for i in 0..6 {
        let host = format!("tenant{i}.test");
        assert_eq!(get_h1(p.addrs.listen, "/v1/x", &host).await, 200);
    }
    assert_eq!(counts.accepted(), 1);
    p.drain(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_requests_share_one_upstream_connection_per_authority() {
    let (backend, counts) = counting_backend(Arc::new(Barrier::new(1))).await;
    let p = start(backend, &["--upstream-protocol", "match"]).await;
    let s = TcpStream::connect(p.addrs.listen).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let reqs: Vec<_> = (0..20)
        .map(|i| {
            let mut send = send.clone();
            tokio::spawn(async move {
                let authority = if i % 2 == 0 { "a.test" } else { "b.test" };
                let req = Request::get(format!("http://{authority}/v1/x"))
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let resp = send.send_request(req).await.unwrap();
                let status = resp.status().as_u16();
                resp.into_body().collect().await.unwrap();
                status
            })
        })
        .collect();
    for r in reqs {
        assert_eq!(r.await.unwrap(), 200);
    }
    // Every request of an authority rode one connection, and the two differ.
    let (a, b) = (counts.carriers("a.test"), counts.carriers("b.test"));
    assert_eq!(
        (a.len(), b.len()),
        (1, 1),
        "one upstream HTTP/2 connection per authority: a.test on {a:?}, b.test on {b:?}"
    );
    assert!(a.is_disjoint(&b), "a.test on {a:?}, b.test on {b:?}");
    // hyper-util's pool may dial one more in a narrow race (a request's checkout waits just
    // before the first connection lands, its connect starts just after); that connection
    // carries nothing and is closed as soon as it is up, so it is no second connection in use.
    let spare = counts.accepted() - 2;
    assert_eq!(
        counts.wait_closed(spare).await,
        spare,
        "a spare connection stayed open"
    );
    p.drain(Duration::from_secs(1)).await;
}

/// An h2c client connection to the proxy.
async fn h2_downstream(proxy: SocketAddr) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let s = TcpStream::connect(proxy).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

/// `GET http://{authority}{path}` over `send`; the status and the response headers.
async fn h2_get(
    send: &hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    authority: &str,
    path: &str,
) -> (u16, http::HeaderMap) {
    let mut send = send.clone();
    let req = Request::get(format!("http://{authority}{path}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    resp.into_body().collect().await.unwrap();
    (status, headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_connections_across_authorities_are_bounded_least_recently_used_idle_first() {
    let (backend, counts) = counting_backend(Arc::new(Barrier::new(1))).await;
    let p = start(backend, &["--upstream-h2-max-connections", "2"]).await;
    let send = h2_downstream(p.addrs.listen).await;
    for authority in ["a.test", "b.test"] {
        assert_eq!(h2_get(&send, authority, "/v1/x").await.0, 200);
    }
    assert_eq!((counts.accepted(), counts.closed()), (2, 0));
    // A third authority: the least recently used idle connection (a) makes room.
    assert_eq!(h2_get(&send, "c.test", "/v1/x").await.0, 200);
    assert_eq!(counts.accepted(), 3);
    assert_eq!(counts.wait_closed(1).await, 1);
    assert_eq!(stat(&p, "membrane.upstream_h2_evictions"), 1);
    // b is reused (no new connection) and becomes the most recently used ...
    assert_eq!(h2_get(&send, "b.test", "/v1/x").await.0, 200);
    assert_eq!(counts.accepted(), 3);
    // ... so a, back again, takes c's place, not b's.
    assert_eq!(h2_get(&send, "a.test", "/v1/x").await.0, 200);
    assert_eq!(counts.accepted(), 4);
    assert_eq!(counts.wait_closed(2).await, 2);
    assert_eq!(h2_get(&send, "b.test", "/v1/x").await.0, 200);
    assert_eq!(counts.accepted(), 4, "b's connection was kept");
    // Cycling through many authorities never holds more than the bound.
    for i in 0..20 {
        assert_eq!(h2_get(&send, &format!("t{i}.test"), "/v1/x").await.0, 200);
        assert_eq!(stat(&p, "membrane.upstream_h2_connections"), 2);
    }
    assert_eq!(counts.accepted(), 24);
    // The evicted ones are closed at the backend too.
    assert_eq!(counts.wait_closed(22).await, 22);
    assert_eq!(stat(&p, "cluster.inbound.upstream_cx_overflow"), 0);
    p.drain(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_h2_connection_busy_a_request_waits_then_gets_503() {
    // `/v1/hold` answers once two are waiting: a held request keeps its connection busy.
    let (backend, counts) = counting_backend(Arc::new(Barrier::new(2))).await;
    let p = start(
        backend,
        &[
            "--upstream-h2-max-connections",
            "1",
            "--connect-timeout",
            "1s",
        ],
    )
    .await;
    let send = h2_downstream(p.addrs.listen).await;

    // a is busy; a request for c waits for the slot and gets it once a is done.
    let s = send.clone();
    let held = tokio::spawn(async move { h2_get(&s, "a.test", "/v1/hold").await.0 });
    assert_eq!(counts.wait_requests(1).await, 1, "a's hold never arrived");
    let s = send.clone();
    let waiting = tokio::spawn(async move { h2_get(&s, "c.test", "/v1/x").await.0 });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "c did not wait for the busy slot");
    assert_eq!(counts.accepted(), 1);
    // A second hold on a (same connection, multiplexed) releases both.
    assert_eq!(h2_get(&send, "a.test", "/v1/hold").await.0, 200);
    assert_eq!(held.await.unwrap(), 200);
    assert_eq!(waiting.await.unwrap(), 200);
    assert_eq!(counts.accepted(), 2);
    assert_eq!(counts.wait_closed(1).await, 1, "a's connection made room");

    // c is busy now and stays so past the wait: e is refused as Envoy refuses an
    // overflowing circuit breaker.
    let s = send.clone();
    let held = tokio::spawn(async move { h2_get(&s, "c.test", "/v1/hold").await.0 });
    assert_eq!(counts.wait_requests(4).await, 4, "c's hold never arrived");
    let started = std::time::Instant::now();
    let (status, headers) = h2_get(&send, "e.test", "/v1/x").await;
    assert_eq!(status, 503);
    assert_eq!(
        headers.get("x-envoy-overloaded").map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(stat(&p, "cluster.inbound.upstream_cx_overflow"), 1);
    assert_eq!(counts.accepted(), 2, "no connection beyond the bound");
    assert_eq!(h2_get(&send, "c.test", "/v1/hold").await.0, 200);
    assert_eq!(held.await.unwrap(), 200);
    p.drain(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn zero_h2_connection_bound_is_refused_by_name() {
    let cfg = config(
        "127.0.0.1:9".parse().unwrap(),
        &["--upstream-h2-max-connections", "0"],
    );
    let enforcer = membrane_proxy::policy::load(&cfg).expect("test policy loads");
    let err = match membrane_proxy::start(&cfg, enforcer, None).await {
        Ok(_) => panic!("a zero connection bound was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("--upstream-h2-max-connections"), "{err}");
}

#[tokio::test]
async fn zero_upstream_idle_timeout_is_refused_by_name() {
    let cfg = config(
        "127.0.0.1:9".parse().unwrap(),
        &["--upstream-idle-timeout", "0s"],
    );
    let enforcer = membrane_proxy::policy::load(&cfg).expect("test policy loads");
    let err = match membrane_proxy::start(&cfg, enforcer, None).await {
        Ok(_) => panic!("a zero upstream idle timeout was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("--upstream-idle-timeout"), "{err}");
}
