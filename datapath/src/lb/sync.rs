//! The service maps as a whole desired state: validate everything, then
//! write in an order where every packet sees a complete frontend (new
//! backends first, the frontends' ports marked, then each changed
//! frontend's new slot set and Maglev row, then the frontend switched to
//! it, then what nothing names any more deleted and the ports no frontend
//! has unmarked), and read them back.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::{IpAddr, SocketAddr},
    path::Path,
};

use aya::maps::{Array, HashMap, Map, MapData};

use super::{maglev, service_name, LbError, LbService};
use crate::{
    abi::{
        self, MbAddrPort, MbEndpointValue, MbIpKey, MbLbBackend, MbLbMaglevRow, MbLbSlotKey,
        MbLbSvcKey, MbLbSvcValue, LB_F_EXT_LOCAL, LB_F_MAGLEV, LB_MAGLEV_M, LB_SCOPE_CLUSTER,
        LB_SCOPE_NODEPORT,
    },
    policy_map::SyncReport,
};

const MAP_SVC: &str = "mb_lb_svc";
const MAP_SLOTS: &str = "mb_lb_slots";
const MAP_BACKENDS: &str = "mb_lb_backends";
const MAP_RNAT: &str = "mb_lb_rnat";
const MAP_MAGLEV: &str = "mb_lb_maglev";
const MAP_PORTS: &str = "mb_lb_ports";
const MAP_ENDPOINTS: &str = "mb_endpoints";

/// Words of `mb_lb_ports`: a bit per port.
const PORT_WORDS: usize = 2048;

/// Frontends the maps hold (`mb_lb_svc`), with room for nothing else: a
/// sync never needs two entries for one frontend.
const MAX_FRONTENDS: usize = 32768;
/// Slots written by one sync at most: half of `mb_lb_slots`, so that the
/// new sets always fit beside the old ones until those are deleted.
const MAX_SLOTS: usize = 131072;
/// Backends (`mb_lb_backends`).
const MAX_BACKENDS: usize = 65536;

type Result<T> = std::result::Result<T, LbError>;

/// The typed service maps of one node.
struct Maps {
    svc: HashMap<MapData, MbLbSvcKey, MbLbSvcValue>,
    slots: HashMap<MapData, MbLbSlotKey, u32>,
    backends: HashMap<MapData, u32, MbLbBackend>,
    rnat: HashMap<MapData, u32, MbAddrPort>,
    maglev: HashMap<MapData, u32, MbLbMaglevRow>,
    ports: Array<MapData, u32>,
}

fn open<K: aya::Pod, V: aya::Pod>(
    dir: &Path,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>> {
    let path = dir.join(name);
    if !path.exists() {
        return Err(LbError::NotLoaded(dir.to_path_buf()));
    }
    let data = MapData::from_pin(&path).map_err(map_err(name))?;
    HashMap::try_from(Map::HashMap(data)).map_err(map_err(name))
}

fn open_array(dir: &Path, name: &'static str) -> Result<Array<MapData, u32>> {
    let path = dir.join(name);
    if !path.exists() {
        return Err(LbError::NotLoaded(dir.to_path_buf()));
    }
    let data = MapData::from_pin(&path).map_err(map_err(name))?;
    Array::try_from(Map::Array(data)).map_err(map_err(name))
}

/// `mb_lb_ports`' words with the bit of every frontend port of `keys` set.
fn port_words<'a>(keys: impl Iterator<Item = &'a MbLbSvcKey>) -> Vec<u32> {
    let mut words = vec![0u32; PORT_WORDS];
    for k in keys {
        words[usize::from(k.port >> 5)] |= 1 << (k.port & 31);
    }
    words
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> LbError {
    move |source| LbError::Map { name, source }
}

impl Maps {
    fn open(dir: &Path) -> Result<Self> {
        Ok(Self {
            svc: open(dir, MAP_SVC)?,
            slots: open(dir, MAP_SLOTS)?,
            backends: open(dir, MAP_BACKENDS)?,
            rnat: open(dir, MAP_RNAT)?,
            maglev: open(dir, MAP_MAGLEV)?,
            ports: open_array(dir, MAP_PORTS)?,
        })
    }

    /// Make `mb_lb_ports` hold `words`, writing only the words that differ.
    fn set_ports(&mut self, words: &[u32]) -> Result<()> {
        for (i, w) in (0u32..).zip(words) {
            if self.ports.get(&i, 0).map_err(map_err(MAP_PORTS))? != *w {
                self.ports.set(i, *w, 0).map_err(map_err(MAP_PORTS))?;
            }
        }
        Ok(())
    }

    /// The backend ids of a slot set, slot by slot (a missing slot: 0).
    fn slot_ids(&self, set: u32, count: u32) -> Vec<u32> {
        (0..count)
            .map(|slot| {
                self.slots
                    .get(
                        &MbLbSlotKey {
                            slot_set: set,
                            slot,
                        },
                        0,
                    )
                    .unwrap_or(0)
            })
            .collect()
    }
}

fn backend_value(a: SocketAddr) -> MbLbBackend {
    let (ip, family) = abi::encode_ip(a.ip());
    MbLbBackend {
        ip,
        port: a.port(),
        family,
        pad: 0,
    }
}

fn backend_addr(b: &MbLbBackend) -> SocketAddr {
    SocketAddr::new(abi::decode_ip(b.ip, b.family), b.port)
}

fn cluster_key(s: &LbService) -> MbLbSvcKey {
    let (ip, family) = abi::encode_ip(s.frontend.ip());
    MbLbSvcKey {
        ip,
        port: s.frontend.port(),
        proto: s.proto,
        scope: LB_SCOPE_CLUSTER,
        family,
        pad: [0; 3],
    }
}

fn node_port_key(s: &LbService) -> MbLbSvcKey {
    MbLbSvcKey {
        ip: [0; 4],
        port: s.node_port,
        proto: s.proto,
        scope: LB_SCOPE_NODEPORT,
        family: abi::AF_INET,
        pad: [0; 3],
    }
}

/// What one frontend should be: its backends (sorted), flags, NodePort.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Want {
    backends: Vec<SocketAddr>,
    flags: u16,
    node_port: u16,
    /// What replies carry as their source (address zero: the node's).
    front: MbAddrPort,
}

/// Numbers in use, and a cursor for the next free one (it only moves
/// forward within a sync, so allocating many is linear, not quadratic).
struct Ids {
    used: BTreeSet<u32>,
    next: u32,
}

impl Ids {
    fn new(used: BTreeSet<u32>) -> Self {
        Self { used, next: 1 }
    }

    /// The lowest free number from the cursor on (never 0).
    fn alloc(&mut self) -> u32 {
        while self.next == 0 || self.used.contains(&self.next) {
            self.next = self.next.wrapping_add(1);
        }
        self.used.insert(self.next);
        self.next
    }
}

/// The addresses of this node's pods (`mb_endpoints`), for NodePorts with
/// external traffic local. No map (a node datapath without endpoints yet):
/// none.
fn local_addrs(dir: &Path) -> Result<HashSet<IpAddr>> {
    if !dir.join(MAP_ENDPOINTS).exists() {
        return Ok(HashSet::new());
    }
    let eps: HashMap<MapData, MbIpKey, MbEndpointValue> = open(dir, MAP_ENDPOINTS)?;
    Ok(eps
        .keys()
        .filter_map(|k| k.ok())
        .map(|k| abi::decode_ip(k.ip, k.family))
        .collect())
}

/// Every frontend the services ask for; invalid input is an error naming
/// the service, and nothing is written.
fn desired(
    services: &[LbService],
    maglev_mode: bool,
    local: &HashSet<IpAddr>,
) -> Result<BTreeMap<MbLbSvcKey, Want>> {
    let mut out = BTreeMap::new();
    let mut slots = 0usize;
    for s in services {
        let s = s.normalised()?;
        let mut flags = if maglev_mode { LB_F_MAGLEV } else { 0 };
        if s.external_local {
            flags |= LB_F_EXT_LOCAL;
        }
        let cluster = Want {
            backends: s.backends.clone(),
            flags,
            node_port: s.node_port,
            front: crate::maps::addr_port(s.frontend),
        };
        slots += cluster.backends.len();
        if out.insert(cluster_key(&s), cluster).is_some() {
            return Err(LbError::Invalid {
                service: service_name(&s),
                what: "listed twice".to_owned(),
            });
        }
        if s.node_port == 0 {
            continue;
        }
        let backends: Vec<SocketAddr> = if s.external_local {
            s.backends
                .iter()
                .filter(|b| local.contains(&b.ip()))
                .copied()
                .collect()
        } else {
            s.backends.clone()
        };
        slots += backends.len();
        let np = Want {
            backends,
            flags,
            node_port: 0,
            front: MbAddrPort {
                ip: [0; 4],
                port: s.node_port,
                family: abi::AF_INET,
                pad: 0,
            },
        };
        if out.insert(node_port_key(&s), np).is_some() {
            return Err(LbError::Invalid {
                service: service_name(&s),
                what: format!("node port {} is another service's too", s.node_port),
            });
        }
    }
    if out.len() > MAX_FRONTENDS {
        return Err(LbError::TooMany(format!(
            "{} frontends, the map holds {MAX_FRONTENDS}",
            out.len()
        )));
    }
    if slots > MAX_SLOTS {
        return Err(LbError::TooMany(format!(
            "{slots} backend slots, at most {MAX_SLOTS}"
        )));
    }
    let distinct: BTreeSet<&SocketAddr> = out.values().flat_map(|w| &w.backends).collect();
    if distinct.len() >= MAX_BACKENDS {
        return Err(LbError::TooMany(format!(
            "{} backends, at most {}",
            distinct.len(),
            MAX_BACKENDS - 1
        )));
    }
    Ok(out)
}

/// Write the whole desired set of services into the service maps under
/// `dir` (the node's maps directory), changing only what differs; with
/// `maglev_mode`, every slot set gets its Maglev table. See the module
/// doc for the order of writes.
pub fn sync_services(dir: &Path, services: &[LbService], maglev_mode: bool) -> Result<SyncReport> {
    let mut m = Maps::open(dir)?;
    let want = desired(services, maglev_mode, &local_addrs(dir)?)?;
    let mut report = SyncReport::default();

    // Current state: backends by address, frontends with their backends.
    let mut ids: BTreeMap<SocketAddr, u32> = m
        .backends
        .iter()
        .filter_map(|e| e.ok())
        .map(|(id, b)| (backend_addr(&b), id))
        .collect();
    let by_id: BTreeMap<u32, SocketAddr> = ids.iter().map(|(a, id)| (*id, *a)).collect();
    let current: BTreeMap<MbLbSvcKey, MbLbSvcValue> = m.svc.iter().filter_map(|e| e.ok()).collect();
    let sets_before: BTreeSet<u32> = current.values().map(|v| v.slot_set).collect();
    let mut next_set = sets_before.iter().max().copied().unwrap_or(0);
    let mut rnat_ids = Ids::new(m.rnat.keys().filter_map(|k| k.ok()).collect());

    // 1. New backends, under ids nothing uses.
    let mut backend_ids = Ids::new(by_id.keys().copied().collect());
    for addr in want.values().flat_map(|w| &w.backends) {
        if ids.contains_key(addr) {
            continue;
        }
        let id = backend_ids.alloc();
        m.backends
            .insert(id, backend_value(*addr), 0)
            .map_err(map_err(MAP_BACKENDS))?;
        ids.insert(*addr, id);
    }

    // The ports of every frontend wanted or still there, before any new
    // frontend is written: the programs skip the frontend lookup of a
    // packet whose port has no bit.
    m.set_ports(&port_words(want.keys().chain(current.keys())))?;

    // 2. Each new or changed frontend: its slot set (and Maglev row) in
    // full, its reverse NAT entry, then the frontend itself.
    let mut written: BTreeMap<(Vec<u32>, u16), u32> = BTreeMap::new();
    let maglev_rows: BTreeSet<u32> = m.maglev.keys().filter_map(|k| k.ok()).collect();
    for (key, w) in &want {
        let old = current.get(key);
        if let Some(v) = old {
            let have: Vec<Option<SocketAddr>> = m
                .slot_ids(v.slot_set, v.count)
                .iter()
                .map(|id| by_id.get(id).copied())
                .collect();
            let same_backends = have.len() == w.backends.len()
                && have.iter().zip(&w.backends).all(|(h, b)| *h == Some(*b));
            let maglev_ok = v.flags & LB_F_MAGLEV == 0
                || w.backends.is_empty()
                || maglev_rows.contains(&v.slot_set);
            if same_backends && maglev_ok && v.flags == w.flags && v.node_port == w.node_port {
                continue;
            }
        }
        let bids: Vec<u32> = w.backends.iter().map(|b| ids[b]).collect();
        let maglev_flag = w.flags & LB_F_MAGLEV;
        // A NodePort written with its ClusterIP (same backends) shares its
        // set and table: half the memory for the common case.
        if let Some(set) = written.get(&(bids.clone(), maglev_flag)) {
            switch(&mut m, key, w, *set, &bids, old, &mut rnat_ids, &mut report)?;
            continue;
        }
        next_set = next_set.wrapping_add(1).max(1);
        let set = next_set;
        written.insert((bids.clone(), maglev_flag), set);
        for (slot, id) in (0u32..).zip(&bids) {
            m.slots
                .insert(
                    MbLbSlotKey {
                        slot_set: set,
                        slot,
                    },
                    *id,
                    0,
                )
                .map_err(map_err(MAP_SLOTS))?;
        }
        if w.flags & LB_F_MAGLEV != 0 && !bids.is_empty() {
            let table = maglev::table(&w.backends, LB_MAGLEV_M);
            let mut row = MbLbMaglevRow {
                backend_id: [0; LB_MAGLEV_M],
            };
            for (e, i) in row.backend_id.iter_mut().zip(table) {
                *e = bids[i];
            }
            m.maglev.insert(set, row, 0).map_err(map_err(MAP_MAGLEV))?;
        }
        switch(&mut m, key, w, set, &bids, old, &mut rnat_ids, &mut report)?;
    }

    // 3. Frontends no longer wanted, then their reverse NAT entries.
    for (key, v) in &current {
        if want.contains_key(key) {
            continue;
        }
        m.svc.remove(key).map_err(map_err(MAP_SVC))?;
        let _ = m.rnat.remove(&v.rev_nat_id);
        report.removed += 1;
    }
    // Only the wanted frontends are left: their ports.
    m.set_ports(&port_words(want.keys()))?;

    // 4. Slot sets and Maglev rows nothing names any more; then backends
    // no slot names (established flows keep their backend's address).
    let after: BTreeMap<MbLbSvcKey, MbLbSvcValue> = m.svc.iter().filter_map(|e| e.ok()).collect();
    let sets_after: BTreeSet<u32> = after.values().map(|v| v.slot_set).collect();
    for v in current.values() {
        if sets_after.contains(&v.slot_set) {
            continue;
        }
        for slot in 0..v.count {
            let _ = m.slots.remove(&MbLbSlotKey {
                slot_set: v.slot_set,
                slot,
            });
        }
        let _ = m.maglev.remove(&v.slot_set);
    }
    let named: BTreeSet<u32> = after
        .values()
        .flat_map(|v| m.slot_ids(v.slot_set, v.count))
        .collect();
    for id in ids.values().filter(|id| !named.contains(id)) {
        m.backends.remove(id).map_err(map_err(MAP_BACKENDS))?;
    }
    Ok(report)
}

/// Point frontend `key` at the complete slot set `set` (its reverse NAT
/// entry first, when it is new).
#[allow(clippy::too_many_arguments)]
fn switch(
    m: &mut Maps,
    key: &MbLbSvcKey,
    w: &Want,
    set: u32,
    bids: &[u32],
    old: Option<&MbLbSvcValue>,
    rnat_ids: &mut Ids,
    report: &mut SyncReport,
) -> Result<()> {
    let rev_nat_id = match old {
        Some(v) => v.rev_nat_id,
        None => {
            let id = rnat_ids.alloc();
            m.rnat.insert(id, w.front, 0).map_err(map_err(MAP_RNAT))?;
            id
        }
    };
    let value = MbLbSvcValue {
        count: bids.len() as u32,
        slot_set: set,
        rev_nat_id,
        flags: w.flags,
        node_port: w.node_port,
    };
    m.svc.insert(*key, value, 0).map_err(map_err(MAP_SVC))?;
    if old.is_some() {
        report.changed += 1;
    } else {
        report.added += 1;
    }
    Ok(())
}

/// The services the maps hold, sorted: each ClusterIP frontend with its
/// NodePort, flags and backends.
pub fn read_services(dir: &Path) -> Result<Vec<LbService>> {
    let m = Maps::open(dir)?;
    let by_id: BTreeMap<u32, SocketAddr> = m
        .backends
        .iter()
        .filter_map(|e| e.ok())
        .map(|(id, b)| (id, backend_addr(&b)))
        .collect();
    let mut out: Vec<LbService> = m
        .svc
        .iter()
        .filter_map(|e| e.ok())
        .filter(|(k, _)| k.scope == LB_SCOPE_CLUSTER)
        .map(|(k, v)| LbService {
            frontend: SocketAddr::new(abi::decode_ip(k.ip, k.family), k.port),
            proto: k.proto,
            node_port: v.node_port,
            external_local: v.flags & LB_F_EXT_LOCAL != 0,
            backends: m
                .slot_ids(v.slot_set, v.count)
                .iter()
                .filter_map(|id| by_id.get(id).copied())
                .collect(),
        })
        .collect();
    out.sort();
    Ok(out)
}
