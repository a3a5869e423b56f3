//! The splice's maps: the sockhash of spliced sockets and the learned plain-TCP port
//! hints; see `bpf/lib/sockmap.h` and `bpf/lib/port_hint.h`.

use super::*;

/// One side of a spliced connection as the sockhash holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SockEntry {
    /// The socket's local address.
    pub local: SocketAddr,
    /// Its peer's address.
    pub remote: SocketAddr,
}

impl SockEntry {
    fn from_key(k: &MbSockKey) -> Self {
        Self {
            local: SocketAddr::new(abi::decode_ip(k.local_ip, k.family), k.local_port),
            remote: SocketAddr::new(abi::decode_ip(k.remote_ip, k.family), k.remote_port),
        }
    }
}

impl Datapath {
    /// Every socket in the sockhash.
    pub fn sockets(&self) -> Result<Vec<SockEntry>> {
        let name = "mb_sock_hash";
        let hash: SockHash<MapData, MbSockKey> = SockHash::try_from(Map::SockHash(self.map(name)?))
            .map_err(|source| Error::Map { name, source })?;
        let mut out = Vec::new();
        for key in hash.keys() {
            let key = key.map_err(|source| Error::Map { name, source })?;
            out.push(SockEntry::from_key(&key));
        }
        out.sort();
        Ok(out)
    }

    /// Spliced pairs: both sockets of a connection are in the sockhash.
    /// Each pair is listed once, as (connecting or lower, other) side.
    pub fn spliced_pairs(&self) -> Result<Vec<(SockEntry, SockEntry)>> {
        let socks: BTreeSet<SockEntry> = self.sockets()?.into_iter().collect();
        Ok(socks
            .iter()
            .filter_map(|s| {
                let peer = SockEntry {
                    local: s.remote,
                    remote: s.local,
                };
                (s < &peer && socks.contains(&peer)).then_some((*s, peer))
            })
            .collect())
    }

    /// Service ports where a spliced flow streamed small writes (splicing
    /// loses there), with the `CLOCK_MONOTONIC` ns when it was seen. New
    /// connections to them stay on plain TCP for the hint TTL, then one
    /// re-probes.
    pub fn plain_hints(&self) -> Result<Vec<(u16, u64)>> {
        let name = "mb_port_hint";
        let m: HashMap<MapData, u32, u64> = HashMap::try_from(Map::HashMap(self.map(name)?))
            .map_err(|source| Error::Map { name, source })?;
        let mut out = Vec::new();
        for kv in m.iter() {
            let (port, at) = kv.map_err(|source| Error::Map { name, source })?;
            out.push((u16::try_from(port).unwrap_or(u16::MAX), at));
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Forget a learned hint so the next connection to `port` is spliced.
    pub fn clear_plain_hint(&self, port: u16) -> Result<()> {
        let name = "mb_port_hint";
        let mut m: HashMap<MapData, u32, u64> = HashMap::try_from(Map::HashMap(self.map(name)?))
            .map_err(|source| Error::Map { name, source })?;
        match m.remove(&u32::from(port)) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(Error::Map { name, source }),
        }
    }
}
