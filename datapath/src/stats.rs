//! What the kernel programs count: per-program counters, the splice's switch statistics,
//! and the monitor event ring buffer with its loss counter.

use super::*;
use crate::loader::*;

/// One program's counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProgCounters {
    /// Program name.
    pub program: &'static str,
    /// See `struct mb_counters` in `bpf/include/membrane_abi.h`.
    pub redirected: u64,
    /// Bytes redirected (sk_msg).
    pub redirected_bytes: u64,
    /// Left on the plain path by choice or policy.
    pub fallbacks: u64,
    /// Nothing to do.
    pub misses: u64,
    /// Connects refused with EPERM by the L3/L4 policy (connect4/6).
    pub refused: u64,
}

/// Spliced sockets that stopped redirecting (`mb_splice_stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpliceStats {
    /// Sockets whose sends switched from the splice to plain TCP for good
    /// (a small-write stream, or the peer left the sockhash).
    pub switched_to_tcp: u64,
    /// Of those, sockets taken out of the sockhash (plain TCP send path).
    pub unspliced: u64,
    /// Of those, sockets that had to wait in the sockhash for spliced bytes
    /// of their peer (unread, or still on their way); their sends pass
    /// through sk_msg meanwhile. Most leave later and count as unspliced too.
    pub kept: u64,
}

impl Datapath {
    /// Records the kernel programs had no ring-buffer room for, since load.
    pub fn events_lost(&self) -> Result<u64> {
        let name = "mb_events_lost";
        let arr: PerCpuArray<MapData, u64> =
            PerCpuArray::try_from(Map::PerCpuArray(self.map(name)?))
                .map_err(|source| Error::Map { name, source })?;
        let per_cpu = arr
            .get(&0, 0)
            .map_err(|source| Error::Map { name, source })?;
        Ok(per_cpu.iter().sum())
    }

    /// The monitor event ring buffer. It has one consumer: the agent that
    /// opens it (see [`events::EventReader`]).
    pub fn events(&self) -> Result<events::EventReader> {
        let name = "mb_events";
        let rb = aya::maps::RingBuf::try_from(Map::RingBuf(self.map(name)?))
            .map_err(|source| Error::Map { name, source })?;
        Ok(events::EventReader::new(rb))
    }

    /// Per-program counters summed over CPUs.
    pub fn counters(&self) -> Result<Vec<ProgCounters>> {
        let name = "mb_counters";
        let arr: PerCpuArray<MapData, MbCounters> =
            PerCpuArray::try_from(Map::PerCpuArray(self.map(name)?))
                .map_err(|source| Error::Map { name, source })?;
        let rows = [
            (abi::PROG_SOCKOPS, PROG_SOCKOPS),
            (abi::PROG_SK_MSG, PROG_SK_MSG),
            (abi::PROG_CONNECT4, PROG_CONNECT4),
            (abi::PROG_CONNECT6, PROG_CONNECT6),
            (abi::PROG_GETSOCKOPT, PROG_GETSOCKOPT),
            (abi::PROG_SK_LOOKUP, PROG_SK_LOOKUP),
        ];
        let mut out = Vec::with_capacity(rows.len());
        for (idx, program) in rows {
            let per_cpu = arr
                .get(&idx, 0)
                .map_err(|source| Error::Map { name, source })?;
            let mut c = ProgCounters {
                program,
                ..ProgCounters::default()
            };
            for v in per_cpu.iter() {
                c.redirected += v.redirected;
                c.redirected_bytes += v.redirected_bytes;
                c.fallbacks += v.fallbacks;
                c.misses += v.misses;
                c.refused += v.refused;
            }
            out.push(c);
        }
        Ok(out)
    }

    /// How many spliced sockets switched their sends to plain TCP, and of
    /// those how many left the sockhash or had to stay in it, summed over
    /// CPUs (see `lib/flow_switch.h` and `lib/unsplice.h`).
    pub fn splice_stats(&self) -> Result<SpliceStats> {
        let name = "mb_splice_stats";
        let arr: PerCpuArray<MapData, u64> =
            PerCpuArray::try_from(Map::PerCpuArray(self.map(name)?))
                .map_err(|source| Error::Map { name, source })?;
        let sum = |idx: u32| -> Result<u64> {
            let per_cpu = arr
                .get(&idx, 0)
                .map_err(|source| Error::Map { name, source })?;
            Ok(per_cpu.iter().sum())
        };
        Ok(SpliceStats {
            switched_to_tcp: sum(abi::STAT_TO_TCP)?,
            unspliced: sum(abi::STAT_UNSPLICED)?,
            kept: sum(abi::STAT_KEPT)?,
        })
    }

    /// Counters of one program by name (`mb_sk_msg`, `mb_sockops`, ...).
    pub fn counters_of(&self, program: &str) -> Result<ProgCounters> {
        Ok(self
            .counters()?
            .into_iter()
            .find(|c| c.program == program)
            .unwrap_or_default())
    }
}
