use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// A real socket that counts the writes made on it (each one a system call).
struct Counting {
    io: TcpStream,
    writes: Arc<AtomicUsize>,
}

impl AsyncRead for Counting {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counting {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(_))) {
            self.writes.fetch_add(1, Ordering::SeqCst);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(_))) {
            self.writes.fetch_add(1, Ordering::SeqCst);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A connected pair on loopback: (the counted side, its peer, the write count).
async fn socket_pair() -> (Counting, TcpStream, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (a, b) = tokio::join!(TcpStream::connect(l.local_addr().unwrap()), l.accept());
    let writes = Arc::new(AtomicUsize::new(0));
    let counted = Counting {
        io: a.unwrap(),
        writes: writes.clone(),
    };
    (counted, b.unwrap().0, writes)
}

#[tokio::test]
async fn the_writes_and_flushes_of_one_poll_leave_in_one_write_in_order() {
    let (io, mut peer, writes) = socket_pair().await;
    let mut io = Coalesced::new(io);
    // What h2 does for a gRPC response in one poll: the head, a DATA frame kept aside and
    // written vectored, a flush to make room, the trailers, the final flush.
    scope(std::future::poll_fn(|cx| {
        let mut w = Pin::new(&mut io);
        assert!(matches!(
            w.as_mut().poll_write(cx, b"head|"),
            Poll::Ready(Ok(5))
        ));
        let slices = [io::IoSlice::new(b"data-"), io::IoSlice::new(b"payload|")];
        assert!(matches!(
            w.as_mut().poll_write_vectored(cx, &slices),
            Poll::Ready(Ok(13))
        ));
        assert!(w.as_mut().poll_flush(cx).is_ready());
        assert!(matches!(
            w.as_mut().poll_write(cx, b"trailers"),
            Poll::Ready(Ok(8))
        ));
        assert!(w.as_mut().poll_flush(cx).is_ready());
        assert_eq!(
            writes.load(Ordering::SeqCst),
            0,
            "wrote before the poll ended"
        );
        Poll::Ready(())
    }))
    .await;
    assert_eq!(writes.load(Ordering::SeqCst), 1);
    let mut got = vec![0; 26];
    peer.read_exact(&mut got).await.unwrap();
    assert_eq!(got, b"head|data-payload|trailers");
}

#[tokio::test]
async fn a_peer_that_does_not_read_stops_the_writer_and_then_gets_every_byte() {
    let (io, mut peer, _) = socket_pair().await;
    let mut io = Coalesced::new(io);
    // More than loopback's socket buffers can take (a few MiB each way).
    let mut data = (0..=250u8)
        .collect::<Vec<_>>()
        .repeat(64 * 1024 * 1024 / 251);
    data.truncate(64 * 1024 * 1024);
    let mut sent = 0;
    // Nobody reads: the writer must stop (buffer bounded by LIMIT plus the socket's
    // buffers), not take all 64 MiB into memory.
    let stalled = tokio::time::timeout(
        Duration::from_millis(500),
        scope(io.write_all_counting(&data, &mut sent)),
    )
    .await;
    assert!(stalled.is_err(), "64 MiB taken with nobody reading");
    assert!(sent < data.len());
    let buffered = io.0.lock().unwrap().buf.len();
    assert!(buffered <= LIMIT, "{buffered} bytes buffered");
    // Once the peer reads, the rest goes and arrives in order.
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        got
    });
    scope(async {
        io.write_all(&data[sent..]).await.unwrap();
        io.shutdown().await.unwrap();
    })
    .await;
    let got = reader.await.unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "the bytes arrived changed");
}

impl Coalesced<Counting> {
    /// `write_all`, keeping count of the bytes accepted so far (it may be cancelled).
    async fn write_all_counting(&mut self, data: &[u8], sent: &mut usize) {
        while *sent < data.len() {
            let n = self.write(&data[*sent..]).await.unwrap();
            *sent += n;
        }
    }
}

#[tokio::test]
async fn shutdown_writes_out_what_is_buffered_first() {
    let (io, mut peer, writes) = socket_pair().await;
    let mut io = Coalesced::new(io);
    scope(async {
        io.write_all(b"last words").await.unwrap();
        io.flush().await.unwrap();
        assert_eq!(
            writes.load(Ordering::SeqCst),
            0,
            "wrote before the poll ended"
        );
        io.shutdown().await.unwrap();
    })
    .await;
    let mut got = Vec::new();
    peer.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"last words");
}

#[tokio::test]
async fn outside_a_scope_writes_go_through() {
    let (io, mut peer, writes) = socket_pair().await;
    let mut io = Coalesced::new(io);
    io.write_all(b"handshake").await.unwrap();
    assert_eq!(writes.load(Ordering::SeqCst), 1);
    let mut got = [0; 9];
    peer.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"handshake");
}

#[tokio::test]
async fn a_failed_write_fails_every_later_one() {
    let (io, peer, _) = socket_pair().await;
    let mut io = Coalesced::new(io);
    io.write_all(b"never read").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Closed with unread data: the peer's kernel resets the connection.
    drop(peer);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut failed = None;
    for _ in 0..100 {
        let r = scope(async { io.write_all(&[0; 4096]).await.and(io.flush().await) }).await;
        if let Err(e) = r {
            failed = Some(e);
            break;
        }
        // The next write learns of a failure in the last drain.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let e = failed.expect("writes to a reset connection kept succeeding");
    let again = io.write(b"x").await.unwrap_err();
    assert_eq!(again.kind(), e.kind());
}

/// A real h2 server over the coalescing writer, answering as a gRPC server does (HEADERS,
/// a DATA frame above h2's 256-byte vectored threshold, trailers), and a real h2 client.
#[tokio::test]
async fn an_h2_response_with_trailers_leaves_in_one_write() {
    let (io, peer, writes) = socket_pair().await;
    let before = Arc::new(AtomicUsize::new(usize::MAX));
    let server = {
        let (writes, before) = (writes.clone(), before.clone());
        tokio::spawn(async move {
            let mut conn = scope(h2::server::handshake(Coalesced::new(io)))
                .await
                .unwrap();
            let (_req, mut respond) = scope(conn.accept()).await.unwrap().unwrap();
            before.store(writes.load(Ordering::SeqCst), Ordering::SeqCst);
            // All three in one go, as hyper's stream task does when the upstream answered.
            let resp = http::Response::builder().status(200).body(()).unwrap();
            let mut send = respond.send_response(resp, false).unwrap();
            send.send_data(Bytes::from(vec![b'm'; 1029]), false)
                .unwrap();
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            send.send_trailers(trailers).unwrap();
            let _ = scope(std::future::poll_fn(|cx| conn.poll_closed(cx))).await;
        })
    };
    let (client, conn) = h2::client::handshake(peer).await.unwrap();
    let driver = tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = http::Request::post("http://test/bench.Echo/Unary")
        .body(())
        .unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    let mut body = resp.await.unwrap().into_body();
    let mut got = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
        got.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.unwrap().unwrap();
    drop(body);
    assert_eq!(got, vec![b'm'; 1029]);
    assert_eq!(trailers["grpc-status"], "0");
    let response_writes = writes.load(Ordering::SeqCst) - before.load(Ordering::SeqCst);
    assert_eq!(
        response_writes, 1,
        "HEADERS, DATA and trailers took {response_writes} writes"
    );
    drop(client);
    driver.await.unwrap().unwrap();
    server.await.unwrap();
}

/// Flow control is unchanged: a 1 MiB response to a client with a 16 KiB window arrives
/// whole while the client releases capacity as it reads.
#[tokio::test]
async fn h2_flow_control_with_a_small_window_delivers_a_large_body() {
    let (io, peer, _) = socket_pair().await;
    let body: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let server = {
        let body = Bytes::from(body.clone());
        tokio::spawn(async move {
            let mut conn = scope(h2::server::handshake(Coalesced::new(io)))
                .await
                .unwrap();
            let (_req, mut respond) = scope(conn.accept()).await.unwrap().unwrap();
            let resp = http::Response::builder().status(200).body(()).unwrap();
            let mut send = respond.send_response(resp, false).unwrap();
            let sender = tokio::spawn(async move {
                let mut rest = body;
                while !rest.is_empty() {
                    send.reserve_capacity(rest.len());
                    let n = std::future::poll_fn(|cx| send.poll_capacity(cx))
                        .await
                        .unwrap()
                        .unwrap();
                    if n == 0 {
                        continue;
                    }
                    let chunk = rest.split_to(n.min(rest.len()));
                    send.send_data(chunk, rest.is_empty()).unwrap();
                }
            });
            let _ = scope(std::future::poll_fn(|cx| conn.poll_closed(cx))).await;
            sender.await.unwrap();
        })
    };
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(16 * 1024)
        .initial_connection_window_size(16 * 1024)
        .handshake::<_, Bytes>(peer)
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = http::Request::get("http://test/large").body(()).unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    let mut recv = resp.await.unwrap().into_body();
    let mut got = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.unwrap();
        recv.flow_control().release_capacity(chunk.len()).unwrap();
        got.extend_from_slice(&chunk);
        // A slow reader: the server must wait for the window, not run ahead.
        tokio::task::yield_now().await;
    }
    drop(recv);
    assert_eq!(got.len(), body.len());
    assert!(got == body, "the body arrived changed");
    drop(client);
    driver.await.unwrap().unwrap();
    server.await.unwrap();
}

/// The upstream case: a real h2 client whose connection task runs on [`Exec`] and a
/// request whose body goes from another task once the new stream has capacity (as hyper's
/// body pipe does). The stream gets capacity only after the connection task sent its
/// HEADERS, so without the one-poll deferral HEADERS and DATA left in two writes.
#[tokio::test]
async fn an_h2_request_and_its_body_leave_in_one_write_on_exec() {
    let (io, peer, writes) = socket_pair().await;
    // A real h2 server that answers every request with 200 once its body is read.
    let server = tokio::spawn(async move {
        let mut conn = h2::server::handshake(peer).await.unwrap();
        while let Some(r) = conn.accept().await {
            let (req, mut respond) = r.unwrap();
            tokio::spawn(async move {
                let mut body = req.into_body();
                let mut n = 0;
                while let Some(chunk) = body.data().await {
                    let chunk = chunk.unwrap();
                    body.flow_control().release_capacity(chunk.len()).unwrap();
                    n += chunk.len();
                }
                assert_eq!(n, 1029);
                let resp = http::Response::builder().status(200).body(()).unwrap();
                respond.send_response(resp, true).unwrap();
            });
        }
    });
    // The handshake runs outside any scope (its writes go through), as hyper-util dials.
    let (client, conn) = h2::client::handshake(Coalesced::new(io)).await.unwrap();
    hyper::rt::Executor::execute(&Exec, async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.unwrap();
    let request = |client: &mut h2::client::SendRequest<Bytes>| {
        let req = http::Request::post("http://test/bench.Echo/Unary")
            .body(())
            .unwrap();
        let (resp, mut send) = client.send_request(req, false).unwrap();
        // The body's own task, as hyper's pipe.
        tokio::spawn(async move {
            send.reserve_capacity(1029);
            let n = std::future::poll_fn(|cx| send.poll_capacity(cx))
                .await
                .unwrap()
                .unwrap();
            assert!(n >= 1029, "capacity {n}");
            send.send_data(Bytes::from(vec![b'r'; 1029]), true).unwrap();
        });
        resp
    };
    // The first exchange settles the connection (SETTINGS and their ACKs).
    let resp = request(&mut client).await.unwrap();
    assert_eq!(resp.status(), 200);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = writes.load(Ordering::SeqCst);
    let resp = request(&mut client).await.unwrap();
    assert_eq!(resp.status(), 200);
    let request_writes = writes.load(Ordering::SeqCst) - before;
    assert_eq!(
        request_writes, 1,
        "HEADERS and DATA took {request_writes} writes"
    );
    drop(resp);
    drop(client);
    server.abort();
}

#[test]
fn a_request_head_without_end_stream_is_told_from_other_frames() {
    let frame = |len: usize, kind: u8, flags: u8| {
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            flags,
            0,
            0,
            0,
            1,
        ];
        f.resize(9 + len, b'x');
        f
    };
    let headers_open = frame(29, 0x1, 0x4);
    let headers_closed = frame(29, 0x1, 0x5);
    let settings_ack = frame(0, 0x4, 0x1);
    let data = frame(1029, 0x0, 0x1);
    let (data_head, data_payload) = data.split_at(9);
    let both = [settings_ack.clone(), headers_open.clone()].concat();
    // (what, the write's slices, what open_head says)
    type Case<'a> = (&'a str, Vec<&'a [u8]>, Option<bool>);
    let cases: [Case; 6] = [
        (
            "request head, body to follow",
            vec![&headers_open],
            Some(true),
        ),
        (
            "request head ending its stream (GET)",
            vec![&headers_closed],
            Some(false),
        ),
        ("SETTINGS ACK then a request head", vec![&both], Some(true)),
        (
            "a DATA frame as h2 writes it, head and payload",
            vec![data_head, data_payload],
            Some(false),
        ),
        (
            "the client preface",
            vec![b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"],
            None,
        ),
        ("a frame cut short", vec![&headers_open[..20]], None),
    ];
    for (what, chunks, want) in cases {
        assert_eq!(open_head(&chunks), want, "{what}");
    }
}

/// Bytes the socket had no room for go once it has, even when the connection writes
/// nothing more (it waits for an answer that needs them).
#[tokio::test]
async fn what_the_socket_had_no_room_for_goes_when_it_has_even_if_nothing_more_is_written() {
    let (io, mut peer, _) = socket_pair().await;
    let mut data = (0..=250u8)
        .collect::<Vec<_>>()
        .repeat(64 * 1024 * 1024 / 251);
    data.truncate(64 * 1024 * 1024);
    let sent = Arc::new(AtomicUsize::new(0));
    let stuck = Arc::new(tokio::sync::Notify::new());
    let writer = {
        let (data, sent, stuck) = (data.clone(), sent.clone(), stuck.clone());
        tokio::spawn(scope(async move {
            let mut io = Coalesced::new(io);
            // Up to LIMIT at a time, until the socket is full and a write waits.
            while sent.load(Ordering::SeqCst) < data.len() {
                let from = sent.load(Ordering::SeqCst);
                let to = (from + LIMIT).min(data.len());
                let write = io.write(&data[from..to]);
                match tokio::time::timeout(Duration::from_millis(200), write).await {
                    Ok(n) => sent.fetch_add(n.unwrap(), Ordering::SeqCst),
                    Err(_) => break,
                };
                io.flush().await.unwrap();
            }
            // A write waited (the buffer is at LIMIT): now it only waits, as a connection
            // waiting for its peer's answer.
            stuck.notify_one();
            std::future::pending::<()>().await;
        }))
    };
    stuck.notified().await;
    let accepted = sent.load(Ordering::SeqCst);
    assert!(accepted < data.len(), "64 MiB taken with nobody reading");
    let mut got = vec![0; accepted];
    tokio::time::timeout(Duration::from_secs(10), peer.read_exact(&mut got))
        .await
        .expect("bytes stayed in the buffer once the socket had room")
        .unwrap();
    assert!(got == data[..accepted], "the bytes arrived changed");
    writer.abort();
}
