//! The L3/L4 policy maps: `mb_identity` (address → identity) and `mb_policy` (verdict per
//! source identity, destination identity and port); see `bpf/lib/policy.h`.

use super::*;
use crate::policy_map::PolicyEntry;

impl Datapath {
    /// Record an endpoint address's security identity (policy map input).
    pub fn set_identity(&self, ip: IpAddr, identity: u32) -> Result<()> {
        let name = "mb_identity";
        let mut m: HashMap<MapData, MbIpKey, u32> =
            HashMap::try_from(Map::HashMap(self.map(name)?))
                .map_err(|source| Error::Map { name, source })?;
        m.insert(ip_key(ip), identity, 0)
            .map_err(|source| Error::Map { name, source })
    }

    /// Record an L3/L4 decision for (source identity, destination identity,
    /// TCP port) computed at `revision`. `src_identity` 0 = any source,
    /// `dport` 0 = any port.
    pub fn set_policy(
        &self,
        src_identity: u32,
        dst_identity: u32,
        dport: u16,
        allow: bool,
        revision: u32,
    ) -> Result<()> {
        self.set_policy_entry(
            &PolicyEntry {
                src_identity,
                dst_identity,
                dport,
                allow,
            },
            revision,
        )
    }

    /// Record an entry [`policy_map`] computed, at `revision`.
    pub fn set_policy_entry(&self, entry: &PolicyEntry, revision: u32) -> Result<()> {
        let name = "mb_policy";
        let mut m: HashMap<MapData, MbPolicyKey, MbPolicyValue> =
            HashMap::try_from(Map::HashMap(self.map(name)?))
                .map_err(|source| Error::Map { name, source })?;
        m.insert(entry.key(), entry.value(revision), 0)
            .map_err(|source| Error::Map { name, source })
    }
}
