//! The ipcache: which identity an address belongs to, by longest prefix match.
//!
//! Endpoints' addresses map to their identities, policy CIDRs to CIDR identities; an address
//! nobody claims is `reserved:world`, and loopback is `reserved:host`, as a sidecar sees it.

use crate::identity::Identity;
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Prefix → identity, looked up by longest match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpCache {
    // Keyed by prefix length (longest first when iterated in reverse), then network.
    v4: BTreeMap<u8, BTreeMap<IpNet, Identity>>,
    v6: BTreeMap<u8, BTreeMap<IpNet, Identity>>,
}

impl IpCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `prefix` to `id`, replacing an earlier mapping of the same prefix.
    pub fn insert(&mut self, prefix: IpNet, id: Identity) {
        let prefix = prefix.trunc();
        self.table_mut(&prefix)
            .entry(prefix.prefix_len())
            .or_default()
            .insert(prefix, id);
    }

    /// Removes a mapping.
    pub fn remove(&mut self, prefix: &IpNet) -> Option<Identity> {
        let prefix = prefix.trunc();
        let len = prefix.prefix_len();
        let t = self.table_mut(&prefix);
        let r = t.get_mut(&len).and_then(|m| m.remove(&prefix));
        if t.get(&len).is_some_and(BTreeMap::is_empty) {
            t.remove(&len);
        }
        r
    }

    fn table_mut(&mut self, p: &IpNet) -> &mut BTreeMap<u8, BTreeMap<IpNet, Identity>> {
        match p {
            IpNet::V4(_) => &mut self.v4,
            IpNet::V6(_) => &mut self.v6,
        }
    }

    /// The longest-matching prefix and its identity, if any prefix covers `ip`.
    pub fn lookup_prefix(&self, ip: IpAddr) -> Option<(IpNet, Identity)> {
        let ip = canonical(ip);
        let table = match ip {
            IpAddr::V4(_) => &self.v4,
            IpAddr::V6(_) => &self.v6,
        };
        for (len, map) in table.iter().rev() {
            let Ok(net) = IpNet::new(ip, *len) else {
                continue;
            };
            if let Some(id) = map.get(&net.trunc()) {
                return Some((net.trunc(), *id));
            }
        }
        None
    }

    /// The identity of `ip`: the longest match, else `host` for loopback, else `world`.
    pub fn lookup(&self, ip: IpAddr) -> Identity {
        let ip = canonical(ip);
        if let Some((_, id)) = self.lookup_prefix(ip) {
            return id;
        }
        if ip.is_loopback() {
            Identity::HOST
        } else {
            Identity::WORLD
        }
    }

    /// Every mapping, IPv4 first, longest prefixes first.
    pub fn entries(&self) -> impl Iterator<Item = (IpNet, Identity)> + '_ {
        self.v4
            .values()
            .rev()
            .chain(self.v6.values().rev())
            .flat_map(|m| m.iter().map(|(n, i)| (*n, *i)))
    }
}

/// A v4-mapped IPv6 address (what a dual-stack socket reports for an IPv4 peer) is the IPv4
/// address it carries.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins_and_defaults() {
        let mut c = IpCache::new();
        c.insert("10.0.0.0/8".parse().unwrap(), Identity(300));
        c.insert("10.1.0.0/16".parse().unwrap(), Identity(301));
        c.insert("10.1.2.3/32".parse().unwrap(), Identity(302));
        let l = |s: &str| c.lookup(s.parse().unwrap());
        assert_eq!(l("10.1.2.3"), Identity(302));
        assert_eq!(l("10.1.2.4"), Identity(301));
        assert_eq!(l("10.2.0.1"), Identity(300));
        assert_eq!(l("11.0.0.1"), Identity::WORLD);
        assert_eq!(l("127.0.0.1"), Identity::HOST);
        assert_eq!(l("::1"), Identity::HOST);
        assert_eq!(
            l("::ffff:10.1.2.3"),
            Identity(302),
            "v4-mapped peers of dual-stack sockets"
        );
        assert_eq!(
            c.clone().remove(&"10.1.0.0/16".parse().unwrap()),
            Some(Identity(301))
        );
        let mut d = c.clone();
        d.remove(&"10.1.0.0/16".parse().unwrap());
        assert_eq!(d.lookup("10.1.2.4".parse().unwrap()), Identity(300));
    }
}
