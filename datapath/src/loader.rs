//! Loading: the embedded kernel objects, loading and pinning their programs and maps,
//! attaching the cgroup programs to a pod's cgroup and detaching them.

use super::*;
use crate::bpffs::{check_bpffs, check_cgroup};

/// The embedded kernel objects, one per attach point.
pub(crate) mod objects {
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
    /// The node-wide maps of the packet path (no programs).
    pub(crate) static NODE: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/node.o"));
    /// A pod's tc programs (one instance per endpoint).
    pub(crate) static LXC: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lxc.o"));
    pub(crate) static OVERLAY: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/overlay.o"));
    pub(crate) static HOST: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/host.o"));
    /// The service device's tc program (the node's own traffic to ClusterIPs).
    pub(crate) static SVC: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/svc.o"));
    /// The underlay device's XDP prefilter (and its tc twin, the benchmark's reference).
    pub(crate) static XDP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp.o"));
}

/// The embedded objects by name, for tooling and the BTF test.
pub fn embedded_objects() -> [(&'static str, &'static [u8]); 12] {
    [
        ("sockops", objects::SOCKOPS),
        ("sk_msg", objects::SK_MSG),
        ("cgroup_connect", objects::CGROUP_CONNECT),
        ("cgroup_sockopt", objects::CGROUP_SOCKOPT),
        ("sk_lookup", objects::SK_LOOKUP),
        ("send_done", objects::SEND_DONE),
        ("node", objects::NODE),
        ("lxc", objects::LXC),
        ("overlay", objects::OVERLAY),
        ("host", objects::HOST),
        ("svc", objects::SVC),
        ("xdp", objects::XDP),
    ]
}

pub(crate) const PROG_SOCKOPS: &str = "mb_sockops";
pub(crate) const PROG_SK_MSG: &str = "mb_sk_msg";
pub(crate) const PROG_CONNECT4: &str = "mb_connect4";
pub(crate) const PROG_CONNECT6: &str = "mb_connect6";
pub(crate) const PROG_GETSOCKOPT: &str = "mb_getsockopt";
pub(crate) const PROG_GETPEERNAME4: &str = "mb_getpeername4";
pub(crate) const PROG_GETPEERNAME6: &str = "mb_getpeername6";
pub(crate) const PROG_SK_LOOKUP: &str = "mb_sk_lookup";
pub(crate) const PROG_SEND_DONE: &str = "mb_send_done";
/// The tracepoint at the end of every sendmsg (BTF name without `btf_trace_`).
pub(crate) const TP_SEND_DONE: &str = "sock_send_length";
/// Cgroup programs, in attach order.
pub(crate) const CGROUP_PROGS: [&str; 6] = [
    PROG_SOCKOPS,
    PROG_CONNECT4,
    PROG_CONNECT6,
    PROG_GETSOCKOPT,
    PROG_GETPEERNAME4,
    PROG_GETPEERNAME6,
];

impl Datapath {
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
    pub fn attach(
        dir: impl Into<PathBuf>,
        cgroup: &Path,
        settings: &DatapathSettings,
    ) -> Result<Self> {
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
}

pub(crate) fn prog_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T>
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
