//! What a pod's datapath is told: capture and policy settings, their checks, and
//! their round trip through the `mb_config` row and the capture maps.

use super::*;
use crate::maps::ip_key;

/// Outbound capture settings (`cgroup/connect4`, `cgroup/connect6`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Capture {
    /// Where steered IPv4 connects go (IPv6 ones go to `::1`).
    pub proxy_ip4: Ipv4Addr,
    /// The proxy's outbound capture port.
    pub outbound_port: u16,
    /// Connects by this uid are the proxy's own and left alone.
    pub proxy_uid: Option<u32>,
    /// Connects from sockets with this `SO_MARK` are the proxy's own.
    pub proxy_mark: Option<u32>,
    /// Destination ports never captured (`excludeOutboundPorts`).
    pub exclude_ports: Vec<u16>,
    /// Destination prefixes never captured (`excludeOutboundIPRanges`).
    pub exclude_cidrs: Vec<ipnet::IpNet>,
    /// Destination prefixes captured (`includeOutboundIPRanges`); `None` =
    /// every destination (`*`). Exclusions win over inclusions.
    pub include_cidrs: Option<Vec<ipnet::IpNet>>,
}

impl Default for Capture {
    fn default() -> Self {
        Self {
            proxy_ip4: Ipv4Addr::LOCALHOST,
            outbound_port: 15001,
            proxy_uid: Some(1337),
            proxy_mark: Some(1337),
            exclude_ports: Vec::new(),
            exclude_cidrs: Vec::new(),
            include_cidrs: None,
        }
    }
}

/// Which inbound destination ports sk_lookup hands to the proxy.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InboundPorts {
    /// Every port but these (`includeInboundPorts: "*"` with
    /// `excludeInboundPorts`).
    AllExcept(Vec<u16>),
    /// Only these ports (`includeInboundPorts` as a list).
    Only(Vec<u16>),
}

impl Default for InboundPorts {
    fn default() -> Self {
        Self::AllExcept(Vec::new())
    }
}

/// Entries the port-set maps hold (`max_entries` in `bpf/lib/*.h`).
const MAX_PORTS: usize = 256;
/// Entries the prefix maps hold.
const MAX_CIDRS: usize = 1024;
/// Entries `mb_proxy_port` holds.
const MAX_PROXY_PORTS: usize = 64;
/// Entries `mb_pod_addr` holds.
const MAX_POD_ADDRS: usize = 16;

/// The sidecar's own ports (Istio's): admin 15000, outbound and inbound
/// capture 15001 and 15006, membrane-proxy's own listener 15007, merged
/// metrics 15020, health 15021, Envoy's Prometheus 15090. Inbound capture
/// never hands a connection to one of them to the proxy.
pub const PROXY_PORTS: [u16; 7] = [15000, 15001, 15006, 15007, 15020, 15021, 15090];

/// What a pod's datapath is set to: the settings the kernel programs read from `mb_config`
/// and the capture maps.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DatapathSettings {
    /// Outbound capture, or `None` to leave connects alone.
    pub capture: Option<Capture>,
    /// Enforce the L3/L4 policy map: a connect without a current ALLOW
    /// decision fails with EPERM, and only allowed pairs are spliced.
    pub policy_enforce: bool,
    /// Identity of the pod that owns the cgroup: the source identity of its
    /// connects in the connect-time policy decision. 0 = unknown (then only
    /// "any source" decisions can match).
    pub pod_identity: u32,
    /// How long a learned "splicing loses for this service" hint holds, in
    /// seconds; 0 = the kernel side's default (600).
    pub hint_ttl_secs: u32,
    /// Splice no new connection (the plain path, with programs attached;
    /// established splices keep theirs). For benchmarks and kill switches.
    pub no_splice: bool,
    /// The current policy revision.
    pub policy_revision: u32,
    /// Inbound capture: connections from outside the pod to its addresses
    /// are handed to the proxy's listener on `inbound_port` (needs
    /// [`Datapath::attach_netns`] and a proxy that listens after attach).
    pub capture_inbound: bool,
    /// The proxy's inbound capture port; 0 = 15006.
    pub inbound_port: u16,
    /// Inbound destination ports captured (with `capture_inbound`).
    pub inbound_ports: InboundPorts,
    /// The sidecar's own ports: never handed to the proxy by inbound capture,
    /// whatever `inbound_ports` says (default [`PROXY_PORTS`]).
    pub proxy_ports: Vec<u16>,
    /// The pod's own addresses: the proxy's connects to them deliver inbound
    /// connections to the app inside the pod and are not decided at L3/L4
    /// as egress. Without them, with `policy_enforce`, the sidecar needs an
    /// ALLOW from the pod to itself to deliver anything.
    pub pod_addrs: Vec<IpAddr>,
}

impl Default for DatapathSettings {
    fn default() -> Self {
        Self {
            capture: None,
            policy_enforce: false,
            pod_identity: 0,
            hint_ttl_secs: 0,
            no_splice: false,
            policy_revision: 0,
            capture_inbound: false,
            inbound_port: 0,
            inbound_ports: InboundPorts::default(),
            proxy_ports: PROXY_PORTS.to_vec(),
            pod_addrs: Vec::new(),
        }
    }
}

impl DatapathSettings {
    /// Check that the maps can hold the lists, before anything is written.
    pub fn validate(&self) -> Result<()> {
        let too_many = |what: &str, n: usize, max: usize| {
            Err(Error::Invalid(format!(
                "{what}: {n} entries, at most {max} fit"
            )))
        };
        if let Some(c) = &self.capture {
            if c.exclude_ports.len() > MAX_PORTS {
                return too_many("excluded outbound ports", c.exclude_ports.len(), MAX_PORTS);
            }
            if c.exclude_cidrs.len() > MAX_CIDRS {
                return too_many("excluded outbound ranges", c.exclude_cidrs.len(), MAX_CIDRS);
            }
            if let Some(inc) = &c.include_cidrs {
                if inc.len() > MAX_CIDRS {
                    return too_many("included outbound ranges", inc.len(), MAX_CIDRS);
                }
            }
        }
        let (InboundPorts::AllExcept(p) | InboundPorts::Only(p)) = &self.inbound_ports;
        if p.len() > MAX_PORTS {
            return too_many("inbound ports", p.len(), MAX_PORTS);
        }
        if self.proxy_ports.len() > MAX_PROXY_PORTS {
            return too_many("proxy ports", self.proxy_ports.len(), MAX_PROXY_PORTS);
        }
        if self.pod_addrs.len() > MAX_POD_ADDRS {
            return too_many("pod addresses", self.pod_addrs.len(), MAX_POD_ADDRS);
        }
        Ok(())
    }

    fn to_abi(&self) -> MbConfig {
        let mut cfg = MbConfig {
            proxy_uid: abi::UID_NONE,
            inbound_port: if self.inbound_port == 0 {
                15006
            } else {
                self.inbound_port
            },
            policy_revision: self.policy_revision,
            hint_ttl_secs: self.hint_ttl_secs,
            pod_identity: self.pod_identity,
            ..MbConfig::default()
        };
        if self.policy_enforce {
            cfg.flags |= abi::CFG_POLICY_ENFORCE;
        }
        if self.no_splice {
            cfg.flags |= abi::CFG_NO_SPLICE;
        }
        if self.capture_inbound {
            cfg.flags |= abi::CFG_CAPTURE_INBOUND;
        }
        if matches!(self.inbound_ports, InboundPorts::Only(_)) {
            cfg.flags |= abi::CFG_INBOUND_ONLY_LISTED;
        }
        if let Some(c) = &self.capture {
            cfg.flags |= abi::CFG_CAPTURE;
            if c.include_cidrs.is_some() {
                cfg.flags |= abi::CFG_OUTBOUND_ONLY_LISTED;
            }
            cfg.capture_ip4 = u32::from_ne_bytes(c.proxy_ip4.octets());
            cfg.outbound_port = c.outbound_port;
            cfg.proxy_uid = c.proxy_uid.unwrap_or(abi::UID_NONE);
            cfg.proxy_mark = c.proxy_mark.unwrap_or(0);
        }
        cfg
    }
}

impl Datapath {
    /// Write the settings the kernel programs read: the capture sets
    /// (replaced as a whole), then the config row that switches them on.
    /// Settings the maps cannot hold are refused before anything is written.
    pub fn set_settings(&self, settings: &DatapathSettings) -> Result<()> {
        settings.validate()?;
        let empty = Capture {
            exclude_ports: Vec::new(),
            exclude_cidrs: Vec::new(),
            include_cidrs: None,
            ..Capture::default()
        };
        let c = settings.capture.as_ref().unwrap_or(&empty);
        self.replace_ports("mb_cap_skip_port", &c.exclude_ports)?;
        self.replace_cidrs("mb_cap_skip_cidr", &c.exclude_cidrs)?;
        self.replace_cidrs(
            "mb_cap_incl_cidr",
            c.include_cidrs.as_deref().unwrap_or(&[]),
        )?;
        let (InboundPorts::AllExcept(p) | InboundPorts::Only(p)) = &settings.inbound_ports;
        self.replace_ports("mb_cap_in_port", p)?;
        self.replace_ports("mb_proxy_port", &settings.proxy_ports)?;
        self.replace_addrs("mb_pod_addr", &settings.pod_addrs)?;

        let name = "mb_config";
        let mut cfg: Array<MapData, MbConfig> = Array::try_from(Map::Array(self.map(name)?))
            .map_err(|source| Error::Map { name, source })?;
        cfg.set(0, settings.to_abi(), 0)
            .map_err(|source| Error::Map { name, source })
    }

    fn replace_ports(&self, name: &'static str, ports: &[u16]) -> Result<()> {
        let mut m: HashMap<MapData, u32, u8> = HashMap::try_from(Map::HashMap(self.map(name)?))
            .map_err(|source| Error::Map { name, source })?;
        let old: Vec<u32> = m.keys().filter_map(|k| k.ok()).collect();
        for k in old {
            if !ports.contains(&u16::try_from(k).unwrap_or(0)) {
                let _ = m.remove(&k);
            }
        }
        for p in ports {
            m.insert(u32::from(*p), 1, 0)
                .map_err(|source| Error::Map { name, source })?;
        }
        Ok(())
    }

    fn replace_addrs(&self, name: &'static str, addrs: &[IpAddr]) -> Result<()> {
        let mut m: HashMap<MapData, MbIpKey, u8> = HashMap::try_from(Map::HashMap(self.map(name)?))
            .map_err(|source| Error::Map { name, source })?;
        let keys: Vec<MbIpKey> = addrs.iter().map(|a| ip_key(*a)).collect();
        let old: Vec<MbIpKey> = m.keys().filter_map(|k| k.ok()).collect();
        for k in old {
            if !keys.contains(&k) {
                let _ = m.remove(&k);
            }
        }
        for k in keys {
            m.insert(k, 1, 0)
                .map_err(|source| Error::Map { name, source })?;
        }
        Ok(())
    }

    fn read_addrs(&self, name: &'static str) -> Result<Vec<IpAddr>> {
        let m: HashMap<MapData, MbIpKey, u8> = HashMap::try_from(Map::HashMap(self.map(name)?))
            .map_err(|source| Error::Map { name, source })?;
        let mut out: Vec<IpAddr> = m
            .keys()
            .filter_map(|k| k.ok())
            .map(|k| abi::decode_ip(k.ip, k.family))
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    fn read_ports(&self, name: &'static str) -> Result<Vec<u16>> {
        let m: HashMap<MapData, u32, u8> = HashMap::try_from(Map::HashMap(self.map(name)?))
            .map_err(|source| Error::Map { name, source })?;
        let mut out: Vec<u16> = m
            .keys()
            .filter_map(|k| k.ok())
            .filter_map(|k| u16::try_from(k).ok())
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    fn replace_cidrs(&self, name: &'static str, cidrs: &[ipnet::IpNet]) -> Result<()> {
        let mut m: LpmTrie<MapData, MbCidrData, u8> =
            LpmTrie::try_from(Map::LpmTrie(self.map(name)?))
                .map_err(|source| Error::Map { name, source })?;
        let old: Vec<Key<MbCidrData>> = m.keys().filter_map(|k| k.ok()).collect();
        for k in old {
            let _ = m.remove(&k);
        }
        for net in cidrs {
            let (ip, family) = abi::encode_ip(net.network());
            // A v4-mapped IPv6 prefix is stored as the IPv4 prefix it covers.
            let plen = match (net, family) {
                (ipnet::IpNet::V6(n), abi::AF_INET) => n.prefix_len().saturating_sub(96),
                _ => net.prefix_len(),
            };
            let data = MbCidrData {
                family: u32::from(family),
                ip,
            };
            m.insert(&Key::new(32 + u32::from(plen), data), 1, 0)
                .map_err(|source| Error::Map { name, source })?;
        }
        Ok(())
    }

    fn read_cidrs(&self, name: &'static str) -> Result<Vec<ipnet::IpNet>> {
        let m: LpmTrie<MapData, MbCidrData, u8> = LpmTrie::try_from(Map::LpmTrie(self.map(name)?))
            .map_err(|source| Error::Map { name, source })?;
        let mut out = Vec::new();
        for k in m.keys().filter_map(|k| k.ok()) {
            let data = k.data();
            let ip = abi::decode_ip(data.ip, u8::try_from(data.family).unwrap_or(0));
            let plen = u8::try_from(k.prefix_len().saturating_sub(32)).unwrap_or(0);
            if let Ok(net) = ipnet::IpNet::new(ip, plen) {
                out.push(net);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// The settings in force, read back from the maps (what
    /// [`Datapath::set_settings`] last wrote).
    pub fn settings(&self) -> Result<DatapathSettings> {
        let name = "mb_config";
        let arr: Array<MapData, MbConfig> = Array::try_from(Map::Array(self.map(name)?))
            .map_err(|source| Error::Map { name, source })?;
        let cfg = arr
            .get(&0, 0)
            .map_err(|source| Error::Map { name, source })?;
        let some_id = |v: u32, none: u32| (v != none).then_some(v);
        let capture = if cfg.flags & abi::CFG_CAPTURE != 0 {
            Some(Capture {
                proxy_ip4: Ipv4Addr::from(cfg.capture_ip4.to_ne_bytes()),
                outbound_port: cfg.outbound_port,
                proxy_uid: some_id(cfg.proxy_uid, abi::UID_NONE),
                proxy_mark: some_id(cfg.proxy_mark, 0),
                exclude_ports: self.read_ports("mb_cap_skip_port")?,
                exclude_cidrs: self.read_cidrs("mb_cap_skip_cidr")?,
                include_cidrs: if cfg.flags & abi::CFG_OUTBOUND_ONLY_LISTED != 0 {
                    Some(self.read_cidrs("mb_cap_incl_cidr")?)
                } else {
                    None
                },
            })
        } else {
            None
        };
        let ports = self.read_ports("mb_cap_in_port")?;
        Ok(DatapathSettings {
            capture,
            policy_enforce: cfg.flags & abi::CFG_POLICY_ENFORCE != 0,
            pod_identity: cfg.pod_identity,
            hint_ttl_secs: cfg.hint_ttl_secs,
            no_splice: cfg.flags & abi::CFG_NO_SPLICE != 0,
            policy_revision: cfg.policy_revision,
            capture_inbound: cfg.flags & abi::CFG_CAPTURE_INBOUND != 0,
            inbound_port: cfg.inbound_port,
            inbound_ports: if cfg.flags & abi::CFG_INBOUND_ONLY_LISTED != 0 {
                InboundPorts::Only(ports)
            } else {
                InboundPorts::AllExcept(ports)
            },
            proxy_ports: self.read_ports("mb_proxy_port")?,
            pod_addrs: self.read_addrs("mb_pod_addr")?,
        })
    }
}
