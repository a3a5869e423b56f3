//! A raw TCP backend that records every byte the proxy sends it and judges them with a strict
//! HTTP/1.1 parser (written for these tests, independent of the proxy's own guard), plus a raw
//! client that collects the status codes it gets back.
#![allow(dead_code, missing_docs)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as the backend parsed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub body: Vec<u8>,
}

/// What the backend recorded on one upstream connection.
#[derive(Debug, Default, Clone)]
pub struct ConnLog {
    pub bytes: Vec<u8>,
    pub closed: bool,
}

#[derive(Default)]
struct Log {
    conns: Vec<Arc<Mutex<ConnLog>>>,
    requests: Vec<Seen>,
}

/// The recording backend. Each complete, strictly valid request is answered `200 ok`; bytes
/// that do not parse strictly get no answer (and are reported by [`RawBackend::verdict`]).
#[derive(Clone)]
pub struct RawBackend {
    pub addr: SocketAddr,
    log: Arc<Mutex<Log>>,
}

/// Why recorded bytes are not one canonical, unambiguous request sequence.
pub type Problem = String;

impl RawBackend {
    pub async fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let log: Arc<Mutex<Log>> = Default::default();
        let accept_log = log.clone();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let conn: Arc<Mutex<ConnLog>> = Default::default();
                accept_log.lock().unwrap().conns.push(conn.clone());
                tokio::spawn(serve(s, conn, accept_log.clone()));
            }
        });
        RawBackend { addr, log }
    }

    /// Requests parsed so far, in arrival order.
    pub fn requests(&self) -> Vec<Seen> {
        self.log.lock().unwrap().requests.clone()
    }

    /// Every connection's log.
    pub fn conns(&self) -> Vec<ConnLog> {
        self.log
            .lock()
            .unwrap()
            .conns
            .iter()
            .map(|c| c.lock().unwrap().clone())
            .collect()
    }

    /// Total bytes received.
    pub fn bytes(&self) -> usize {
        self.conns().iter().map(|c| c.bytes.len()).sum()
    }

    /// Waits until nothing new arrived for `quiet` (at most `max`).
    pub async fn settle(&self, quiet: Duration, max: Duration) {
        let deadline = tokio::time::Instant::now() + max;
        let mut last = self.bytes();
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(quiet).await;
            let now = self.bytes();
            if now == last {
                return;
            }
            last = now;
        }
    }

    /// Problems with what was recorded: bytes that are not a sequence of complete, strictly
    /// valid, canonically framed requests.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        for c in self.conns() {
            match parse_all(&c.bytes) {
                Ok((_, rest)) if rest.is_empty() => {}
                Ok((_, rest)) => out.push(format!(
                    "incomplete request left on the upstream connection: {:?}",
                    String::from_utf8_lossy(&rest[..rest.len().min(80)])
                )),
                Err(e) => out.push(e),
            }
        }
        out
    }
}

async fn serve(mut s: TcpStream, conn: Arc<Mutex<ConnLog>>, log: Arc<Mutex<Log>>) {
    let mut answered = 0usize;
    let mut buf = [0u8; 8192];
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let bytes = {
            let mut c = conn.lock().unwrap();
            c.bytes.extend_from_slice(&buf[..n]);
            c.bytes.clone()
        };
        let Ok((reqs, _)) = parse_all(&bytes) else {
            continue;
        };
        for r in reqs.into_iter().skip(answered) {
            answered += 1;
            log.lock().unwrap().requests.push(r);
            if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .is_err()
            {
                break;
            }
        }
    }
    conn.lock().unwrap().closed = true;
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses complete requests from `buf`; returns them and the unparsed tail (a partial request),
/// or a description of the first thing that is not strict, canonical HTTP/1.1.
pub fn parse_all(buf: &[u8]) -> Result<(Vec<Seen>, Vec<u8>), Problem> {
    let mut reqs = Vec::new();
    let mut rest = buf;
    loop {
        if rest.is_empty() {
            return Ok((reqs, Vec::new()));
        }
        match parse_one(rest)? {
            Some((r, used)) => {
                reqs.push(r);
                rest = &rest[used..];
            }
            None => return Ok((reqs, rest.to_vec())),
        }
    }
}

fn line(buf: &[u8]) -> Result<Option<(&[u8], usize)>, Problem> {
    for (i, &b) in buf.iter().enumerate() {
        match b {
            b'\n' => {
                if i == 0 || buf[i - 1] != b'\r' {
                    return Err("bare LF".into());
                }
                return Ok(Some((&buf[..i - 1], i + 1)));
            }
            b'\r' if i + 1 < buf.len() && buf[i + 1] != b'\n' => return Err("bare CR".into()),
            0 => return Err("NUL".into()),
            _ => {}
        }
    }
    Ok(None)
}

fn parse_one(buf: &[u8]) -> Result<Option<(Seen, usize)>, Problem> {
    let mut pos = 0;
    let Some((rl, n)) = line(buf)? else {
        return Ok(None);
    };
    pos += n;
    let rl = String::from_utf8(rl.to_vec()).map_err(|_| "request line not ASCII")?;
    let parts: Vec<&str> = rl.split(' ').collect();
    if parts.len() != 3 || parts[2] != "HTTP/1.1" {
        return Err(format!(
            "request line {rl:?} is not METHOD SP target SP HTTP/1.1"
        ));
    }
    if parts[0].is_empty() || !parts[0].bytes().all(is_tchar) {
        return Err(format!("bad method in {rl:?}"));
    }
    if !parts[1].starts_with('/') || parts[1].bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!("bad target in {rl:?}"));
    }
    let (mut cl, mut te, mut hosts) = (None::<u64>, None::<String>, 0);
    loop {
        let Some((l, n)) = line(&buf[pos..])? else {
            return Ok(None);
        };
        pos += n;
        if l.is_empty() {
            break;
        }
        let colon = l.iter().position(|&b| b == b':').ok_or_else(|| {
            format!(
                "header line without colon: {:?}",
                String::from_utf8_lossy(l)
            )
        })?;
        let name = &l[..colon];
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(format!(
                "bad header name {:?}",
                String::from_utf8_lossy(name)
            ));
        }
        let value = &l[colon + 1..];
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(format!(
                "control byte in header {:?}",
                String::from_utf8_lossy(l)
            ));
        }
        let value = String::from_utf8_lossy(value)
            .trim_matches([' ', '\t'])
            .to_owned();
        let lname = String::from_utf8_lossy(name).to_ascii_lowercase();
        let folded = lname.replace('_', "-");
        if folded != lname && (folded == "content-length" || folded == "transfer-encoding") {
            return Err(format!(
                "framing header spelled {lname:?}: ambiguous for CGI-style backends"
            ));
        }
        match lname.as_str() {
            "content-length" => {
                if cl.is_some() {
                    return Err("repeated content-length".into());
                }
                let canonical = value.parse::<u64>().ok().filter(|n| n.to_string() == value);
                cl = Some(
                    canonical.ok_or_else(|| format!("content-length {value:?} not canonical"))?,
                );
            }
            "transfer-encoding" => {
                if te.is_some() {
                    return Err("repeated transfer-encoding".into());
                }
                te = Some(value);
            }
            "host" => hosts += 1,
            _ => {}
        }
    }
    if hosts != 1 {
        return Err(format!("{hosts} Host headers"));
    }
    let body = match (cl, te) {
        (Some(_), Some(_)) => return Err("content-length and transfer-encoding".into()),
        (None, Some(te)) if !te.eq_ignore_ascii_case("chunked") => {
            return Err(format!("transfer-encoding {te:?}"))
        }
        (None, Some(_)) => {
            let mut body = Vec::new();
            loop {
                let Some((l, n)) = line(&buf[pos..])? else {
                    return Ok(None);
                };
                pos += n;
                let size = std::str::from_utf8(l)
                    .ok()
                    .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()))
                    .and_then(|s| usize::from_str_radix(s, 16).ok())
                    .ok_or_else(|| format!("chunk size line {:?}", String::from_utf8_lossy(l)))?;
                if size == 0 {
                    // Trailers: strict field lines, then the empty line.
                    loop {
                        let Some((l, n)) = line(&buf[pos..])? else {
                            return Ok(None);
                        };
                        pos += n;
                        if l.is_empty() {
                            break;
                        }
                        let colon = l.iter().position(|&b| b == b':').unwrap_or(0);
                        if colon == 0 || !l[..colon].iter().all(|&b| is_tchar(b)) {
                            return Err(format!("trailer line {:?}", String::from_utf8_lossy(l)));
                        }
                    }
                    break;
                }
                if buf.len() < pos + size + 2 {
                    return Ok(None);
                }
                body.extend_from_slice(&buf[pos..pos + size]);
                if &buf[pos + size..pos + size + 2] != b"\r\n" {
                    return Err("chunk data not followed by CRLF".into());
                }
                pos += size + 2;
            }
            body
        }
        (cl, None) => {
            let n = cl.unwrap_or(0) as usize;
            if buf.len() < pos + n {
                return Ok(None);
            }
            let b = buf[pos..pos + n].to_vec();
            pos += n;
            b
        }
    };
    Ok(Some((
        Seen {
            method: parts[0].to_owned(),
            target: parts[1].to_owned(),
            body,
        },
        pos,
    )))
}

/// Sends `bytes` on a fresh connection to `addr` and collects the status codes of the
/// responses until the proxy closes, `want` statuses arrived and nothing more came for a
/// moment, or `max` passes.
pub async fn statuses(addr: SocketAddr, bytes: &[u8], want: usize, max: Duration) -> Vec<u16> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + max;
    let mut buf = [0u8; 4096];
    loop {
        let got = count_statuses(&out);
        let wait = if got.len() >= want {
            Duration::from_millis(200)
        } else {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        };
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    count_statuses(&out)
}

fn count_statuses(out: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(out);
    // Interim 1xx answers (100 Continue) are not final responses.
    text.match_indices("HTTP/1.")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .filter(|s: &u16| *s >= 200)
        .collect()
}
