//! The XDP prefilter, user-space side: `mb_xdp_prefilter` (`bpf/bpf_xdp.c`) on the
//! underlay device drops packets whose source is in a denied prefix before the stack.
//!
//! The program is node-wide: loaded once into the node directory with the node's maps
//! (`mb_prefilter4`, `mb_prefilter6`, `mb_prefilter_stats`, created by `bpf_node.c`) and
//! the node's event ring (`events/`), its XDP link pinned under
//! `links/prefilter-<ifindex>/<mode>`, so an agent restart keeps it and the pin's name
//! says whether the driver runs it (native) or the stack does (generic).
//!
//! [`NodeDatapath::sync_prefilter`] takes the whole deny set: validated first (nothing is
//! written for a set the maps cannot take), then the new prefixes inserted and only then
//! the old ones deleted. Each LPM update is atomic for its prefix, so an address both the
//! old and the new set deny is denied throughout, and one only the new set denies is
//! denied from its insert on.

use std::{
    collections::BTreeSet,
    fmt, fs, io,
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    str::FromStr,
};

use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Map, MapData, PerCpuArray,
    },
    programs::{links::FdLink, SchedClassifier, Xdp, XdpMode},
    EbpfLoader,
};
use ipnet::IpNet;
use serde::Serialize;

use super::{overlay::EVENT_MAPS, NodeDatapath};
use crate::{
    abi::{self, MbTcStat},
    bpffs::PinLayout,
    feature_error, io_err,
    loader::prog_mut,
    Error, Result,
};

/// The XDP program.
pub(crate) const PROG_XDP_PREFILTER: &str = "mb_xdp_prefilter";
/// The same decision at tc ingress: the benchmark's reference, never attached by the agent.
pub(crate) const PROG_PREFILTER_TC: &str = "mb_prefilter_tc";
const MAP4: &str = "mb_prefilter4";
const MAP6: &str = "mb_prefilter6";
const STATS: &str = "mb_prefilter_stats";

/// At most this many prefixes per family in a deny set: half the map, so that a whole
/// replacement fits beside the set it replaces (new ones go in before old ones go out).
pub const PREFILTER_MAX: usize = abi::PF_MAP_MAX / 2;

/// What a deny set or an XDP setting is refused for; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum PrefilterError {
    /// An entry is not a CIDR the prefilter can hold.
    #[error("prefilter entry {entry:?}: {why}")]
    Entry {
        /// The entry as given.
        entry: String,
        /// What is wrong with it.
        why: String,
    },
    /// The set is larger than the maps can take beside the old one.
    #[error("prefilter: {count} {family} prefixes, at most {PREFILTER_MAX} are allowed")]
    TooMany {
        /// How many were given.
        count: usize,
        /// `IPv4` or `IPv6`.
        family: &'static str,
    },
    /// An XDP mode name that is not one.
    #[error("xdp mode {0:?}: expected auto, native or generic")]
    Mode(String),
}

/// Where the XDP program runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpAttachMode {
    /// Native where the driver supports it (veth, most NICs), else generic.
    #[default]
    Auto,
    /// In the driver, before an skb exists; refused by a driver without XDP.
    Native,
    /// In the stack after the skb is built (any device; slower).
    Generic,
}

impl fmt::Display for XdpAttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpAttachMode::Auto => "auto",
            XdpAttachMode::Native => "native",
            XdpAttachMode::Generic => "generic",
        })
    }
}

impl FromStr for XdpAttachMode {
    type Err = PrefilterError;
    fn from_str(s: &str) -> std::result::Result<Self, PrefilterError> {
        match s {
            "auto" => Ok(XdpAttachMode::Auto),
            "native" => Ok(XdpAttachMode::Native),
            "generic" => Ok(XdpAttachMode::Generic),
            other => Err(PrefilterError::Mode(other.to_owned())),
        }
    }
}

/// The prefilter's counters, summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PrefilterStats {
    /// Packets passed to the stack.
    pub passed: u64,
    /// IPv4 packets dropped: source denied.
    pub denied_v4: u64,
    /// IPv6 packets dropped: source denied.
    pub denied_v6: u64,
    /// Packets dropped: IPv4/IPv6 header truncated.
    pub malformed: u64,
    /// Bytes dropped (all three reasons).
    pub dropped_bytes: u64,
}

/// What a [`NodeDatapath::sync_prefilter`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PrefilterChanges {
    /// Prefixes inserted.
    pub added: usize,
    /// Prefixes deleted.
    pub deleted: usize,
}

/// Parse CIDRs (`10.0.0.0/8`, `2001:db8::/32`; a bare address is its host prefix), with the
/// parser the control plane checks `PrefilterDenyList` objects with. An entry with host bits
/// set is refused rather than widened or narrowed silently.
pub fn parse_prefixes<S: AsRef<str>>(
    items: &[S],
) -> std::result::Result<BTreeSet<IpNet>, PrefilterError> {
    let mut out = BTreeSet::new();
    for item in items {
        let s = item.as_ref().trim();
        let net = membrane_api::agent::prefilter::parse_entry(s).map_err(|why| {
            PrefilterError::Entry {
                entry: s.to_owned(),
                why,
            }
        })?;
        out.insert(net);
    }
    check_size(&out)?;
    Ok(out)
}

fn check_size(set: &BTreeSet<IpNet>) -> std::result::Result<(), PrefilterError> {
    let v4 = set.iter().filter(|n| matches!(n, IpNet::V4(_))).count();
    for (count, family) in [(v4, "IPv4"), (set.len() - v4, "IPv6")] {
        if count > PREFILTER_MAX {
            return Err(PrefilterError::TooMany { count, family });
        }
    }
    Ok(())
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> Error {
    move |source| Error::Map { name, source }
}

impl NodeDatapath {
    fn lpm4(&self) -> Result<LpmTrie<MapData, u32, u32>> {
        LpmTrie::try_from(Map::LpmTrie(self.map(MAP4)?)).map_err(map_err(MAP4))
    }

    fn lpm6(&self) -> Result<LpmTrie<MapData, [u8; 16], u32>> {
        LpmTrie::try_from(Map::LpmTrie(self.map(MAP6)?)).map_err(map_err(MAP6))
    }

    /// Load (once) the prefilter object: both programs pinned under `progs/`, the node's
    /// maps and event ring. Returns the pins of the XDP and the tc program.
    pub fn load_prefilter_programs(&self) -> Result<(PathBuf, PathBuf)> {
        let xdp_pin = self.progs_dir().join(PROG_XDP_PREFILTER);
        let tc_pin = self.progs_dir().join(PROG_PREFILTER_TC);
        if xdp_pin.exists() && tc_pin.exists() {
            return Ok((xdp_pin, tc_pin));
        }
        let events = self.dir().join("events");
        fs::create_dir_all(&events).map_err(io_err(&events, "create pin directory"))?;
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(self.maps_dir());
        for m in EVENT_MAPS {
            loader.map_pin_path(m, events.join(m));
        }
        let mut obj = loader
            .load(crate::loader::objects::XDP)
            .map_err(|e| feature_error("XDP programs (BPF_PROG_TYPE_XDP)", e))?;
        let pin_err = |pin: &PathBuf| {
            let path = pin.clone();
            move |e: aya::pin::PinError| Error::Io {
                path,
                what: "pin program",
                source: io::Error::other(e.to_string()),
            }
        };
        if !xdp_pin.exists() {
            let p: &mut Xdp = prog_mut(&mut obj, PROG_XDP_PREFILTER)?;
            p.load()
                .map_err(|e| feature_error("XDP programs (BPF_PROG_TYPE_XDP)", e))?;
            p.pin(&xdp_pin).map_err(pin_err(&xdp_pin))?;
        }
        if !tc_pin.exists() {
            let p: &mut SchedClassifier = prog_mut(&mut obj, PROG_PREFILTER_TC)?;
            p.load()
                .map_err(|e| feature_error("tc programs (BPF_PROG_TYPE_SCHED_CLS)", e))?;
            p.pin(&tc_pin).map_err(pin_err(&tc_pin))?;
        }
        Ok((xdp_pin, tc_pin))
    }

    /// The mode the prefilter runs in on `ifindex`, when it is attached there.
    pub fn prefilter_attached(&self, ifindex: u32) -> Option<XdpAttachMode> {
        let dir = self.links_dir().join(format!("prefilter-{ifindex}"));
        [XdpAttachMode::Native, XdpAttachMode::Generic]
            .into_iter()
            .find(|m| dir.join(m.to_string()).exists())
    }

    /// Attach `mb_xdp_prefilter` to `ifname` (in this network namespace) in `mode`
    /// (`Auto`: native, else generic when the driver refuses native) and return the
    /// mode it runs in. Idempotent: a pinned link on that device in a mode that satisfies
    /// `mode` stays; a link on another device (an earlier underlay) is removed.
    pub fn attach_prefilter(&self, ifname: &str, mode: XdpAttachMode) -> Result<XdpAttachMode> {
        let ifindex = super::device(ifname)?.ifindex;
        let dir = self.links_dir().join(format!("prefilter-{ifindex}"));
        self.remove_links("prefilter", Some(&dir))?;
        match (self.prefilter_attached(ifindex), mode) {
            (Some(have), XdpAttachMode::Auto) => return Ok(have),
            (Some(have), want) if have == want => return Ok(have),
            (Some(_), _) => {
                fs::remove_dir_all(&dir).map_err(io_err(&dir, "unpin prefilter link"))?
            }
            (None, _) => {}
        }
        let (prog, _) = self.load_prefilter_programs()?;
        fs::create_dir_all(&dir).map_err(io_err(&dir, "create link directory"))?;
        let tries: &[XdpAttachMode] = match mode {
            XdpAttachMode::Auto => &[XdpAttachMode::Native, XdpAttachMode::Generic],
            XdpAttachMode::Native => &[XdpAttachMode::Native],
            XdpAttachMode::Generic => &[XdpAttachMode::Generic],
        };
        let mut last = None;
        for &m in tries {
            match attach_xdp(&prog, ifname, ifindex, m, &dir.join(m.to_string())) {
                Ok(()) => return Ok(m),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one mode was tried"))
    }

    /// Detach the prefilter from whatever device it is on (the deny maps keep their
    /// contents).
    pub fn detach_prefilter(&self) -> Result<()> {
        self.remove_links("prefilter", None)
    }

    /// The denied prefixes, read back from the maps.
    pub fn prefilter(&self) -> Result<BTreeSet<IpNet>> {
        let mut out = BTreeSet::new();
        for k in self.lpm4()?.keys() {
            let k = k.map_err(map_err(MAP4))?;
            let a = Ipv4Addr::from(u32::from_be(k.data()));
            out.insert(IpNet::new(a.into(), k.prefix_len() as u8).map_err(|e| {
                Error::Invalid(format!("{MAP4}: prefix length {}: {e}", k.prefix_len()))
            })?);
        }
        for k in self.lpm6()?.keys() {
            let k = k.map_err(map_err(MAP6))?;
            let a = Ipv6Addr::from(k.data());
            out.insert(IpNet::new(a.into(), k.prefix_len() as u8).map_err(|e| {
                Error::Invalid(format!("{MAP6}: prefix length {}: {e}", k.prefix_len()))
            })?);
        }
        Ok(out)
    }

    /// Make the deny maps hold exactly `want`: the new prefixes inserted first, then the
    /// ones no longer wanted deleted (never an empty or half state for what both sets
    /// deny). A set larger than [`PREFILTER_MAX`] per family is refused before anything is
    /// written. Prefixes are stored with their host bits cleared.
    pub fn sync_prefilter(&self, want: &BTreeSet<IpNet>) -> Result<PrefilterChanges> {
        let want: BTreeSet<IpNet> = want.iter().map(IpNet::trunc).collect();
        check_size(&want).map_err(Error::Prefilter)?;
        let have = self.prefilter()?;
        let (mut m4, mut m6) = (self.lpm4()?, self.lpm6()?);
        let mut changes = PrefilterChanges::default();
        for net in want.difference(&have) {
            match net {
                IpNet::V4(n) => m4.insert(&key4(n), 1, 0).map_err(map_err(MAP4))?,
                IpNet::V6(n) => m6.insert(&key6(n), 1, 0).map_err(map_err(MAP6))?,
            }
            changes.added += 1;
        }
        for net in have.difference(&want) {
            match net {
                IpNet::V4(n) => m4.remove(&key4(n)).map_err(map_err(MAP4))?,
                IpNet::V6(n) => m6.remove(&key6(n)).map_err(map_err(MAP6))?,
            }
            changes.deleted += 1;
        }
        Ok(changes)
    }

    /// The prefilter's counters, summed over CPUs.
    pub fn prefilter_stats(&self) -> Result<PrefilterStats> {
        let m: PerCpuArray<MapData, MbTcStat> =
            PerCpuArray::try_from(Map::PerCpuArray(self.map(STATS)?)).map_err(map_err(STATS))?;
        let row = |i: u32| -> Result<(u64, u64)> {
            let per_cpu = m.get(&i, 0).map_err(map_err(STATS))?;
            Ok(per_cpu
                .iter()
                .fold((0, 0), |(p, b), s| (p + s.packets, b + s.bytes)))
        };
        let (passed, _) = row(abi::PF_STAT_PASS)?;
        let (denied_v4, b4) = row(abi::PF_STAT_DENIED4)?;
        let (denied_v6, b6) = row(abi::PF_STAT_DENIED6)?;
        let (malformed, bm) = row(abi::PF_STAT_MALFORMED)?;
        Ok(PrefilterStats {
            passed,
            denied_v4,
            denied_v6,
            malformed,
            dropped_bytes: b4 + b6 + bm,
        })
    }
}

fn key4(n: &ipnet::Ipv4Net) -> Key<u32> {
    Key::new(u32::from(n.prefix_len()), u32::from(n.network()).to_be())
}

fn key6(n: &ipnet::Ipv6Net) -> Key<[u8; 16]> {
    Key::new(u32::from(n.prefix_len()), n.network().octets())
}

/// Attach the pinned XDP program to `ifname` in `mode` through a bpf_link pinned at `pin`.
fn attach_xdp(
    prog: &std::path::Path,
    ifname: &str,
    ifindex: u32,
    mode: XdpAttachMode,
    pin: &std::path::Path,
) -> Result<()> {
    let name = PROG_XDP_PREFILTER;
    let mut p =
        Xdp::from_pin(prog, aya_obj::programs::XdpAttachType::Interface).map_err(|source| {
            Error::Program {
                name,
                what: "open pinned",
                source,
            }
        })?;
    let flags = match mode {
        XdpAttachMode::Native => XdpMode::Driver,
        XdpAttachMode::Generic | XdpAttachMode::Auto => XdpMode::Skb,
    };
    let id = p
        .attach_to_if_index(ifindex, flags)
        .map_err(|source| Error::DeviceAttach {
            program: name,
            device: format!("{ifname} (xdp {mode})"),
            source,
        })?;
    let link = p.take_link(id).map_err(|source| Error::Program {
        name,
        what: "take link",
        source,
    })?;
    let link =
        FdLink::try_from(link).map_err(|e| feature_error("XDP bpf_links (Linux 5.9+)", e))?;
    link.pin(pin).map_err(|e| Error::Io {
        path: pin.to_path_buf(),
        what: "pin xdp link",
        source: io::Error::other(e.to_string()),
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_bad_ones_are_named() {
        let set =
            parse_prefixes(&["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", " fd00::1 "]).unwrap();
        let want: BTreeSet<IpNet> = ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32", "fd00::1/128"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(set, want);
        let e = parse_prefixes(&["10.0.0.0/8", "10.1.2.3/8"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"10.1.2.3/8\": host bits set (the prefix is 10.0.0.0/8)"),
            "{e}"
        );
        let e = parse_prefixes(&["10.0.0.0/33"]).unwrap_err().to_string();
        assert!(e.contains("\"10.0.0.0/33\": not a CIDR"), "{e}");
        let e = parse_prefixes(&["example.com"]).unwrap_err().to_string();
        assert!(
            e.contains("\"example.com\": not a CIDR or an address"),
            "{e}"
        );
    }

    #[test]
    fn sets_larger_than_half_the_map_are_refused() {
        let many: Vec<String> = (0..=PREFILTER_MAX as u32)
            .map(|i| Ipv4Addr::from(0x0a00_0000 + i).to_string())
            .collect();
        let e = parse_prefixes(&many).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "{} IPv4 prefixes, at most {PREFILTER_MAX}",
                PREFILTER_MAX + 1
            )),
            "{e}"
        );
        assert_eq!(parse_prefixes(&many[1..]).unwrap().len(), PREFILTER_MAX);
    }

    #[test]
    fn keys_are_network_order() {
        let k = key4(&"10.1.0.0/16".parse().unwrap());
        assert_eq!(k.prefix_len(), 16);
        assert_eq!(k.data().to_ne_bytes(), [10, 1, 0, 0]);
        assert_eq!(
            "native".parse::<XdpAttachMode>().unwrap(),
            XdpAttachMode::Native
        );
        assert!("driver"
            .parse::<XdpAttachMode>()
            .unwrap_err()
            .to_string()
            .contains("expected auto, native or generic"));
    }
}
