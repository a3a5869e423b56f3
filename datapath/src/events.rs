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

use crate::abi::{self, MbEvent};

pub use membrane_api::monitor::{Event, L7, TYPE_L7, TYPE_LOST};

/// Decode a kernel record seen on `node` (the type itself is the wire format's, in
/// `membrane_api::monitor`, shared with the sidecars and the relay); `wall` turns its
/// monotonic timestamp into wall-clock time.
pub fn from_abi(e: &MbEvent, node: &str, wall: impl Fn(u64) -> SystemTime) -> Event {
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
            abi::PROG_XDP => "xdp",
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
    Event {
        node: node.to_owned(),
        time: membrane_api::monitor::rfc3339(wall(e.ts_ns)),
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
        ..Event::default()
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
                Some(e) => out.push(from_abi(&e, node, &wall)),
                None => self.skipped += 1,
            }
        }
        Ok(out)
    }
}
