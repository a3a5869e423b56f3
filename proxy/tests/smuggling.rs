//! Request smuggling: a corpus of HTTP/1 framing mutations (CL/TE variants, whitespace and
//! case tricks, obs-fold, duplicate headers, chunk extensions, invalid chunk sizes, bare CR
//! and LF, trailers, HTTP/1.0 keep-alive, pipelining, upgrades) sent through the proxy to a
//! raw backend that records the bytes it gets. Each case is either refused with 400 before
//! any byte of it reaches the backend, or forwarded in one canonical, unambiguous form with
//! its meaning (method, target, body) unchanged.

mod common;
mod rawhttp;

use std::time::Duration;

use rawhttp::{statuses, RawBackend, Seen};

const H: &str = "Host: a\r\n";
const POST: &str = "POST /v1/request-landing HTTP/1.1\r\n";
const GET: &str = "GET /v1/x HTTP/1.1\r\n";

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    /// Requests the backend must see, in order: (method, target, body).
    forwarded: Vec<(&'static str, &'static str, &'static [u8])>,
    /// Statuses the client must get, in order.
    statuses: Vec<u16>,
}

fn post_chunked(body: &str) -> Vec<u8> {
    format!("{POST}{H}Transfer-Encoding: chunked\r\n\r\n{body}").into_bytes()
}

fn refused(name: &'static str, bytes: impl Into<Vec<u8>>) -> Case {
    Case {
        name,
        bytes: bytes.into(),
        forwarded: vec![],
        statuses: vec![400],
    }
}

fn posted(name: &'static str, bytes: impl Into<Vec<u8>>, body: &'static [u8]) -> Case {
    Case {
        name,
        bytes: bytes.into(),
        forwarded: vec![("POST", "/v1/request-landing", body)],
        statuses: vec![200],
    }
}

fn case(
    name: &'static str,
    bytes: impl Into<Vec<u8>>,
    forwarded: Vec<(&'static str, &'static str, &'static [u8])>,
    statuses: Vec<u16>,
) -> Case {
    Case {
        name,
        bytes: bytes.into(),
        forwarded,
        statuses,
    }
}

fn corpus() -> Vec<Case> {
    let get_ok = ("GET", "/v1/x", &b""[..]);
    vec![
        // Content-Length and Transfer-Encoding together, and TE obfuscations.
        refused("CL.TE", format!("{POST}{H}Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG")),
        refused("TE.CL", format!("{POST}{H}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\nGPOST / HTTP/1.1\r\n\r\n0\r\n\r\n")),
        refused("TE twice", format!("{POST}{H}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")),
        refused("TE chunked, chunked", format!("{POST}{H}Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n")),
        refused("TE identity, chunked", format!("{POST}{H}Transfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n")),
        refused("TE gzip, chunked", format!("{POST}{H}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n")),
        refused("TE chunked, identity", format!("{POST}{H}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n")),
        refused("TE xchunked", format!("{POST}{H}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n")),
        refused("TE chunked;param", format!("{POST}{H}Transfer-Encoding: chunked;q=1\r\n\r\n0\r\n\r\n")),
        refused("TE empty", format!("{POST}{H}Transfer-Encoding: \r\n\r\n")),
        refused("TE leading comma", format!("{POST}{H}Transfer-Encoding: , chunked\r\n\r\n0\r\n\r\n")),
        refused("TE quoted", format!("{POST}{H}Transfer-Encoding: \"chunked\"\r\n\r\n0\r\n\r\n")),
        refused("TE space before colon", format!("{POST}{H}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n")),
        refused("TE vertical tab", format!("{POST}{H}Transfer-Encoding: chunked\x0b\r\n\r\n0\r\n\r\n")),
        refused("TE form feed", format!("{POST}{H}Transfer-Encoding:\x0cchunked\r\n\r\n0\r\n\r\n")),
        refused("TE NUL", format!("{POST}{H}Transfer-Encoding: chunked\0\r\n\r\n0\r\n\r\n")),
        refused("TE obs-fold", format!("{POST}{H}Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n")),
        refused("TE then junk TE", format!("{POST}{H}Transfer-Encoding: chunked\r\nTransfer-encoding: x\r\n\r\n0\r\n\r\n")),
        refused("TE underscore + CL", format!("{POST}{H}Transfer_Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n")),
        refused("TE in HTTP/1.0", format!("POST /v1/request-landing HTTP/1.0\r\n{H}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")),
        refused("TE in HTTP/1.0 with CL", format!("POST /v1/request-landing HTTP/1.0\r\n{H}Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")),
        posted("TE tab before value", format!("{POST}{H}Transfer-Encoding:\tchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), b"hello"),
        posted("TE upper case", format!("{POST}{H}TRANSFER-ENCODING: CHUNKED\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), b"hello"),
        // Content-Length variants.
        refused("CL twice, same", format!("{POST}{H}Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello")),
        refused("CL twice, differing", format!("{POST}{H}Content-Length: 5\r\ncontent-length: 6\r\n\r\nhello!")),
        refused("CL list", format!("{POST}{H}Content-Length: 5, 5\r\n\r\nhello")),
        refused("CL plus sign", format!("{POST}{H}Content-Length: +5\r\n\r\nhello")),
        refused("CL negative", format!("{POST}{H}Content-Length: -5\r\n\r\nhello")),
        refused("CL hex", format!("{POST}{H}Content-Length: 0x5\r\n\r\nhello")),
        refused("CL inner space", format!("{POST}{H}Content-Length: 5 5\r\n\r\nhello")),
        refused("CL empty", format!("{POST}{H}Content-Length: \r\n\r\nhello")),
        refused("CL overflow", format!("{POST}{H}Content-Length: 99999999999999999999\r\n\r\nhello")),
        refused("CL underscore", format!("{POST}{H}Content_Length: 5\r\n\r\nhello")),
        refused("CL obs-fold", format!("{POST}{H}Content-Length:\r\n 5\r\n\r\nhello")),
        refused("CL space before colon", format!("{POST}{H}Content-Length : 5\r\n\r\nhello")),
        posted("CL leading zeros", format!("{POST}{H}Content-Length: 005\r\n\r\nhello"), b"hello"),
        posted("CL 010", format!("{POST}{H}Content-Length: 010\r\n\r\nhellohello"), b"hellohello"),
        posted("CL trailing space", format!("{POST}{H}Content-Length: 5 \r\n\r\nhello"), b"hello"),
        posted("CL tab", format!("{POST}{H}Content-Length:\t5\r\n\r\nhello"), b"hello"),
        case("CL on GET", format!("{GET}{H}Content-Length: 5\r\n\r\nhello"), vec![("GET", "/v1/x", b"hello")], vec![200]),
        case("CL shorter than body", format!("{POST}{H}Content-Length: 3\r\n\r\nhelloGET /v1/x HTTP/1.1\r\n{H}\r\n"), vec![("POST", "/v1/request-landing", b"hel")], vec![200, 403]),
        // Request line and header syntax.
        case("lower-case method", format!("get /v1/x HTTP/1.1\r\n{H}\r\n"), vec![], vec![403]),
        refused("double space in request line", format!("GET  /v1/x HTTP/1.1\r\n{H}\r\n")),
        refused("tab in request line", format!("GET\t/v1/x HTTP/1.1\r\n{H}\r\n")),
        refused("lower-case version", format!("GET /v1/x http/1.1\r\n{H}\r\n")),
        refused("HTTP/1.2", format!("GET /v1/x HTTP/1.2\r\n{H}\r\n")),
        refused("space in header name", format!("{GET}{H}X Y: 1\r\n\r\n")),
        refused("header without colon", format!("{GET}{H}XY\r\n\r\n")),
        refused("empty header name", format!("{GET}{H}: x\r\n\r\n")),
        refused("bare CR in value", format!("{GET}{H}X: a\rb\r\n\r\n")),
        refused("bare LF request", "GET /v1/x HTTP/1.1\nHost: a\n\n"),
        refused("bare LF between headers", format!("{GET}{H}X: 1\nY: 2\r\n\r\n")),
        refused("CR CR LF", format!("{GET}{H}X: 1\r\r\n\r\n")),
        refused("bare LF before request", format!("\n{GET}{H}\r\n")),
        refused("NUL in header", format!("{GET}{H}X: a\0b\r\n\r\n")),
        refused("DEL in header name", format!("{GET}{H}X\x7fY: 1\r\n\r\n")),
        refused("obs-fold", format!("{GET}{H}X: a\r\n b\r\n\r\n")),
        refused("obs-fold with tab", format!("{GET}{H}X: a\r\n\tb\r\n\r\n")),
        refused("two Host headers", format!("{GET}Host: a\r\nHost: b\r\n\r\n")),
        refused("no Host on HTTP/1.1", format!("{GET}\r\n")),
        refused("two Host headers on HTTP/1.0", "GET /v1/x HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"),
        case("CRLF before request", format!("\r\n{GET}{H}\r\n"), vec![get_ok], vec![200]),
        case("obs-text in value", b"GET /v1/x HTTP/1.1\r\nHost: a\r\nX: caf\xe9\r\n\r\n".to_vec(), vec![get_ok], vec![200]),
        case("absolute-form target", format!("GET http://b/v1/x HTTP/1.1\r\n{H}\r\n"), vec![get_ok], vec![200]),
        case("HTTP/1.0 without Host", "GET /v1/x HTTP/1.0\r\n\r\n", vec![get_ok], vec![200]),
        // Chunked bodies: sizes, extensions, terminators, trailers.
        posted("chunked", post_chunked("5\r\nhello\r\n0\r\n\r\n"), b"hello"),
        posted("two chunks", post_chunked("2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n"), b"hello"),
        posted("chunk extension", post_chunked("5;a=b\r\nhello\r\n0\r\n\r\n"), b"hello"),
        posted("chunk extension quoted", post_chunked("5;a=\"b c\"\r\nhello\r\n0;z\r\n\r\n"), b"hello"),
        posted("chunk size leading zeros", post_chunked("005\r\nhello\r\n0\r\n\r\n"), b"hello"),
        posted("chunk size upper-case hex", post_chunked("A\r\nhellohello\r\n0\r\n\r\n"), b"hellohello"),
        posted("trailer", post_chunked("5\r\nhello\r\n0\r\nX-T: v\r\n\r\n"), b"hello"),
        refused("chunk ext bare LF", post_chunked("5;a\nhello\r\n0\r\n\r\n")),
        refused("chunk ext bare CR", post_chunked("5;a\rb\r\nhello\r\n0\r\n\r\n")),
        refused("chunk ext control byte", post_chunked("5;a\x01\r\nhello\r\n0\r\n\r\n")),
        refused("chunk size trailing space", post_chunked("5 \r\nhello\r\n0\r\n\r\n")),
        refused("chunk size 0_2e", post_chunked("0_2e\r\n\r\n")),
        refused("chunk size empty", post_chunked("\r\nhello\r\n0\r\n\r\n")),
        refused("chunk size plus", post_chunked("+5\r\nhello\r\n0\r\n\r\n")),
        refused("chunk size 0x", post_chunked("0x5\r\nhello\r\n0\r\n\r\n")),
        refused("chunk size overflow", post_chunked("fffffffffffffffff1\r\nx\r\n0\r\n\r\n")),
        refused("chunk size bare LF", post_chunked("5\nhello\r\n0\r\n\r\n")),
        refused("chunk size CR then byte", post_chunked("5\rXhello\r\n0\r\n\r\n")),
        refused("chunk data too long", post_chunked("3\r\nhello\r\n0\r\n\r\n")),
        refused("chunk data CR then byte", post_chunked("5\r\nhello\rX0\r\n\r\n")),
        refused("chunk data bare LF", post_chunked("5\r\nhello\n0\r\n\r\n")),
        refused("last chunk then junk", post_chunked("0 x\r\n\r\n")),
        refused("trailer without colon", post_chunked("0\r\nXT\r\n\r\n")),
        refused("trailer obs-fold", post_chunked("0\r\nX-T: a\r\n b\r\n\r\n")),
        refused("trailer Content-Length", post_chunked("0\r\nContent-Length: 5\r\n\r\n")),
        refused("trailer Transfer-Encoding", post_chunked("0\r\nTransfer-Encoding: chunked\r\n\r\n")),
        refused("trailer bare LF", post_chunked("0\r\nX-T: v\n\r\n")),
        refused("last chunk bare LF", post_chunked("0\n\n")),
        // Requests hidden in bodies, pipelining, keep-alive, upgrades.
        case(
            "request after last chunk",
            post_chunked(&format!("0\r\n\r\nGET /admin HTTP/1.1\r\n{H}\r\n")),
            vec![("POST", "/v1/request-landing", b"")],
            vec![200, 403],
        ),
        case("pipelined GETs", format!("{GET}{H}\r\nGET /v1/y HTTP/1.1\r\n{H}\r\n"), vec![get_ok, ("GET", "/v1/y", b"")], vec![200, 200]),
        case(
            "pipelined POST then GET",
            format!("{POST}{H}Content-Length: 5\r\n\r\nhello{GET}{H}\r\n"),
            vec![("POST", "/v1/request-landing", b"hello"), get_ok],
            vec![200, 200],
        ),
        case(
            "pipelined chunked then GET",
            [post_chunked("5\r\nhello\r\n0\r\n\r\n"), format!("{GET}{H}\r\n").into_bytes()].concat(),
            vec![("POST", "/v1/request-landing", b"hello"), get_ok],
            vec![200, 200],
        ),
        case(
            "valid GET then CL.TE",
            format!("{GET}{H}\r\n{POST}{H}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            vec![get_ok],
            vec![200, 400],
        ),
        case(
            "valid GET then bad chunk",
            [format!("{GET}{H}\r\n").into_bytes(), post_chunked("0_2e\r\n\r\n")].concat(),
            vec![get_ok],
            vec![200, 400],
        ),
        case(
            "HTTP/1.0 keep-alive",
            "GET /v1/x HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /v1/y HTTP/1.0\r\n\r\n",
            vec![get_ok, ("GET", "/v1/y", b"")],
            vec![200, 200],
        ),
        case(
            "HTTP/1.0 closes after the response",
            "GET /v1/x HTTP/1.0\r\n\r\nGET /v1/y HTTP/1.0\r\n\r\n",
            vec![get_ok],
            vec![200],
        ),
        case(
            "Expect: 100-continue",
            format!("{POST}{H}Expect: 100-continue\r\nContent-Length: 5\r\n\r\nhello"),
            vec![("POST", "/v1/request-landing", b"hello")],
            vec![200],
        ),
        case("TE on GET", format!("{GET}{H}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), vec![("GET", "/v1/x", b"hello")], vec![200]),
        case(
            "upgrade without 101, then CL.TE",
            format!("{GET}{H}Connection: upgrade\r\nUpgrade: x\r\n\r\n{POST}{H}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            vec![get_ok],
            vec![200, 400],
        ),
        case(
            "Upgrade header alone, then CL.TE",
            format!("{GET}{H}Upgrade: websocket\r\n\r\n{POST}{H}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            vec![get_ok],
            vec![200, 400],
        ),
        case(
            "CONNECT refused, then CL.TE",
            format!("CONNECT a:80 HTTP/1.1\r\nHost: a:80\r\n\r\n{POST}{H}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            vec![],
            vec![405, 400],
        ),
    ]
}

/// One case against its own proxy and backend: what went wrong, if anything.
async fn run(c: &Case) -> (Vec<String>, bool) {
    let backend = RawBackend::start().await;
    let cfg = common::config(backend.addr, &["--header-read-timeout", "2s"]);
    let running = membrane_proxy::start(&cfg, membrane_proxy::policy::load(&cfg).unwrap(), None)
        .await
        .unwrap();
    let got = statuses(
        running.addrs.listen,
        &c.bytes,
        c.statuses.len(),
        Duration::from_secs(4),
    )
    .await;
    backend
        .settle(Duration::from_millis(150), Duration::from_secs(2))
        .await;
    let mut wrong = Vec::new();
    if got != c.statuses {
        wrong.push(format!("statuses {got:?}, want {:?}", c.statuses));
    }
    // Reached the backend in an invalid or ambiguous form, or with another meaning.
    let mut bad_upstream = backend.problems();
    let want: Vec<Seen> = c
        .forwarded
        .iter()
        .map(|(m, t, b)| Seen {
            method: (*m).into(),
            target: (*t).into(),
            body: b.to_vec(),
        })
        .collect();
    let seen = backend.requests();
    if seen != want {
        bad_upstream.push(format!("backend saw {seen:?}, want {want:?}"));
    }
    let bad = !bad_upstream.is_empty();
    wrong.extend(bad_upstream);
    (wrong, bad)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_corpus_is_refused_or_forwarded_canonically() {
    let cases = corpus();
    assert!(cases.len() >= 74, "corpus has {} cases", cases.len());
    let mut set = tokio::task::JoinSet::new();
    for (i, c) in cases.into_iter().enumerate() {
        set.spawn(async move {
            let r = run(&c).await;
            (i, c.name, r)
        });
    }
    let mut results = Vec::new();
    while let Some(r) = set.join_next().await {
        results.push(r.unwrap());
    }
    results.sort_by_key(|r| r.0);
    let total = results.len();
    let bad_upstream = results.iter().filter(|r| r.2 .1).count();
    let failures: Vec<String> = results
        .iter()
        .filter(|r| !r.2 .0.is_empty())
        .map(|(_, name, (w, _))| format!("{name}: {}", w.join("; ")))
        .collect();
    eprintln!(
        "{bad_upstream} of {total} cases reached the backend in an invalid, ambiguous or altered form; {} cases failed",
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Item 7 on its own: a request with `Upgrade:` that gets no 101 must not switch the guard
/// off for the rest of the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_stays_on_after_an_upgrade_request_without_101() {
    let c = case(
        "upgrade then smuggle",
        "GET /v1/x HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n\
POST /v1/request-landing HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n\
0\r\n\r\nGET /v1/smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        vec![("GET", "/v1/x", b"")],
        vec![200, 400],
    );
    let (wrong, _) = run(&c).await;
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
