//! The node ipcache `mb_ipcache` (`bpf/lib/node.h`): address prefix → identity and, for
//! prefixes behind another node, its underlay address. Changed by diff in the order that
//! keeps every lookup on an address's old entry or its new one (see
//! [`policy_map`](crate::policy_map)).

use crate::bpffs::PinLayout;
use std::{collections::BTreeMap, net::Ipv4Addr};

use aya::maps::{lpm_trie::LpmTrie, Map, MapData};
use ipnet::IpNet;

use super::{IpcacheEntry, NodeDatapath};
use crate::{
    abi::{self, MbCidrData, MbIpcacheValue},
    maps::policy::{capacity, ipcache_key, ipcache_net},
    policy_map::{
        diff::{self, MapOp},
        SyncReport,
    },
    Error, Result,
};

const IPCACHE: &str = "mb_ipcache";

fn map_err(source: aya::maps::MapError) -> Error {
    Error::Map {
        name: IPCACHE,
        source,
    }
}

fn value(e: &IpcacheEntry) -> MbIpcacheValue {
    MbIpcacheValue {
        identity: e.identity,
        tunnel_ip4: e.tunnel.map_or(0, |ip| u32::from_ne_bytes(ip.octets())),
    }
}

impl NodeDatapath {
    fn ipcache_trie(&self) -> Result<LpmTrie<MapData, MbCidrData, MbIpcacheValue>> {
        LpmTrie::try_from(Map::LpmTrie(self.map(IPCACHE)?)).map_err(map_err)
    }

    /// Make the node ipcache hold exactly `entries`. The whole input is checked first
    /// (identity 0, a tunnel endpoint that is no unicast address, a prefix given twice
    /// with two values, more prefixes than the map holds: an error naming it, nothing
    /// written); then only the difference is written, longest prefix upserted first and
    /// shortest prefix deleted first.
    pub fn sync_ipcache(&self, entries: &[IpcacheEntry]) -> Result<SyncReport> {
        let mut desired: BTreeMap<IpNet, MbIpcacheValue> = BTreeMap::new();
        for e in entries {
            let net = ipcache_net(e.prefix);
            if e.identity == 0 {
                return Err(Error::InvalidIpcache(format!(
                    "{}: identity 0 is not an identity (reserved:world is 2)",
                    e.prefix
                )));
            }
            if let Some(t) = e.tunnel {
                if t.is_unspecified() || t.is_broadcast() || t.is_multicast() {
                    return Err(Error::InvalidIpcache(format!(
                        "{}: tunnel endpoint {t} is not a node's unicast address",
                        e.prefix
                    )));
                }
            }
            let v = value(e);
            if let Some(other) = desired.insert(net, v) {
                if other != v {
                    return Err(Error::InvalidIpcache(format!(
                        "{net} given twice, with identity {} tunnel {} and identity {} tunnel {}",
                        other.identity,
                        Ipv4Addr::from(other.tunnel_ip4.to_ne_bytes()),
                        v.identity,
                        Ipv4Addr::from(v.tunnel_ip4.to_ne_bytes()),
                    )));
                }
            }
        }
        let data = self.map(IPCACHE)?;
        let capacity = capacity(&data, IPCACHE)?;
        if desired.len() > capacity {
            return Err(Error::InvalidIpcache(format!(
                "{} prefixes; the node ipcache holds {capacity}",
                desired.len()
            )));
        }
        let mut m: LpmTrie<MapData, MbCidrData, MbIpcacheValue> =
            LpmTrie::try_from(Map::LpmTrie(data)).map_err(map_err)?;
        let current: BTreeMap<IpNet, MbIpcacheValue> = self
            .ipcache()?
            .iter()
            .map(|e| (e.prefix, value(e)))
            .collect();
        let (ops, report) = diff::plan_ipcache(&current, &desired);
        for op in ops {
            match op {
                MapOp::Upsert(net, v) => m.insert(&ipcache_key(net), v, 0).map_err(map_err)?,
                MapOp::Delete(net) => m.remove(&ipcache_key(net)).map_err(map_err)?,
            }
        }
        Ok(report)
    }

    /// The node ipcache, sorted by prefix.
    pub fn ipcache(&self) -> Result<Vec<IpcacheEntry>> {
        let m = self.ipcache_trie()?;
        let mut out = Vec::new();
        for kv in m.iter() {
            let (k, v) = kv.map_err(map_err)?;
            let data: MbCidrData = k.data();
            let ip = abi::decode_ip(data.ip, u8::try_from(data.family).unwrap_or(0));
            let plen = u8::try_from(k.prefix_len().saturating_sub(32)).unwrap_or(0);
            if let Ok(prefix) = IpNet::new(ip, plen) {
                out.push(IpcacheEntry {
                    prefix,
                    identity: v.identity,
                    tunnel: (v.tunnel_ip4 != 0).then(|| Ipv4Addr::from(v.tunnel_ip4.to_ne_bytes())),
                });
            }
        }
        out.sort_unstable();
        Ok(out)
    }
}
