//! sk_lookup per network namespace (inbound capture and the ingress policy): the link
//! pinned by the namespace's cookie.

use super::*;
use crate::loader::PROG_SK_LOOKUP;

impl Datapath {
    /// Attach inbound capture (sk_lookup) to the pod's network namespace
    /// (`/run/netns/NAME` or `/proc/PID/ns/net`; never the host's). Pinned
    /// under `links/netns-cookie-<cookie>/`, by the namespace's cookie, which
    /// no other namespace ever has (an inode number is reused once the
    /// namespace is gone, and a pin by inode would make the next pod given
    /// that number look attached). Idempotent. Captures while the settings
    /// enable `capture_inbound`, and decides the pod's ingress policy while
    /// they enable `policy_enforce` (either alone is a reason to attach).
    /// Returns the cookie.
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
