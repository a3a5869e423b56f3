//! The packet path's conntrack (`mb_ct`, `bpf/lib/conntrack.h`) read back and
//! garbage-collected, and its counters (`mb_tc_stats`, `bpf/lib/node.h`).

use crate::bpffs::PinLayout;
use std::net::{IpAddr, SocketAddr};

use aya::maps::{HashMap, Map, MapData, PerCpuArray};
use serde::Serialize;

use super::NodeDatapath;
use crate::{
    abi::{self, MbCtKey, MbCtValue, MbTcStat},
    policy_map::Direction,
    Error, Result,
};

const CT: &str = "mb_ct";
const STATS: &str = "mb_tc_stats";

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> Error {
    move |source| Error::Map { name, source }
}

/// A tracked flow's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CtState {
    /// TCP: SYN seen, no reply yet; other protocols: no reply yet.
    New,
    /// TCP: both directions and an ACK without SYN seen; others: a reply seen.
    Established,
    /// TCP: FIN both ways, or RST.
    Closing,
}

/// One conntrack entry: a flow as its first packet went, at one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CtEntry {
    /// The endpoint whose policy allowed it.
    pub endpoint_id: u16,
    /// `Egress`: the pod opened it; `Ingress`: a peer did.
    pub direction: Direction,
    /// IP protocol number.
    pub proto: u8,
    /// The initiator (ICMP echo: port = identifier).
    pub src: SocketAddr,
    /// The responder (ICMP echo: port 0).
    pub dst: SocketAddr,
    /// Its state.
    pub state: CtState,
    /// A reply was seen.
    pub seen_reply: bool,
    /// `CLOCK_MONOTONIC` nanoseconds after which the datapath treats it as gone.
    pub expires_ns: u64,
    /// Packets, both directions.
    pub packets: u64,
    /// Bytes, both directions.
    pub bytes: u64,
    /// The remote's identity when the flow was decided.
    pub remote_identity: u32,
    /// The verdict value that allowed it (`abi::VERDICT_*`); 0 = policy was not enforced.
    pub verdict: u8,
    /// A pod's flow the tc load balancer translated to a backend: the frontend's reverse
    /// NAT id (its replies get the frontend back as their source); 0 = not translated.
    pub rev_nat_id: u32,
}

/// One row of the packet counters, summed over CPUs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TcStat {
    /// The reason number (`MB_RSN_*`); 0 = forwarded.
    pub reason: u8,
    /// Its name (`forwarded`, or the name in [`abi::REASONS`]).
    pub name: String,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

impl CtEntry {
    fn from_abi(k: &MbCtKey, v: &MbCtValue) -> Self {
        let addr =
            |ip: [u32; 4], port: u16| SocketAddr::new(abi::decode_ip(ip, k.family) as IpAddr, port);
        Self {
            endpoint_id: k.endpoint_id,
            direction: if k.dir == abi::DIR_EGRESS {
                Direction::Egress
            } else {
                Direction::Ingress
            },
            proto: k.proto,
            src: addr(k.src_ip, k.src_port),
            dst: addr(k.dst_ip, k.dst_port),
            state: match v.state {
                abi::CT_ESTABLISHED => CtState::Established,
                abi::CT_CLOSING => CtState::Closing,
                _ => CtState::New,
            },
            seen_reply: v.flags & abi::CT_F_SEEN_REPLY != 0,
            expires_ns: v.expires_ns,
            packets: v.packets,
            bytes: v.bytes,
            remote_identity: v.identity,
            verdict: v.verdict,
            rev_nat_id: v.rev_nat_id,
        }
    }
}

/// Now on the clock `bpf_ktime_get_ns` reads (`CLOCK_MONOTONIC`).
fn monotonic_ns() -> Result<u64> {
    use nix::time::{clock_gettime, ClockId};
    let t = clock_gettime(ClockId::CLOCK_MONOTONIC).map_err(|e| Error::Io {
        path: "CLOCK_MONOTONIC".into(),
        what: "clock_gettime",
        source: e.into(),
    })?;
    Ok(u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
        + u64::try_from(t.tv_nsec()).unwrap_or(0))
}

impl NodeDatapath {
    fn ct_map(&self) -> Result<HashMap<MapData, MbCtKey, MbCtValue>> {
        HashMap::try_from(Map::LruHashMap(self.map(CT)?)).map_err(map_err(CT))
    }

    fn ct_raw(&self) -> Result<Vec<(MbCtKey, MbCtValue)>> {
        let m = self.ct_map()?;
        // An entry the kernel evicts or GC deletes mid-walk ends that key's chain early;
        // skipping it is what a reader racing the datapath sees anyway.
        Ok(m.iter().filter_map(|kv| kv.ok()).collect())
    }

    /// Every conntrack entry, live or expired-but-not-yet-collected, sorted by endpoint,
    /// direction and tuple.
    pub fn conntrack(&self) -> Result<Vec<CtEntry>> {
        let mut out: Vec<CtEntry> = self
            .ct_raw()?
            .iter()
            .map(|(k, v)| CtEntry::from_abi(k, v))
            .collect();
        out.sort_by_key(|e| (e.endpoint_id, e.direction, e.proto, e.src, e.dst));
        Ok(out)
    }

    /// Delete every expired entry (the datapath already ignores them; this frees their
    /// room before LRU eviction would). Returns how many were deleted.
    pub fn ct_gc(&self) -> Result<usize> {
        let now = monotonic_ns()?;
        self.ct_delete_where(|_, v| v.expires_ns <= now)
    }

    /// Delete an endpoint's entries (it was detached).
    pub(crate) fn ct_forget_endpoint(&self, id: u16) -> Result<usize> {
        self.ct_delete_where(|k, _| k.endpoint_id == id)
    }

    fn ct_delete_where(&self, pred: impl Fn(&MbCtKey, &MbCtValue) -> bool) -> Result<usize> {
        let doomed: Vec<MbCtKey> = self
            .ct_raw()?
            .into_iter()
            .filter(|(k, v)| pred(k, v))
            .map(|(k, _)| k)
            .collect();
        let mut m = self.ct_map()?;
        let mut n = 0;
        for k in doomed {
            match m.remove(&k) {
                Ok(()) => n += 1,
                // Evicted or refreshed-and-deleted meanwhile: gone either way.
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(CT)(e)),
            }
        }
        Ok(n)
    }

    /// The packet counters summed over CPUs: the forwarded row always, and every reason
    /// row with packets in it, by reason number.
    pub fn tc_stats(&self) -> Result<Vec<TcStat>> {
        let m: PerCpuArray<MapData, MbTcStat> =
            PerCpuArray::try_from(Map::PerCpuArray(self.map(STATS)?)).map_err(map_err(STATS))?;
        let mut out = Vec::new();
        for reason in 0..abi::RSN_TC_MAX {
            let per_cpu = m.get(&reason, 0).map_err(map_err(STATS))?;
            let (packets, bytes) = per_cpu
                .iter()
                .fold((0u64, 0u64), |(p, b), s| (p + s.packets, b + s.bytes));
            if reason != 0 && packets == 0 {
                continue;
            }
            let reason = u8::try_from(reason).unwrap_or(u8::MAX);
            let name = if reason == 0 {
                "forwarded"
            } else {
                abi::REASONS
                    .iter()
                    .find(|(v, _)| *v == reason)
                    .map_or("unknown", |(_, n)| n)
            };
            out.push(TcStat {
                reason,
                name: name.to_owned(),
                packets,
                bytes,
            });
        }
        Ok(out)
    }
}
