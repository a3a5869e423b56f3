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
//!
//! Rooms: `loader` (the embedded objects; load, pin, attach and detach), `bpffs` (the
//! pin directory layout, bpffs and cgroup checks, teardown), `maps` (the policy, service
//! and splice maps), `stats` (counters and the event ring), `settings`, `netns` (sk_lookup
//! per network namespace) and [`policy_map`] (an endpoint's policy rules as `mb_policy`
//! entries, and the order a change is applied in). Each room holds one `impl Datapath` block.
//! [`node`] is the node-wide packet path (tc): [`NodeDatapath`] and each pod's tc programs.

pub mod abi;
pub mod api;
mod bpffs;
pub mod events;
pub mod istio;
pub mod lb;
mod loader;
mod maps;
mod netns;
pub mod node;
pub mod policy_map;
mod settings;
mod stats;
mod sys;

use bpffs::PinLayout;
pub use bpffs::{cgroup2_mount, ensure_bpffs};
/// The prefix type of [`Datapath::sync_ipcache`], re-exported for callers without `ipnet`.
pub use ipnet::IpNet;
pub use lb::LbService;
pub use loader::embedded_objects;
pub use maps::splice::SockEntry;
pub use netns::{netns_cookie, NetnsCookie};
pub use node::{
    CtEntry, CtState, IpcacheEntry, LbAlgorithm, LocalEndpoint, NodeDatapath, NodeSettings,
    Overlay, TcStat,
};
pub use settings::{Capture, DatapathSettings, InboundPorts};

pub use stats::{ProgCounters, SpliceStats};

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
    MbAddrPort, MbBackendKey, MbCidrData, MbConfig, MbCounters, MbIpKey, MbSockKey, MbSvcValue,
};

/// Default bpffs directory for pins.
pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/membrane";

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
    /// Attaching a program to a network device failed.
    #[error("program {program}: attach to device {device}: {source}")]
    DeviceAttach {
        /// The program.
        program: &'static str,
        /// The device, by name.
        device: String,
        /// The cause.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// Settings the maps cannot take; nothing was written.
    #[error("invalid settings: {0}")]
    Invalid(String),
    /// An ipcache the map cannot take; nothing was written.
    #[error("invalid ipcache: {0}")]
    InvalidIpcache(String),
    /// A policy the policy map cannot take; nothing was written.
    #[error(transparent)]
    Policy(#[from] policy_map::PolicyMapError),
    /// Services the service maps cannot take, or a service map failed.
    #[error(transparent)]
    Lb(#[from] lb::LbError),
    /// A prefilter deny set the maps cannot take; nothing was written.
    #[error(transparent)]
    Prefilter(#[from] node::PrefilterError),
    /// A network device could not be read, created or changed.
    #[error("network device {0}")]
    Device(String),
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

fn feature_error(feature: &'static str, e: impl std::fmt::Display) -> Error {
    Error::KernelFeature {
        feature,
        detail: e.to_string(),
    }
}

/// A pinned datapath under a bpffs directory. Cheap to open; every method
/// works on the pins, so a restarted agent sees what an earlier one attached.
#[derive(Clone, Debug)]
pub struct Datapath {
    dir: PathBuf,
}
