//! The pin directory: its layout (`maps/`, `progs/`, `links/`), what is attached, tearing
//! it down, and the bpffs and cgroup v2 checks and mounts.

use super::*;

/// The layout every pin directory shares, an endpoint's ([`Datapath`]) and the node's
/// ([`crate::NodeDatapath`]): `maps/`, `progs/`, `links/` under its root.
pub(crate) trait PinLayout {
    /// The pin directory itself.
    fn pin_root(&self) -> &Path;

    fn maps_dir(&self) -> PathBuf {
        self.pin_root().join("maps")
    }
    fn progs_dir(&self) -> PathBuf {
        self.pin_root().join("progs")
    }
    fn links_dir(&self) -> PathBuf {
        self.pin_root().join("links")
    }

    /// A pinned map of this directory; not pinned (yet, or any more) is `NotAttached`.
    fn map(&self, name: &'static str) -> Result<MapData> {
        let path = self.maps_dir().join(name);
        if !path.exists() {
            return Err(Error::NotAttached(self.pin_root().to_path_buf()));
        }
        MapData::from_pin(&path).map_err(|source| Error::Map { name, source })
    }
}

impl PinLayout for Datapath {
    fn pin_root(&self) -> &Path {
        &self.dir
    }
}

impl Datapath {
    /// The pin directory.
    pub fn dir(&self) -> &Path {
        &self.dir
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

/// `statfs` magic numbers, from `linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

pub(crate) fn fs_magic(path: &Path) -> Result<i64> {
    let st = nix::sys::statfs::statfs(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        what: "statfs",
        source: e.into(),
    })?;
    #[allow(clippy::unnecessary_cast)]
    Ok(st.filesystem_type().0 as i64)
}

pub(crate) fn check_bpffs(dir: &Path) -> Result<()> {
    if fs_magic(dir)? != BPF_FS_MAGIC {
        return Err(Error::NotBpffs(dir.to_path_buf()));
    }
    Ok(())
}

/// A cgroup v2 directory that is not a hierarchy root (only non-root
/// cgroups have `cgroup.type`).
pub(crate) fn check_cgroup(path: &Path) -> Result<()> {
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
