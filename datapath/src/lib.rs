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
mod netns;
mod service;
mod settings;
mod sys;

pub use netns::{netns_cookie, NetnsCookie};
pub use settings::{Capture, InboundPorts, Settings};

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

    fn map(&self, name: &'static str) -> Result<MapData> {
        let path = self.maps_dir().join(name);
        if !path.exists() {
            return Err(Error::NotAttached(self.dir.clone()));
        }
        MapData::from_pin(&path).map_err(|source| Error::Map { name, source })
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
