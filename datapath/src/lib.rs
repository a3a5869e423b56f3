//! membrane's eBPF datapath: the kernel programs (C, in `bpf/`, compiled by
//! `build.rs` and embedded here) and the aya-based user space that loads
//! them, attaches them to a pod's cgroup v2, pins them under a bpffs
//! directory, programs their maps and reads their counters.
//!
//! It owns: the sockops/sk_msg splice of node-local TCP socket pairs, the
//! iptables-free capture (cgroup connect4/6 + getsockopt `SO_ORIGINAL_DST`),
//! the policy-decision maps the splice consults, the per-program counters,
//! the monitor events ring buffer ([`events`]), Istio's capture annotations
//! ([`istio`]) and the agent's unix-socket API ([`api`]).
//!
//! It must never: attach to the root cgroup, load an object from a path at
//! run time (the objects are embedded), let a splice skip an L3/L4 decision
//! when enforcement is on, drop bytes a socket has not read yet (so it never
//! force-removes a spliced socket), or leave pins behind after
//! [`Datapath::detach`] of the last cgroup.

pub mod abi;
pub mod api;
pub mod events;
pub mod istio;
mod sys;

use std::{
    collections::BTreeSet,
    fs, io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, HashMap, Map, MapData, PerCpuArray, SockHash,
    },
    programs::{
        links::FdLink, BtfTracePoint, CgroupAttachMode, CgroupSockAddr, CgroupSockopt, SkLookup,
        SkMsg, SockOps,
    },
    Ebpf, EbpfLoader,
};

use abi::{
    MbAddrPort, MbBackendKey, MbCidrData, MbConfig, MbCounters, MbIpKey, MbPolicyKey,
    MbPolicyValue, MbSockKey, MbSvcValue,
};

/// Default bpffs directory for pins.
pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/membrane";

/// The embedded kernel objects, one per attach point.
mod objects {
    pub(crate) static SOCKOPS: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sockops.o"));
    pub(crate) static SK_MSG: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sk_msg.o"));
    pub(crate) static CGROUP_CONNECT: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cgroup_connect.o"));
    pub(crate) static CGROUP_SOCKOPT: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cgroup_sockopt.o"));
    pub(crate) static SK_LOOKUP: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sk_lookup.o"));
    pub(crate) static SEND_DONE: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/send_done.o"));
}

/// The embedded objects by name, for tooling and the BTF test.
pub fn embedded_objects() -> [(&'static str, &'static [u8]); 6] {
    [
        ("sockops", objects::SOCKOPS),
        ("sk_msg", objects::SK_MSG),
        ("cgroup_connect", objects::CGROUP_CONNECT),
        ("cgroup_sockopt", objects::CGROUP_SOCKOPT),
        ("sk_lookup", objects::SK_LOOKUP),
        ("send_done", objects::SEND_DONE),
    ]
}

const PROG_SOCKOPS: &str = "mb_sockops";
const PROG_SK_MSG: &str = "mb_sk_msg";
const PROG_CONNECT4: &str = "mb_connect4";
const PROG_CONNECT6: &str = "mb_connect6";
const PROG_GETSOCKOPT: &str = "mb_getsockopt";
const PROG_GETPEERNAME4: &str = "mb_getpeername4";
const PROG_GETPEERNAME6: &str = "mb_getpeername6";
const PROG_SK_LOOKUP: &str = "mb_sk_lookup";
const PROG_SEND_DONE: &str = "mb_send_done";
/// The tracepoint at the end of every sendmsg (BTF name without `btf_trace_`).
const TP_SEND_DONE: &str = "sock_send_length";
const MAP_SERVICE: &str = "mb_service";
const MAP_BACKEND: &str = "mb_backend";
type ServiceMap = HashMap<MapData, MbAddrPort, MbSvcValue>;
type BackendMap = HashMap<MapData, MbBackendKey, MbAddrPort>;
/// Cgroup programs, in attach order.
const CGROUP_PROGS: [&str; 6] = [
    PROG_SOCKOPS,
    PROG_CONNECT4,
    PROG_CONNECT6,
    PROG_GETSOCKOPT,
    PROG_GETPEERNAME4,
    PROG_GETPEERNAME6,
];

/// Errors of the datapath library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pin directory is not on a bpf filesystem.
    #[error("{0}: not on a bpf filesystem (mount one: mount -t bpf bpf /sys/fs/bpf)")]
    NotBpffs(PathBuf),
    /// The cgroup path is not a cgroup v2 directory.
    #[error("{0}: not a cgroup v2 directory")]
    NotCgroup2(PathBuf),
    /// Refused: the path is a cgroup v2 root.
    #[error("{0}: is a cgroup v2 root; membrane attaches only to a pod's own cgroup")]
    RootCgroup(PathBuf),
    /// The running kernel cannot do what a program needs.
    #[error("kernel lacks {feature}; the plain TCP path stays in use: {detail}")]
    KernelFeature {
        /// The missing feature, as a user would search for it.
        feature: &'static str,
        /// What the kernel said.
        detail: String,
    },
    /// Nothing is pinned under the directory.
    #[error("{0}: no membrane datapath is pinned here (run attach first)")]
    NotAttached(PathBuf),
    /// A map operation failed.
    #[error("map {name}: {source}")]
    Map {
        /// The map's name.
        name: &'static str,
        /// The cause.
        #[source]
        source: aya::maps::MapError,
    },
    /// A program operation failed.
    #[error("program {name}: {what}: {source}")]
    Program {
        /// The program's name.
        name: &'static str,
        /// The operation.
        what: &'static str,
        /// The cause.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// Settings the maps cannot take; nothing was written.
    #[error("invalid settings: {0}")]
    Invalid(String),
    /// A filesystem operation failed.
    #[error("{path}: {what}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The operation.
        what: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

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

/// Settings the kernel programs read from `mb_config` and the capture maps.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Settings {
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

impl Default for Settings {
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

impl Settings {
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

/// A pinned datapath under a bpffs directory. Cheap to open; every method
/// works on the pins, so a restarted agent sees what an earlier one attached.
#[derive(Clone, Debug)]
pub struct Datapath {
    dir: PathBuf,
}

impl Datapath {
    /// The pin directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn maps_dir(&self) -> PathBuf {
        self.dir.join("maps")
    }
    fn progs_dir(&self) -> PathBuf {
        self.dir.join("progs")
    }
    fn links_dir(&self) -> PathBuf {
        self.dir.join("links")
    }

    /// Open the datapath pinned under `dir` (e.g. after an agent restart).
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dp = Self { dir: dir.into() };
        if !dp.progs_dir().join(PROG_SK_MSG).exists() {
            return Err(Error::NotAttached(dp.dir));
        }
        Ok(dp)
    }

    /// Load the programs if they are not pinned under `dir` yet, attach the
    /// cgroup programs to `cgroup` (a cgroup v2 directory, never a root) and
    /// write `settings`. Idempotent per cgroup. Everything is pinned, so the
    /// attachment and established splices survive the caller's exit.
    pub fn attach(dir: impl Into<PathBuf>, cgroup: &Path, settings: &Settings) -> Result<Self> {
        let dp = Self { dir: dir.into() };
        settings.validate()?;
        check_cgroup(cgroup)?;
        for d in [
            dp.dir.clone(),
            dp.maps_dir(),
            dp.progs_dir(),
            dp.links_dir(),
        ] {
            fs::create_dir_all(&d).map_err(io_err(&d, "create pin directory"))?;
        }
        check_bpffs(&dp.dir)?;
        if !dp.progs_dir().join(PROG_SK_MSG).exists() {
            if let Err(e) = dp.load_and_pin() {
                // Leave nothing half-loaded behind; the plain path stays.
                let _ = dp.teardown();
                return Err(e);
            }
        }
        dp.set_settings(settings)?;

        let cg_ino = fs::metadata(cgroup)
            .map_err(io_err(cgroup, "stat cgroup"))?
            .ino();
        let link_dir = dp.links_dir().join(cg_ino.to_string());
        fs::create_dir_all(&link_dir).map_err(io_err(&link_dir, "create link directory"))?;
        let cg = fs::File::open(cgroup).map_err(io_err(cgroup, "open cgroup"))?;
        for name in CGROUP_PROGS {
            let pin = link_dir.join(name);
            if pin.exists() {
                continue;
            }
            // Programs pinned by an earlier version lack the getpeername pair:
            // that datapath keeps working without it until it is reloaded.
            let later = [PROG_GETPEERNAME4, PROG_GETPEERNAME6];
            if later.contains(&name) && !dp.progs_dir().join(name).exists() {
                continue;
            }
            if let Err(e) = dp.attach_cgroup_prog(name, &cg, &pin) {
                // All or nothing per cgroup: unpinning detaches the others.
                let _ = fs::remove_dir_all(&link_dir);
                return Err(e);
            }
        }
        Ok(dp)
    }

    /// Cgroup programs are attached with bpf_link (flags must be 0 there):
    /// links always coexist with other programs on the same cgroup.
    fn attach_cgroup_prog(&self, name: &'static str, cg: &fs::File, pin: &Path) -> Result<()> {
        let prog_pin = self.progs_dir().join(name);
        let perr = |what| move |source| Error::Program { name, what, source };
        let link_pin_err = |e: aya::pin::PinError| Error::Io {
            path: pin.to_path_buf(),
            what: "pin link",
            source: io::Error::other(e.to_string()),
        };
        match name {
            PROG_SOCKOPS => {
                let mut p = SockOps::from_pin(&prog_pin).map_err(perr("open pinned"))?;
                let id = p
                    .attach(cg, CgroupAttachMode::Single)
                    .map_err(perr("attach to cgroup"))?;
                let link = p.take_link(id).map_err(perr("take link"))?;
                let link = FdLink::try_from(link)
                    .map_err(|e| feature_error("BPF cgroup links (Linux 5.7+)", e))?;
                link.pin(pin).map_err(link_pin_err)?;
            }
            PROG_CONNECT4 | PROG_CONNECT6 | PROG_GETPEERNAME4 | PROG_GETPEERNAME6 => {
                use aya::programs::cgroup_sock_addr::CgroupSockAddrAttachType as T;
                let kind = match name {
                    PROG_CONNECT4 => T::Connect4,
                    PROG_CONNECT6 => T::Connect6,
                    PROG_GETPEERNAME4 => T::GetPeerName4,
                    _ => T::GetPeerName6,
                };
                let mut p =
                    CgroupSockAddr::from_pin(&prog_pin, kind).map_err(perr("open pinned"))?;
                let id = p
                    .attach(cg, CgroupAttachMode::Single)
                    .map_err(perr("attach to cgroup"))?;
                let link = p.take_link(id).map_err(perr("take link"))?;
                let link = FdLink::try_from(link)
                    .map_err(|e| feature_error("BPF cgroup links (Linux 5.7+)", e))?;
                link.pin(pin).map_err(link_pin_err)?;
            }
            _ => {
                let p = CgroupSockopt::from_pin(
                    &prog_pin,
                    aya::programs::cgroup_sockopt::CgroupSockoptAttachType::Get,
                )
                .map_err(perr("open pinned"))?;
                let fd = p.fd().map_err(perr("fd"))?;
                sys::link_create_pinned(
                    std::os::fd::AsFd::as_fd(fd),
                    std::os::fd::AsFd::as_fd(cg),
                    sys::BPF_CGROUP_GETSOCKOPT,
                    0,
                    pin,
                )
                .map_err(|e| feature_error("cgroup getsockopt hooks (Linux 5.3+)", e))?;
            }
        }
        Ok(())
    }

    /// Load the four embedded objects with their maps pinned by name under
    /// `maps/`, pin each program under `progs/`, attach sk_msg to the sockhash.
    fn load_and_pin(&self) -> Result<()> {
        let maps_dir = self.maps_dir();
        let load = |bytes: &[u8], feature: &'static str| -> Result<Ebpf> {
            EbpfLoader::new()
                .default_map_pin_directory(&maps_dir)
                .load(bytes)
                .map_err(|e| feature_error(feature, e))
        };
        let progs = self.progs_dir();
        let pin = |name: &'static str| progs.join(name);
        let pin_err = |name: &'static str| {
            let path = progs.join(name);
            move |e: aya::pin::PinError| Error::Io {
                path,
                what: "pin program",
                source: io::Error::other(e.to_string()),
            }
        };

        let mut ops = load(objects::SOCKOPS, "sockops programs and sockhash maps")?;
        let p: &mut SockOps = prog_mut(&mut ops, PROG_SOCKOPS)?;
        p.load()
            .map_err(|e| feature_error("BPF_PROG_TYPE_SOCK_OPS", e))?;
        p.pin(pin(PROG_SOCKOPS)).map_err(pin_err(PROG_SOCKOPS))?;

        let mut msg = load(objects::SK_MSG, "sk_msg programs")?;
        let sock_hash: SockHash<MapData, MbSockKey> = SockHash::try_from(
            msg.take_map("mb_sock_hash")
                .ok_or(Error::NotAttached(self.dir.clone()))?,
        )
        .map_err(|source| Error::Map {
            name: "mb_sock_hash",
            source,
        })?;
        let p: &mut SkMsg = prog_mut(&mut msg, PROG_SK_MSG)?;
        p.load()
            .map_err(|e| feature_error("BPF_PROG_TYPE_SK_MSG", e))?;
        // Attached with a plain BPF_PROG_ATTACH: the attachment lives in the
        // (pinned) map, and this process keeps no fd that would hold the map
        // alive after teardown.
        let prog_fd = p.fd().map_err(|source| Error::Program {
            name: PROG_SK_MSG,
            what: "fd",
            source,
        })?;
        sys::prog_attach(
            std::os::fd::AsFd::as_fd(prog_fd),
            std::os::fd::AsFd::as_fd(sock_hash.fd()),
            sys::BPF_SK_MSG_VERDICT,
        )
        .map_err(|e| feature_error("sk_msg attach to a sockhash", e))?;
        p.pin(pin(PROG_SK_MSG)).map_err(pin_err(PROG_SK_MSG))?;

        let mut conn = load(objects::CGROUP_CONNECT, "cgroup sock_addr programs")?;
        for name in [PROG_CONNECT4, PROG_CONNECT6] {
            let p: &mut CgroupSockAddr = prog_mut(&mut conn, name)?;
            p.load()
                .map_err(|e| feature_error("cgroup connect4/connect6 hooks", e))?;
            p.pin(pin(name)).map_err(pin_err(name))?;
        }
        for name in [PROG_GETPEERNAME4, PROG_GETPEERNAME6] {
            let p: &mut CgroupSockAddr = prog_mut(&mut conn, name)?;
            p.load()
                .map_err(|e| feature_error("cgroup getpeername hooks (Linux 5.8+)", e))?;
            p.pin(pin(name)).map_err(pin_err(name))?;
        }

        let mut opt = load(objects::CGROUP_SOCKOPT, "cgroup sockopt programs")?;
        let p: &mut CgroupSockopt = prog_mut(&mut opt, PROG_GETSOCKOPT)?;
        p.load()
            .map_err(|e| feature_error("cgroup getsockopt hooks (Linux 5.3+)", e))?;
        p.pin(pin(PROG_GETSOCKOPT))
            .map_err(pin_err(PROG_GETSOCKOPT))?;

        let mut look = load(objects::SK_LOOKUP, "sk_lookup programs (Linux 5.9+)")?;
        let p: &mut SkLookup = prog_mut(&mut look, PROG_SK_LOOKUP)?;
        p.load()
            .map_err(|e| feature_error("BPF_PROG_TYPE_SK_LOOKUP (Linux 5.9+)", e))?;
        p.pin(pin(PROG_SK_LOOKUP))
            .map_err(pin_err(PROG_SK_LOOKUP))?;

        // Optional: without it a switched socket that was ever redirected
        // into stays in the sockhash (bpf/lib/sending.h); everything else works.
        if let Err(e) = self.attach_send_done(&load) {
            eprintln!("membrane-datapath: {e}");
        }
        Ok(())
    }

    /// Load, attach and pin (as a link under `progs/`) the BTF tracepoint
    /// program that clears a socket's `mb_sending` mark when the sendmsg
    /// that set it returns. Node-wide, not per cgroup: it returns at once
    /// for sockets without a psock. Unpinned with everything else.
    fn attach_send_done(&self, load: &dyn Fn(&[u8], &'static str) -> Result<Ebpf>) -> Result<()> {
        let name = PROG_SEND_DONE;
        let perr = |what| move |source| Error::Program { name, what, source };
        let btf = aya::Btf::from_sys_fs()
            .map_err(|e| feature_error("kernel BTF (/sys/kernel/btf/vmlinux)", e))?;
        let mut obj = load(objects::SEND_DONE, "BTF tracepoint programs")?;
        let p: &mut BtfTracePoint = prog_mut(&mut obj, name)?;
        p.load(TP_SEND_DONE, &btf)
            .map_err(|e| feature_error("BTF tracepoint sock:sock_send_length (Linux 6.4+)", e))?;
        let id = p.attach().map_err(perr("attach"))?;
        let link = FdLink::from(p.take_link(id).map_err(perr("take link"))?);
        let pin = self.progs_dir().join(name);
        link.pin(&pin).map_err(|e| Error::Io {
            path: pin.clone(),
            what: "pin link",
            source: io::Error::other(e.to_string()),
        })?;
        Ok(())
    }

    /// Attach inbound capture (sk_lookup) to the pod's network namespace
    /// (`/run/netns/NAME` or `/proc/PID/ns/net`; never the host's). Pinned
    /// under `links/netns-cookie-<cookie>/`, by the namespace's cookie, which
    /// no other namespace ever has (an inode number is reused once the
    /// namespace is gone, and a pin by inode would make the next pod given
    /// that number look attached). Idempotent. Effective while the settings
    /// enable `capture_inbound`. Returns the cookie.
    pub fn attach_netns(&self, netns: &Path) -> Result<NetnsCookie> {
        let ino = fs::metadata(netns)
            .map_err(io_err(netns, "stat netns"))?
            .ino();
        let host = Path::new("/proc/1/ns/net");
        if fs::metadata(host).map(|m| m.ino()).ok() == Some(ino) {
            return Err(Error::Io {
                path: netns.to_path_buf(),
                what: "attach to the host network namespace",
                source: io::Error::from(io::ErrorKind::PermissionDenied),
            });
        }
        let cookie = netns_cookie(netns)?;
        let link_dir = self.netns_link_dir(cookie);
        let pin = link_dir.join(PROG_SK_LOOKUP);
        if pin.exists() {
            return Ok(cookie);
        }
        fs::create_dir_all(&link_dir).map_err(io_err(&link_dir, "create link directory"))?;
        let ns = fs::File::open(netns).map_err(io_err(netns, "open netns"))?;
        let name = PROG_SK_LOOKUP;
        let perr = |what| move |source| Error::Program { name, what, source };
        let mut p = SkLookup::from_pin(self.progs_dir().join(name)).map_err(perr("open pinned"))?;
        let id = p.attach(&ns).map_err(perr("attach to netns"))?;
        let link = FdLink::from(p.take_link(id).map_err(perr("take link"))?);
        link.pin(&pin).map_err(|e| Error::Io {
            path: pin.clone(),
            what: "pin link",
            source: io::Error::other(e.to_string()),
        })?;
        Ok(cookie)
    }

    fn netns_link_dir(&self, cookie: NetnsCookie) -> PathBuf {
        self.links_dir().join(format!("netns-cookie-{}", cookie.0))
    }

    /// Undo [`Datapath::attach_netns`]: unpinning the link detaches.
    pub fn detach_netns(&self, netns: &Path) -> Result<()> {
        self.detach_netns_cookie(netns_cookie(netns)?)
    }

    /// [`Datapath::detach_netns`] by the namespace's cookie, for a namespace
    /// that may be gone already (its link is defunct then, but still pinned).
    /// Nothing attached is not an error.
    pub fn detach_netns_cookie(&self, cookie: NetnsCookie) -> Result<()> {
        let link_dir = self.netns_link_dir(cookie);
        if link_dir.exists() {
            fs::remove_dir_all(&link_dir).map_err(io_err(&link_dir, "unpin links"))?;
        }
        Ok(())
    }

    /// Unpin a link an earlier version pinned by the namespace's inode
    /// (`links/netns-<inode>/`), named by the record it left. Nothing there
    /// is not an error.
    pub fn detach_netns_inode(&self, ino: u64) -> Result<()> {
        let link_dir = self.links_dir().join(format!("netns-{ino}"));
        if link_dir.exists() {
            fs::remove_dir_all(&link_dir).map_err(io_err(&link_dir, "unpin links"))?;
        }
        Ok(())
    }

    /// Whether inbound capture is attached to the namespace with this cookie.
    pub fn netns_attached(&self, cookie: NetnsCookie) -> bool {
        self.netns_link_dir(cookie).join(PROG_SK_LOOKUP).exists()
    }

    fn map(&self, name: &'static str) -> Result<MapData> {
        let path = self.maps_dir().join(name);
        if !path.exists() {
            return Err(Error::NotAttached(self.dir.clone()));
        }
        MapData::from_pin(&path).map_err(|source| Error::Map { name, source })
    }

    /// Write the settings the kernel programs read: the capture sets
    /// (replaced as a whole), then the config row that switches them on.
    /// Settings the maps cannot hold are refused before anything is written.
    pub fn set_settings(&self, settings: &Settings) -> Result<()> {
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
    pub fn settings(&self) -> Result<Settings> {
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
        Ok(Settings {
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

    /// What is attached under this directory: one entry per link directory
    /// (`<cgroup inode>`, `netns-cookie-<cookie>`, or an earlier version's
    /// `netns-<inode>`).
    pub fn attachments(&self) -> Result<Vec<String>> {
        let links = self.links_dir();
        let mut out: Vec<String> = fs::read_dir(&links)
            .map_err(io_err(&links, "list links"))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        out.sort();
        Ok(out)
    }

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
    /// CPUs (see `lib/splice_hint.h`).
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
        let name = "mb_policy";
        let mut m: HashMap<MapData, MbPolicyKey, MbPolicyValue> =
            HashMap::try_from(Map::HashMap(self.map(name)?))
                .map_err(|source| Error::Map { name, source })?;
        let key = MbPolicyKey {
            src_identity,
            dst_identity,
            dport,
            proto: 6,
            pad: 0,
        };
        let value = MbPolicyValue {
            revision,
            verdict: if allow {
                abi::VERDICT_ALLOW
            } else {
                abi::VERDICT_DENY
            },
            pad: [0; 3],
        };
        m.insert(key, value, 0)
            .map_err(|source| Error::Map { name, source })
    }

    /// The service frontends and the backend sets, as typed maps.
    fn service_maps(&self) -> Result<(ServiceMap, BackendMap)> {
        let svcs = HashMap::try_from(Map::HashMap(self.map(MAP_SERVICE)?)).map_err(|source| {
            Error::Map {
                name: MAP_SERVICE,
                source,
            }
        })?;
        let bes = HashMap::try_from(Map::HashMap(self.map(MAP_BACKEND)?)).map_err(|source| {
            Error::Map {
                name: MAP_BACKEND,
                source,
            }
        })?;
        Ok((svcs, bes))
    }

    /// Route new connects to `frontend` (a service's address and port) to
    /// one of `backends`, chosen per connection (socket-level load
    /// balancing in connect4/connect6). The new backend set is written in
    /// full before the service points at it, and the old one deleted after,
    /// so a connect sees one set or the other. No backends: connects to the
    /// service are refused.
    pub fn set_service(&self, frontend: SocketAddr, backends: &[SocketAddr]) -> Result<()> {
        let count = u16::try_from(backends.len()).map_err(|_| {
            Error::Invalid(format!(
                "service {frontend}: {} backends, at most 65535",
                backends.len()
            ))
        })?;
        let (mut svcs, mut bes) = self.service_maps()?;
        let key = addr_port(frontend);
        let old = svcs.get(&key, 0).ok();
        // A set number no service uses: one past the highest in use.
        let set = svcs
            .iter()
            .filter_map(|e| e.ok())
            .map(|(_, v)| v.backend_set)
            .max()
            .map_or(1, |m| m.wrapping_add(1).max(1));
        for (slot, b) in (0u32..).zip(backends) {
            let k = MbBackendKey {
                backend_set: set,
                slot,
            };
            bes.insert(k, addr_port(*b), 0)
                .map_err(|source| Error::Map {
                    name: MAP_BACKEND,
                    source,
                })?;
        }
        let value = MbSvcValue {
            backend_set: set,
            count,
            pad: 0,
        };
        svcs.insert(key, value, 0).map_err(|source| Error::Map {
            name: MAP_SERVICE,
            source,
        })?;
        if let Some(old) = old {
            for slot in 0..u32::from(old.count) {
                let _ = bes.remove(&MbBackendKey {
                    backend_set: old.backend_set,
                    slot,
                });
            }
        }
        Ok(())
    }

    /// Stop balancing `frontend`: connects to it go where they are addressed.
    /// Not a service is not an error.
    pub fn delete_service(&self, frontend: SocketAddr) -> Result<()> {
        let (mut svcs, mut bes) = self.service_maps()?;
        let key = addr_port(frontend);
        let Ok(old) = svcs.get(&key, 0) else {
            return Ok(());
        };
        svcs.remove(&key).map_err(|source| Error::Map {
            name: MAP_SERVICE,
            source,
        })?;
        for slot in 0..u32::from(old.count) {
            let _ = bes.remove(&MbBackendKey {
                backend_set: old.backend_set,
                slot,
            });
        }
        Ok(())
    }

    /// Every service frontend with its backends, sorted by frontend.
    pub fn services(&self) -> Result<Vec<(SocketAddr, Vec<SocketAddr>)>> {
        let (svcs, bes) = self.service_maps()?;
        let mut out = Vec::new();
        for (k, v) in svcs.iter().filter_map(|e| e.ok()) {
            let backends = (0..u32::from(v.count))
                .filter_map(|slot| {
                    bes.get(
                        &MbBackendKey {
                            backend_set: v.backend_set,
                            slot,
                        },
                        0,
                    )
                    .ok()
                })
                .map(socket_addr)
                .collect();
            out.push((socket_addr(k), backends));
        }
        out.sort();
        Ok(out)
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

    /// Detach from `cgroup`. When no cgroup is left attached, unpin the
    /// programs and maps too (see [`Datapath::teardown`] for what happens
    /// to established spliced connections).
    pub fn detach(&self, cgroup: &Path) -> Result<()> {
        let cg_ino = fs::metadata(cgroup)
            .map_err(io_err(cgroup, "stat cgroup"))?
            .ino();
        let link_dir = self.links_dir().join(cg_ino.to_string());
        if link_dir.exists() {
            fs::remove_dir_all(&link_dir).map_err(io_err(&link_dir, "unpin links"))?;
        }
        let links = self.links_dir();
        let any_left = fs::read_dir(&links)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        if !any_left {
            self.teardown()?;
        }
        Ok(())
    }

    /// Unpin everything under the directory (links, programs, maps).
    ///
    /// New connections take plain TCP at once. Established spliced sockets
    /// stay spliced until they close: each holds the sk_msg program, which
    /// holds the map, and the kernel frees both after the last one closes.
    /// They are deliberately not deleted from the sockhash: deleting a
    /// socket drops the redirected data it has not read yet (measured on
    /// 6.18: 100000 of 100000 unread bytes lost).
    pub fn teardown(&self) -> Result<()> {
        // Cgroup links first, so no new socket is inserted meanwhile.
        let links = self.links_dir();
        if links.exists() {
            fs::remove_dir_all(&links).map_err(io_err(&links, "unpin links"))?;
        }
        for d in [self.links_dir(), self.progs_dir(), self.maps_dir()] {
            if d.exists() {
                fs::remove_dir_all(&d).map_err(io_err(&d, "unpin"))?;
            }
        }
        if self.dir.exists() {
            fs::remove_dir(&self.dir).map_err(io_err(&self.dir, "remove pin directory"))?;
        }
        Ok(())
    }
}

/// An address as the kernel side keys it (see [`abi::encode_ip`]).
fn ip_key(ip: IpAddr) -> MbIpKey {
    let (ip, family) = abi::encode_ip(ip);
    MbIpKey {
        ip,
        family,
        pad: [0; 3],
    }
}

/// A network namespace's cookie (`SO_NETNS_COOKIE`): unique among every
/// namespace the running kernel ever made, unlike its inode number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NetnsCookie(pub u64);

impl std::fmt::Display for NetnsCookie {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The cookie of the network namespace `netns` (`/run/netns/NAME` or
/// `/proc/PID/ns/net`; Linux 5.14+).
pub fn netns_cookie(netns: &Path) -> Result<NetnsCookie> {
    sys::netns_cookie(netns)
        .map(NetnsCookie)
        .map_err(io_err(netns, "read the network namespace's cookie"))
}

/// A socket address as the kernel side keys it (see [`abi::encode_ip`]).
fn addr_port(a: SocketAddr) -> MbAddrPort {
    let (ip, family) = abi::encode_ip(a.ip());
    MbAddrPort {
        ip,
        port: a.port(),
        family,
        pad: 0,
    }
}

fn socket_addr(a: MbAddrPort) -> SocketAddr {
    SocketAddr::new(abi::decode_ip(a.ip, a.family), a.port)
}

fn prog_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf.program_mut(name).ok_or_else(|| Error::KernelFeature {
        feature: "an embedded program",
        detail: format!("{name} missing from the object"),
    })?;
    p.try_into().map_err(|source| Error::Program {
        name,
        what: "type",
        source,
    })
}

fn feature_error(feature: &'static str, e: impl std::fmt::Display) -> Error {
    Error::KernelFeature {
        feature,
        detail: e.to_string(),
    }
}

/// `statfs` magic numbers, from `linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

fn fs_magic(path: &Path) -> Result<i64> {
    let st = nix::sys::statfs::statfs(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        what: "statfs",
        source: e.into(),
    })?;
    #[allow(clippy::unnecessary_cast)]
    Ok(st.filesystem_type().0 as i64)
}

fn check_bpffs(dir: &Path) -> Result<()> {
    if fs_magic(dir)? != BPF_FS_MAGIC {
        return Err(Error::NotBpffs(dir.to_path_buf()));
    }
    Ok(())
}

/// A cgroup v2 directory that is not a hierarchy root (only non-root
/// cgroups have `cgroup.type`).
fn check_cgroup(path: &Path) -> Result<()> {
    if fs_magic(path)? != CGROUP2_SUPER_MAGIC {
        return Err(Error::NotCgroup2(path.to_path_buf()));
    }
    if !path.join("cgroup.type").exists() {
        return Err(Error::RootCgroup(path.to_path_buf()));
    }
    Ok(())
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup` on unified
/// hosts, `/sys/fs/cgroup/unified` on hybrid ones), from `/proc/self/mounts`.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_src, dst, kind) = (f.next()?, f.next()?, f.next()?);
        (kind == "cgroup2").then(|| PathBuf::from(dst))
    })
}

/// Mount a bpf filesystem at `/sys/fs/bpf` when `dir` is not on one yet.
pub fn ensure_bpffs(dir: &Path) -> Result<()> {
    let root = Path::new("/sys/fs/bpf");
    let probe = if dir.exists() { dir } else { root };
    if probe.exists() && fs_magic(probe)? == BPF_FS_MAGIC {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        root,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| Error::Io {
        path: root.to_path_buf(),
        what: "mount bpffs",
        source: e.into(),
    })
}
