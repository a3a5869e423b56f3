use super::*;
use tokio::io::AsyncReadExt;

#[test]
fn heads() {
    let ok = validate_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!(
        ok,
        Framing {
            body: Body::Fixed(0),
            upgrade: false
        }
    );
    let ok = validate_head(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n").unwrap();
    assert_eq!(ok.body, Body::Fixed(5));
    let ok = validate_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n").unwrap();
    assert_eq!(ok.body, Body::Chunked);
    let ok = validate_head(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n")
        .unwrap();
    assert!(ok.upgrade);
    let bad: &[(&[u8], Violation)] = &[
        (b"GET / HTTP/1.1\nHost: a\r\n\r\n", Violation::BareLf),
        (b"GET / HTTP/1.1\r\nHost: a\n\n", Violation::BareLf),
        (b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", Violation::BareCr),
        (b"GET / HTTP/1.1\r\nHost: a\0\r\n\r\n", Violation::Nul),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\n b\r\n\r\n",
            Violation::ObsFold,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            Violation::ClAndTe,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n",
            Violation::ClAndTe,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            Violation::DuplicateCl,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\n",
            Violation::DuplicateCl,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
            Violation::InvalidCl,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: \r\n\r\n",
            Violation::InvalidCl,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            Violation::BadTe,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            Violation::BadTe,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            Violation::BadTe,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            Violation::BadTe,
        ),
        (
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            Violation::Http10Te,
        ),
        (
            b"POST / HTTP/1.1\r\nContent_Length: 5\r\n\r\n",
            Violation::AmbiguousName,
        ),
        (
            b"POST / HTTP/1.1\r\ntransfer_encoding: chunked\r\n\r\n",
            Violation::AmbiguousName,
        ),
    ];
    for (head, want) in bad {
        assert_eq!(
            validate_head(head),
            Err(*want),
            "{}",
            String::from_utf8_lossy(head)
        );
    }
}

/// Yields its input one byte per read, so every byte is a separate read for the guard.
struct OneByte<'a>(&'a [u8]);
impl AsyncRead for OneByte<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some((&b, rest)) = self.0.split_first() {
            buf.put_slice(&[b]);
            self.0 = rest;
        }
        Poll::Ready(Ok(()))
    }
}

async fn through(input: &[u8], byte_at_a_time: bool) -> (Vec<u8>, Option<io::ErrorKind>) {
    let mut out = Vec::new();
    let err = if byte_at_a_time {
        let mut g = H1Guard::new(OneByte(input), Bytes::new(), 8192);
        g.read_to_end(&mut out).await.err().map(|e| e.kind())
    } else {
        let mut g = H1Guard::new(input, Bytes::new(), 8192);
        g.read_to_end(&mut out).await.err().map(|e| e.kind())
    };
    (out, err)
}

#[tokio::test]
async fn passes_valid_pipelines_unchanged() {
    let input: &[u8] = b"\r\nPOST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\n\r\n\
POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: v\r\n\r\nGET /d HTTP/1.1\r\n\r\n";
    for slow in [false, true] {
        let (out, err) = through(input, slow).await;
        assert_eq!(err, None);
        assert_eq!(out, input);
    }
}

#[tokio::test]
async fn replaces_a_bad_head_and_stops() {
    let input: &[u8] =
        b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\nX: y\r\n\r\nGET /c HTTP/1.1\r\n\r\n";
    let (out, err) = through(input, false).await;
    assert_eq!(err, None);
    let mut want = b"GET /a HTTP/1.1\r\n\r\n".to_vec();
    want.extend_from_slice(REJECT);
    assert_eq!(out, want);
}

#[tokio::test]
async fn bad_chunk_is_refused_before_its_head_or_is_a_read_error() {
    for body in [
        &b"zz\r\n"[..],
        b"3\r\nabcX",
        b"\r\n",
        b"3\nabc\r\n",
        b"0\r\n x\r\n\r\n",
        b"0_2e\r\n\r\n",
        b"5 \r\nhello\r\n0\r\n\r\n",
        b"5;a\x01\r\nhello\r\n0\r\n\r\n",
        b"5\rXhello\r\n0\r\n\r\n",
        b"0 x\r\n\r\n",
        b"0\r\nXT\r\n\r\n",
        b"0\r\nContent-Length: 5\r\n\r\n",
        b"0\r\nX: a\x01\r\n\r\n",
    ] {
        let mut input = b"GET /a HTTP/1.1\r\n\r\n".to_vec();
        input.extend_from_slice(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        input.extend_from_slice(body);
        let what = String::from_utf8_lossy(body);
        // In one read: the bad request's head is withdrawn; the request before it stays.
        let (out, err) = through(&input, false).await;
        assert_eq!(err, None, "{what}");
        let mut want = b"GET /a HTTP/1.1\r\n\r\n".to_vec();
        want.extend_from_slice(REJECT);
        assert_eq!(out, want, "{what}");
        // Byte by byte the head is already hyper's: a read error ends the body.
        let (_, err) = through(&input, true).await;
        assert_eq!(err, Some(io::ErrorKind::InvalidData), "{what}");
    }
}

#[tokio::test]
async fn valid_chunk_extensions_and_trailers_pass() {
    let input: &[u8] = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
5 ;a=\"b c\"\r\nhello\r\n0;z\r\nX-T: v\r\nY: w\r\n\r\n";
    for slow in [false, true] {
        let (out, err) = through(input, slow).await;
        assert_eq!((out.as_slice(), err), (input, None));
    }
}

/// Drives a guard over `input` (one read) with `watch`, returning what hyper would read
/// before the guard blocks or ends.
fn drain_ready(g: &mut H1Guard<&[u8]>) -> (Vec<u8>, bool) {
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    let mut out = Vec::new();
    loop {
        let mut b = [0u8; 256];
        let mut rb = ReadBuf::new(&mut b);
        match Pin::new(&mut *g).poll_read(&mut cx, &mut rb) {
            Poll::Ready(Ok(())) if rb.filled().is_empty() => return (out, true),
            Poll::Ready(Ok(())) => out.extend_from_slice(rb.filled()),
            Poll::Ready(Err(_)) => return (out, true),
            Poll::Pending => return (out, false),
        }
    }
}

#[test]
fn upgrade_request_holds_the_rest_until_the_verdict() {
    let first: &[u8] = b"GET / HTTP/1.1\r\nUpgrade: x\r\n\r\n";
    let second: &[u8] =
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let input = [first, second].concat();
    // Refused (no 101): the bytes after it are checked, and this one is rejected.
    let watch = Arc::new(ConnWatch::default());
    let mut g = H1Guard::new(&input[..], Bytes::new(), 8192).with_watch(watch.clone());
    let (out, done) = drain_ready(&mut g);
    assert_eq!((out.as_slice(), done), (first, false));
    watch.upgrade_decided(false);
    let (out, _) = drain_ready(&mut g);
    assert_eq!(out, REJECT);
    assert_eq!(g.violation(), Some(Violation::ClAndTe));
    // Upgraded (101 sent): the same bytes are the tunnel's, unchecked.
    let watch = Arc::new(ConnWatch::default());
    let mut g = H1Guard::new(&input[..], Bytes::new(), 8192).with_watch(watch.clone());
    let (out, _) = drain_ready(&mut g);
    assert_eq!(out, first);
    watch.upgrade_decided(true);
    let (out, _) = drain_ready(&mut g);
    assert_eq!(out, second);
}
