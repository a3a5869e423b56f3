//! The endpoint's L3/L4 policy maps: `mb_identity` (the ipcache, address prefix →
//! identity), `mb_policy` (the endpoint's policy, a hash keyed by port blocks) and
//! `mb_policy_lens` (the block lengths its lookup probes); see `bpf/lib/policy.h`. They
//! change only by diffs, in the order [`policy_map`](crate::policy_map) explains.

use std::collections::BTreeMap;

use ipnet::IpNet;

use super::*;
use aya::maps::{Array, HashMap as BpfHashMap};

use crate::abi::{MbPolicyKey, MbPolicyLens, MbPolicyValue};
use crate::policy_map::{
    self,
    diff::{self, MapOp, PortLens},
    ports::PortPrefix,
    Direction, MapKey, MapVerdict, PolicyMapError, PolicyRule, SyncReport,
};

const POLICY: &str = "mb_policy";
const POLICY_LENS: &str = "mb_policy_lens";
const IPCACHE: &str = "mb_identity";

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> Error {
    move |source| Error::Map { name, source }
}

/// The kernel key of a policy-map entry.
fn policy_key(k: &MapKey) -> MbPolicyKey {
    MbPolicyKey {
        prefixlen: abi::POLICY_PREFIX_STATIC + u32::from(k.ports.bits),
        identity: k.identity,
        direction: match k.direction {
            Direction::Ingress => abi::DIR_INGRESS,
            Direction::Egress => abi::DIR_EGRESS,
        },
        proto: k.proto,
        dport: k.ports.port.to_be(),
    }
}

fn verdict_value(v: MapVerdict) -> MbPolicyValue {
    MbPolicyValue {
        lock: 0,
        verdict: match v {
            MapVerdict::Allow => abi::VERDICT_ALLOW,
            MapVerdict::Deny => abi::VERDICT_DENY,
            MapVerdict::Redirect => abi::VERDICT_REDIRECT,
        },
        pad: [0; 3],
    }
}

/// A kernel entry read back; `None` for one no writer of this version makes (a verdict,
/// direction or length it does not know, or port bits past the block's length, which no
/// lookup would ever probe).
fn map_entry(k: &MbPolicyKey, v: &MbPolicyValue) -> Option<(MapKey, MapVerdict)> {
    let bits = u8::try_from(k.prefixlen.checked_sub(abi::POLICY_PREFIX_STATIC)?).ok()?;
    let direction = match k.direction {
        abi::DIR_INGRESS => Direction::Ingress,
        abi::DIR_EGRESS => Direction::Egress,
        _ => return None,
    };
    let verdict = match v.verdict {
        abi::VERDICT_ALLOW => MapVerdict::Allow,
        abi::VERDICT_DENY => MapVerdict::Deny,
        abi::VERDICT_REDIRECT => MapVerdict::Redirect,
        _ => return None,
    };
    let port = u16::from_be(k.dport);
    let aligned = bits <= 16 && u32::from(port) & ((1u32 << (16 - u32::from(bits))) - 1) == 0;
    aligned.then_some((
        MapKey {
            direction,
            proto: k.proto,
            identity: k.identity,
            ports: PortPrefix { port, bits },
        },
        verdict,
    ))
}

/// An ipcache prefix as the kernel keys it: v4-mapped IPv6 prefixes (/96 and longer) as
/// the IPv4 prefix they cover, host bits cleared.
pub(crate) fn ipcache_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.network().to_ipv4_mapped() {
            Some(v4) => IpNet::V4(
                ipnet::Ipv4Net::new(v4, n.prefix_len() - 96)
                    .expect("a /96../128 v4-mapped prefix is a valid IPv4 prefix")
                    .trunc(),
            ),
            None => IpNet::V6(n.trunc()),
        },
        other => other.trunc(),
    }
}

pub(crate) fn ipcache_key(net: IpNet) -> Key<MbCidrData> {
    let (ip, family) = abi::encode_ip(net.network());
    let data = MbCidrData {
        family: u32::from(family),
        ip,
    };
    Key::new(32 + u32::from(net.prefix_len()), data)
}

/// An insert's error: [`PolicyMapError::Full`] when the map had no room (E2BIG), else
/// the map error.
fn full_or(e: aya::maps::MapError, capacity: usize, held: usize, wanted: usize) -> Error {
    match &e {
        aya::maps::MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(7) => {
            PolicyMapError::Full {
                capacity,
                held,
                wanted,
            }
            .into()
        }
        _ => map_err(POLICY)(e),
    }
}

/// The map's size. While a sync runs the map holds the old entries beside the new ones;
/// when both do not fit, an insert fails part way, which leaves a state where every flow
/// has its old verdict or its new one (each step of the plan does), and the error.
pub(crate) fn capacity(data: &MapData, name: &'static str) -> Result<usize> {
    Ok(data.info().map_err(map_err(name))?.max_entries() as usize)
}

/// Wait until every BPF program running now has returned: `membarrier(GLOBAL)` is an RCU
/// grace period, and the programs run inside RCU read-side sections. Where the kernel
/// refuses it (nohz_full CPUs) the phases follow each other without the wait; the window
/// left is one program's two consecutive map lookups.
fn wait_for_running_programs() {
    let _ = rustix::thread::membarrier(rustix::thread::MembarrierCommand::Global);
}

impl Datapath {
    fn policy_hash(&self) -> Result<BpfHashMap<MapData, MbPolicyKey, MbPolicyValue>> {
        BpfHashMap::try_from(Map::HashMap(self.map(POLICY)?)).map_err(map_err(POLICY))
    }

    fn ipcache_trie(&self) -> Result<LpmTrie<MapData, MbCidrData, u32>> {
        LpmTrie::try_from(Map::LpmTrie(self.map(IPCACHE)?)).map_err(map_err(IPCACHE))
    }

    fn policy_lens(&self) -> Result<Array<MapData, MbPolicyLens>> {
        Array::try_from(Map::Array(self.map(POLICY_LENS)?)).map_err(map_err(POLICY_LENS))
    }

    /// The lengths row, and a writer of it.
    fn write_lens(m: &mut Array<MapData, MbPolicyLens>, l: PortLens) -> Result<()> {
        m.set(0, MbPolicyLens { bits: l.0 }, 0)
            .map_err(map_err(POLICY_LENS))
    }

    fn policy_entries(&self) -> Result<BTreeMap<MapKey, MapVerdict>> {
        let m = self.policy_hash()?;
        let mut out = BTreeMap::new();
        for kv in m.iter() {
            let (k, v) = kv.map_err(map_err(POLICY))?;
            if let Some((k, v)) = map_entry(&k, &v) {
                out.insert(k, v);
            }
        }
        Ok(out)
    }

    /// Make the endpoint's policy map hold exactly `rules` (see
    /// [`policy_map`](crate::policy_map)). The whole input is validated first; on an
    /// error nothing is written. Then only the difference to what the map holds is
    /// written, in an order where no connection is decided by anything but the old
    /// policy or the new one. Reports the entries (port blocks) changed. When the old
    /// and the new policy side by side do not fit in the map, the sync stops at the
    /// first entry that does not fit with [`PolicyMapError::Full`], every flow keeping
    /// its old verdict or its new one.
    pub fn sync_policy(&self, rules: &[PolicyRule]) -> Result<SyncReport> {
        policy_map::validate(rules)?;
        let desired = policy_map::entries(rules);
        let data = self.map(POLICY)?;
        let capacity = capacity(&data, POLICY)?;
        if desired.len() > capacity {
            return Err(PolicyMapError::TooLarge {
                rules: rules.len(),
                entries: desired.len(),
                capacity,
            }
            .into());
        }
        let mut m: BpfHashMap<MapData, MbPolicyKey, MbPolicyValue> =
            BpfHashMap::try_from(Map::HashMap(data)).map_err(map_err(POLICY))?;
        let mut lens = self.policy_lens()?;
        let row = PortLens(lens.get(&0, 0).map_err(map_err(POLICY_LENS))?.bits);
        let mut current = BTreeMap::new();
        let mut strays = Vec::new();
        for kv in m.iter() {
            let (k, v) = kv.map_err(map_err(POLICY))?;
            match map_entry(&k, &v) {
                Some((k, v)) => {
                    current.insert(k, v);
                }
                None => strays.push(k),
            }
        }
        // Entries no writer of this version makes (a verdict or prefix it does not know)
        // would stay in force unseen by the diff: they go first.
        for k in strays {
            m.remove(&k).map_err(map_err(POLICY))?;
        }
        let plan = diff::plan(&current, &desired, row);
        // Every length either policy uses is probed before any key of a new length is
        // written, and by every program from then on: the wait makes sure none still
        // probes with the old row.
        if let Some(wide) = plan.widen {
            Self::write_lens(&mut lens, wide)?;
            wait_for_running_programs();
        }
        // Writes since the last wait, per phase: a program must never see phase 1's and
        // phase 2's (or 3's and 4's) maps in its two lookups.
        let mut since_wait = [false; 4];
        let held = current.len();
        for (i, ops) in plan.phases.iter().enumerate() {
            if ops.is_empty() {
                continue;
            }
            if (i >= 1 && since_wait[0]) || (i == 3 && (since_wait[1] || since_wait[2])) {
                wait_for_running_programs();
                since_wait = [false; 4];
            }
            for op in ops {
                match op {
                    // BPF_F_LOCK: a verdict change is written in place. A plain update
                    // links a new element and unlinks the old, and a lookup walking the
                    // bucket meanwhile can miss the key altogether.
                    MapOp::Upsert(k, v) => m
                        .insert(policy_key(k), verdict_value(*v), abi::BPF_F_LOCK)
                        .map_err(|e| full_or(e, capacity, held, desired.len()))?,
                    MapOp::Delete(k) => m.remove(&policy_key(k)).map_err(map_err(POLICY))?,
                }
            }
            since_wait[i] = true;
        }
        if let Some(narrow) = plan.narrow {
            Self::write_lens(&mut lens, narrow)?;
        }
        Ok(plan.report)
    }

    /// The rules the endpoint's policy map holds, adjacent port blocks of one verdict
    /// merged back into ranges.
    pub fn policy_rules(&self) -> Result<Vec<PolicyRule>> {
        Ok(policy_map::rules_of(&self.policy_entries()?))
    }

    /// Make the ipcache hold exactly `entries` (prefix → identity): upserts longest
    /// prefix first, then deletes shortest prefix first, so an address resolves to its
    /// old identity or its new one throughout. v4-mapped IPv6 prefixes are stored as IPv4
    /// and host bits are cleared; a prefix given twice with two identities, or identity
    /// 0, is refused before anything is written.
    pub fn sync_ipcache(&self, entries: &[(IpNet, u32)]) -> Result<SyncReport> {
        let mut desired = BTreeMap::new();
        for &(net, id) in entries {
            let key = ipcache_net(net);
            if id == 0 {
                return Err(Error::InvalidIpcache(format!(
                    "{net}: identity 0 is not an identity (reserved:world is 2)"
                )));
            }
            if let Some(other) = desired.insert(key, id) {
                if other != id {
                    return Err(Error::InvalidIpcache(format!(
                        "{key} given twice, with identities {other} and {id}"
                    )));
                }
            }
        }
        let data = self.map(IPCACHE)?;
        let capacity = capacity(&data, IPCACHE)?;
        if desired.len() > capacity {
            return Err(Error::InvalidIpcache(format!(
                "{} prefixes; the map holds {capacity}",
                desired.len()
            )));
        }
        let mut m: LpmTrie<MapData, MbCidrData, u32> =
            LpmTrie::try_from(Map::LpmTrie(data)).map_err(map_err(IPCACHE))?;
        let current: BTreeMap<IpNet, u32> = self.ipcache()?.into_iter().collect();
        let (ops, report) = diff::plan_ipcache(&current, &desired);
        for op in ops {
            match op {
                MapOp::Upsert(net, id) => m
                    .insert(&ipcache_key(net), id, 0)
                    .map_err(map_err(IPCACHE))?,
                MapOp::Delete(net) => m.remove(&ipcache_key(net)).map_err(map_err(IPCACHE))?,
            }
        }
        Ok(report)
    }

    /// The ipcache: every prefix and its identity, sorted by prefix.
    pub fn ipcache(&self) -> Result<Vec<(IpNet, u32)>> {
        let m = self.ipcache_trie()?;
        let mut out = Vec::new();
        for kv in m.iter() {
            let (k, id) = kv.map_err(map_err(IPCACHE))?;
            let data = k.data();
            let ip = abi::decode_ip(data.ip, u8::try_from(data.family).unwrap_or(0));
            let plen = u8::try_from(k.prefix_len().saturating_sub(32)).unwrap_or(0);
            if let Ok(net) = IpNet::new(ip, plen) {
                out.push((net, id));
            }
        }
        out.sort_unstable();
        Ok(out)
    }
}
