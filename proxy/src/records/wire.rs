//! The reporter's pending buffer: each entry copied field by field (length-prefixed), so
//! the request path formats nothing, and read back by the reporter thread into monitor
//! events.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use membrane_api::monitor::{self, Event, L7, TYPE_L7};

/// The longest path, host, rule, peer id and method kept (longer ones are cut at a
/// character boundary): a record stays far below the agent's line limit.
const CAPS: [usize; 5] = [64, 4096, 512, 1024, 512];
/// Bytes of an entry besides its strings.
const FIXED: usize = 4 + 8 + 1 + 1 + 2 + 4 + 4 + 2 * 19 + 5 * 2;

const INGRESS: u8 = 1;
const ALLOWED: u8 = 2;
const BY_RULE: u8 = 4;
const HAS_HOST: u8 = 8;
const HAS_PEER: u8 = 16;

/// One request's outcome, borrowed from the request's record.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// The inbound listener (else outbound).
    pub ingress: bool,
    /// The HTTP version: 0 = HTTP/1.0, 1 = HTTP/1.1, 2 = HTTP/2.
    pub http: u8,
    /// Forwarded (else denied or rejected).
    pub allowed: bool,
    /// `decided_by` names the policy rule that decided (else it says why none did).
    pub by_rule: bool,
    /// The status sent (0: none).
    pub status: u16,
    /// The client.
    pub src: SocketAddr,
    /// The destination.
    pub dst: SocketAddr,
    /// Identities (source, destination).
    pub identities: (u32, u32),
    /// The method.
    pub method: &'a str,
    /// The path the policy saw.
    pub path: &'a str,
    /// `:authority` or Host.
    pub host: Option<&'a str>,
    /// The deciding rule, or why.
    pub decided_by: &'a str,
    /// The verified mesh peer's SPIFFE id.
    pub peer_spiffe_id: Option<&'a str>,
}

fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn put_addr(buf: &mut Vec<u8>, a: SocketAddr) {
    let (family, ip) = match a.ip() {
        IpAddr::V4(v4) => (4u8, v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => (6u8, v6),
    };
    buf.push(family);
    buf.extend_from_slice(&ip.octets());
    buf.extend_from_slice(&a.port().to_le_bytes());
}

impl Entry<'_> {
    fn strings(&self) -> [&str; 5] {
        [
            self.method,
            self.path,
            self.host.unwrap_or(""),
            self.decided_by,
            self.peer_spiffe_id.unwrap_or(""),
        ]
    }

    /// The most bytes [`Entry::encode`] appends.
    pub fn max_len(&self) -> usize {
        FIXED
            + self
                .strings()
                .iter()
                .zip(CAPS)
                .map(|(s, c)| s.len().min(c))
                .sum::<usize>()
    }

    /// Appends the entry, made at `at`, to `buf`.
    pub fn encode(&self, buf: &mut Vec<u8>, at: SystemTime) {
        let start = buf.len();
        buf.extend_from_slice(&[0; 4]); // the length, set below
        let nanos = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
        buf.extend_from_slice(&nanos.to_le_bytes());
        let flags = [
            (self.ingress, INGRESS),
            (self.allowed, ALLOWED),
            (self.by_rule, BY_RULE),
            (self.host.is_some(), HAS_HOST),
            (self.peer_spiffe_id.is_some(), HAS_PEER),
        ]
        .iter()
        .fold(0u8, |f, (on, bit)| if *on { f | bit } else { f });
        buf.push(flags);
        buf.push(self.http);
        buf.extend_from_slice(&self.status.to_le_bytes());
        buf.extend_from_slice(&self.identities.0.to_le_bytes());
        buf.extend_from_slice(&self.identities.1.to_le_bytes());
        put_addr(buf, self.src);
        put_addr(buf, self.dst);
        for (s, c) in self.strings().iter().zip(CAPS) {
            let s = cut(s, c);
            buf.extend_from_slice(&(s.len() as u16).to_le_bytes());
            buf.extend_from_slice(s.as_bytes());
        }
        let len = (buf.len() - start) as u32;
        buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }
}

/// Reads what [`Entry::encode`] wrote.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
    fn u8(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(pad::<2>(self.take(2)))
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(pad::<4>(self.take(4)))
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(pad::<8>(self.take(8)))
    }
    fn addr(&mut self) -> SocketAddr {
        let family = self.u8();
        let ip = Ipv6Addr::from(pad::<16>(self.take(16)));
        let port = self.u16();
        let ip = match (family, ip.to_ipv4_mapped()) {
            (4, Some(v4)) => IpAddr::V4(v4),
            _ => IpAddr::V6(ip),
        };
        SocketAddr::new(ip, port)
    }
    fn str(&mut self) -> String {
        let n = self.u16() as usize;
        String::from_utf8_lossy(self.take(n)).into_owned()
    }
}

fn pad<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut out = [0; N];
    out[..b.len()].copy_from_slice(b);
    out
}

/// One encoded entry as the monitor event the agent is sent.
fn event(entry: &[u8]) -> Event {
    let mut r = Reader(entry);
    let at = UNIX_EPOCH + Duration::from_nanos(r.u64());
    let flags = r.u8();
    let protocol = match r.u8() {
        0 => "HTTP/1.0",
        2 => "HTTP/2",
        _ => "HTTP/1.1",
    };
    let status = r.u16();
    let (src_identity, dst_identity) = (r.u32(), r.u32());
    let (src, dst) = (r.addr(), r.addr());
    let [method, path, host, decided_by, peer] = [r.str(), r.str(), r.str(), r.str(), r.str()];
    let on = |bit: u8| flags & bit != 0;
    let verdict = if on(ALLOWED) { "allowed" } else { "denied" };
    let (reason, rule) = match on(BY_RULE) {
        true => (format!("policy-{verdict}"), Some(decided_by)),
        false => (decided_by, None),
    };
    Event {
        time: monitor::rfc3339(at),
        kind: TYPE_L7.to_owned(),
        program: "sidecar".to_owned(),
        proto: 6,
        verdict: Some(verdict.to_owned()),
        reason,
        src_identity,
        dst_identity,
        src: Some(src.to_string()),
        dst: Some(dst.to_string()),
        count: 1,
        l7: Some(L7 {
            direction: if on(INGRESS) { "ingress" } else { "egress" }.to_owned(),
            protocol: protocol.to_owned(),
            method,
            path,
            host: on(HAS_HOST).then_some(host),
            status,
            rule,
            peer_spiffe_id: on(HAS_PEER).then_some(peer),
        }),
        ..Event::default()
    }
}

/// Appends every entry of `buf` to `out` as a JSON line; the number of entries.
pub(super) fn to_json_lines(mut buf: &[u8], out: &mut Vec<u8>) -> u64 {
    let mut n = 0;
    while buf.len() >= 4 {
        let len = (u32::from_le_bytes(pad::<4>(&buf[..4])) as usize).clamp(4, buf.len());
        let ev = event(&buf[4..len]);
        buf = &buf[len..];
        if serde_json::to_writer(&mut *out, &ev).is_ok() {
            out.push(b'\n');
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_come_back_as_the_events_they_describe() {
        let long = "/a".repeat(3000);
        let denied = Entry {
            ingress: true,
            http: 1,
            allowed: false,
            by_rule: true,
            status: 403,
            src: "10.0.0.2:40000".parse().unwrap(),
            dst: "[fd00::10]:80".parse().unwrap(),
            identities: (7, 9),
            method: "PUT",
            path: &long,
            host: Some("deathstar"),
            decided_by: "default/rule1 spec.ingress[0]",
            peer_spiffe_id: Some("spiffe://cluster.local/ns/default/sa/tiefighter"),
        };
        let allowed = Entry {
            ingress: false,
            http: 2,
            allowed: true,
            by_rule: false,
            host: None,
            peer_spiffe_id: None,
            decided_by: "no policy selects this endpoint",
            ..denied
        };
        let at = UNIX_EPOCH + Duration::from_nanos(1_800_000_000_123_456_789);
        let mut buf = Vec::new();
        denied.encode(&mut buf, at);
        assert!(buf.len() <= denied.max_len());
        allowed.encode(&mut buf, at);
        let mut out = Vec::new();
        assert_eq!(to_json_lines(&buf, &mut out), 2);
        let lines: Vec<Event> = out
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        let (d, a) = (&lines[0], &lines[1]);
        assert_eq!(d.time, monitor::rfc3339(at));
        assert_eq!(d.verdict.as_deref(), Some("denied"));
        assert_eq!(d.reason, "policy-denied");
        assert_eq!((d.src_identity, d.dst_identity), (7, 9));
        assert_eq!(d.dst.as_deref(), Some("[fd00::10]:80"));
        let l7 = d.l7.as_ref().unwrap();
        assert_eq!(
            (
                l7.direction.as_str(),
                l7.protocol.as_str(),
                l7.method.as_str(),
                l7.status
            ),
            ("ingress", "HTTP/1.1", "PUT", 403)
        );
        assert_eq!(l7.path.len(), 4096, "cut to the cap");
        assert_eq!(l7.rule.as_deref(), Some("default/rule1 spec.ingress[0]"));
        assert_eq!(
            l7.peer_spiffe_id.as_deref(),
            Some("spiffe://cluster.local/ns/default/sa/tiefighter")
        );
        assert_eq!(a.verdict.as_deref(), Some("allowed"));
        assert_eq!(a.reason, "no policy selects this endpoint");
        let l7 = a.l7.as_ref().unwrap();
        assert_eq!(
            (l7.direction.as_str(), l7.protocol.as_str()),
            ("egress", "HTTP/2")
        );
        assert_eq!((l7.rule.as_ref(), l7.host.as_ref()), (None, None));
        assert_eq!(a.src.as_deref(), Some("10.0.0.2:40000"));
    }
}
