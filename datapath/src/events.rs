//! Monitor events: the `mb_events` ring buffer decoded into [`Event`]s, the
//! records the agent streams to `membrane monitor` as JSON lines.
//!
//! The kernel stamps records with `CLOCK_MONOTONIC`; [`EventReader`] turns
//! that into wall-clock time (RFC 3339, UTC) when it reads them.

use std::{
    io,
    net::SocketAddr,
    os::fd::AsFd,
    time::{Duration, SystemTime},
};

use aya::maps::{MapData, RingBuf};
use serde::{Deserialize, Serialize};

use crate::abi::{self, MbEvent};

/// `type` of a record that reports events a subscriber missed.
pub const TYPE_LOST: &str = "lost";

/// One monitor event as the agent streams it (one JSON object per line).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Event {
    /// The node (agent) that saw it.
    pub node: String,
    /// When, RFC 3339 UTC with nanoseconds.
    pub time: String,
    /// `policy-verdict`, `capture`, `trace`, `drop` (a packet the packet path
    /// dropped), or `lost` (a subscriber fell behind; `count` events were skipped).
    #[serde(rename = "type")]
    pub kind: String,
    /// Emitting program: `connect4`, `connect6`, `sockops`, `sk_msg`, `sk_lookup`,
    /// or a packet-path observation point: `from-container`, `to-container`,
    /// `from-overlay`, `from-netdev`, `to-netdev`.
    pub program: String,
    /// IP protocol number of the flow; 0 when the emitter did not know.
    #[serde(skip_serializing_if = "is_zero")]
    pub proto: u8,
    /// Policy verdicts: `allowed` or `denied`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// Why (see `MB_RSN_*` in `membrane_abi.h`): `policy-denied`,
    /// `no-decision`, `outbound`, `inbound`, `spliced`, `no-peer`, ...
    pub reason: String,
    /// Source identity (0 = unknown).
    pub src_identity: u32,
    /// Destination identity (0 = unknown).
    pub dst_identity: u32,
    /// Source address, when the socket had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    /// The destination asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
    /// Capture: where the connection went instead (the proxy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Policy revision in force.
    pub revision: u32,
    /// Socket cookie (0 = unknown): ties events of one connection together.
    pub cookie: u64,
    /// Occurrences this record stands for (rate-limited records, `lost`).
    pub count: u64,
}

fn is_zero(v: &u8) -> bool {
    *v == 0
}

impl Event {
    /// True for a verdict that refused a connection or a dropped packet:
    /// what `--type drop` shows.
    pub fn is_drop(&self) -> bool {
        (self.kind == "policy-verdict" && self.verdict.as_deref() == Some("denied"))
            || self.kind == "drop"
    }

    /// A `lost` record: `n` events were skipped; `reason` says where
    /// (`slow-subscriber`: this stream fell behind; `ring-buffer-full`: the
    /// kernel had no room, every subscriber missed them).
    pub fn lost(node: &str, n: u64, reason: &str) -> Self {
        Self {
            node: node.to_owned(),
            time: humantime::format_rfc3339_nanos(SystemTime::now()).to_string(),
            kind: TYPE_LOST.to_owned(),
            reason: reason.to_owned(),
            count: n,
            ..Self::default()
        }
    }

    /// Decode a kernel record seen on `node`; `wall` turns its monotonic
    /// timestamp into wall-clock time.
    pub fn from_abi(e: &MbEvent, node: &str, wall: impl Fn(u64) -> SystemTime) -> Self {
        let kind = match e.r#type {
            abi::EVT_POLICY_VERDICT => "policy-verdict",
            abi::EVT_CAPTURE => "capture",
            abi::EVT_TRACE => "trace",
            abi::EVT_DROP => "drop",
            _ => "unknown",
        };
        let program = match u32::from(e.prog) {
            abi::PROG_SOCKOPS => "sockops",
            abi::PROG_SK_MSG => "sk_msg",
            abi::PROG_CONNECT4 => "connect4",
            abi::PROG_CONNECT6 => "connect6",
            abi::PROG_GETSOCKOPT => "getsockopt",
            abi::PROG_SK_LOOKUP => "sk_lookup",
            _ => match e.prog {
                abi::PROG_FROM_CONTAINER => "from-container",
                abi::PROG_TO_CONTAINER => "to-container",
                abi::PROG_FROM_OVERLAY => "from-overlay",
                abi::PROG_FROM_NETDEV => "from-netdev",
                abi::PROG_TO_NETDEV => "to-netdev",
                abi::PROG_TO_SERVICE => "to-service",
                _ => "unknown",
            },
        };
        let reason = abi::REASONS
            .iter()
            .find(|(v, _)| *v == e.reason)
            .map_or("unknown", |(_, n)| n);
        let addr = |ip: [u32; 4], port: u16| {
            (ip != [0; 4] || port != 0)
                .then(|| SocketAddr::new(abi::decode_ip(ip, e.family), port).to_string())
        };
        Self {
            node: node.to_owned(),
            time: humantime::format_rfc3339_nanos(wall(e.ts_ns)).to_string(),
            kind: kind.to_owned(),
            program: program.to_owned(),
            proto: e.proto,
            verdict: match e.verdict {
                abi::VERDICT_ALLOW => Some("allowed".to_owned()),
                abi::VERDICT_DENY => Some("denied".to_owned()),
                _ => None,
            },
            reason: reason.to_owned(),
            src_identity: e.src_identity,
            dst_identity: e.dst_identity,
            src: addr(e.src_ip, e.src_port),
            dst: addr(e.dst_ip, e.dst_port),
            to: addr(e.to_ip, e.to_port),
            revision: e.revision,
            cookie: e.cookie,
            count: u64::from(e.count.max(1)),
        }
    }
}

/// Reads the pinned `mb_events` ring buffer. A ring buffer has a single
/// consumer position: only one reader (the agent's `run`) may exist per
/// pinned datapath.
pub struct EventReader {
    rb: RingBuf<MapData>,
    /// Records that were not of this build's layout version.
    pub skipped: u64,
}

impl std::fmt::Debug for EventReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventReader")
            .field("skipped", &self.skipped)
            .finish()
    }
}

/// Wall-clock time of a `CLOCK_MONOTONIC` timestamp, from one reading of
/// both clocks now.
fn wall_clock() -> io::Result<impl Fn(u64) -> SystemTime> {
    use nix::time::{clock_gettime, ClockId};
    let mono = clock_gettime(ClockId::CLOCK_MONOTONIC).map_err(io::Error::from)?;
    let now = SystemTime::now();
    let mono_ns = u64::try_from(mono.tv_sec()).unwrap_or(0) * 1_000_000_000
        + u64::try_from(mono.tv_nsec()).unwrap_or(0);
    Ok(move |ts: u64| {
        now.checked_sub(Duration::from_nanos(mono_ns.saturating_sub(ts)))
            .unwrap_or(now)
    })
}

impl EventReader {
    pub(crate) fn new(rb: RingBuf<MapData>) -> Self {
        Self { rb, skipped: 0 }
    }

    /// Wait up to `timeout` for records; true when some may be ready.
    pub fn wait(&self, timeout: Duration) -> io::Result<bool> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.rb.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(n) => Ok(n > 0),
            Err(nix::errno::Errno::EINTR) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Decode every record available now (at most `max`), oldest first.
    pub fn drain(&mut self, node: &str, max: usize) -> io::Result<Vec<Event>> {
        let wall = wall_clock()?;
        let mut out = Vec::new();
        while out.len() < max {
            let Some(item) = self.rb.next() else { break };
            match MbEvent::from_bytes(&item) {
                Some(e) => out.push(Event::from_abi(&e, node, &wall)),
                None => self.skipped += 1,
            }
        }
        Ok(out)
    }
}
