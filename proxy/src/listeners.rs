//! The proxy's listening sockets, by role: bound fresh at start, or taken over from the
//! process this one replaces (see [`crate::handover`]), and duplicated so that they can be
//! handed on to the next one. Nothing here accepts a connection.

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::config::Config;

/// What a listening socket is for. A new process matches the sockets it inherits by role
/// and address, so a changed configuration never serves one port's traffic as another's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// `--listen`: the downstream listener.
    Listen,
    /// `--admin`.
    Admin,
    /// `--metrics`.
    Metrics,
    /// `--health`.
    Health,
    /// `--stats` (Istio's 15090).
    Stats,
    /// `--capture-inbound` (Istio's 15006).
    CaptureInbound,
    /// `--capture-outbound` (Istio's 15001; one socket per address).
    CaptureOutbound,
}

impl Role {
    /// The flag that configures the role's address.
    pub fn flag(self) -> &'static str {
        match self {
            Role::Listen => "--listen",
            Role::Admin => "--admin",
            Role::Metrics => "--metrics",
            Role::Health => "--health",
            Role::Stats => "--stats",
            Role::CaptureInbound => "--capture-inbound",
            Role::CaptureOutbound => "--capture-outbound",
        }
    }
}

/// A listening socket received from another process, with what that process said it is.
#[derive(Debug)]
pub struct Inherited {
    /// The role it served.
    pub role: Role,
    /// The address it was bound to.
    pub addr: SocketAddr,
    /// The socket.
    pub fd: OwnedFd,
}

/// Why the listeners could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Binding a configured address failed.
    #[error("cannot listen on {addr} ({flag}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The flag that configured it.
        flag: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// A socket received from the previous process is not what it was said to be.
    #[error("inherited {flag} socket for {addr}: {what}")]
    Inherited {
        /// The flag of the role it was offered for.
        flag: &'static str,
        /// The address it was offered as.
        addr: SocketAddr,
        /// What is wrong with it.
        what: String,
    },
}

/// Every listening socket of one proxy process.
#[derive(Debug)]
pub struct Sockets {
    /// `--listen`.
    pub listen: TcpListener,
    /// `--admin`.
    pub admin: TcpListener,
    /// `--metrics`.
    pub metrics: TcpListener,
    /// `--health`.
    pub health: TcpListener,
    /// `--stats`.
    pub stats: Option<TcpListener>,
    /// `--capture-inbound`.
    pub capture_inbound: Option<TcpListener>,
    /// `--capture-outbound`, the addresses this network namespace has.
    pub capture_outbound: Vec<TcpListener>,
}

/// Where the sockets come from: the previous process's (matched by role and address) or,
/// for an address it did not offer, a fresh bind.
struct Source {
    inherited: Vec<Inherited>,
}

impl Source {
    /// The inherited socket for `role` at `addr` (port 0: whatever port the role had), or a
    /// fresh one. `optional_v6`: a missing IPv6 address is not an error (`Ok(None)`).
    async fn get(
        &mut self,
        role: Role,
        addr: SocketAddr,
        optional_v6: bool,
    ) -> Result<Option<TcpListener>, ListenError> {
        let matches = |i: &Inherited| {
            i.role == role && (i.addr == addr || (addr.port() == 0 && i.addr.ip() == addr.ip()))
        };
        if let Some(pos) = self.inherited.iter().position(matches) {
            return adopt(self.inherited.swap_remove(pos)).map(Some);
        }
        match TcpListener::bind(addr).await {
            Ok(l) => Ok(Some(l)),
            // A pod without IPv6 has no ::1; the datapath steers nothing there either.
            Err(e)
                if optional_v6
                    && addr.is_ipv6()
                    && e.kind() == std::io::ErrorKind::AddrNotAvailable =>
            {
                tracing::warn!(%addr, error = %e, "--capture-outbound: skipped, no such address in this network namespace");
                Ok(None)
            }
            Err(source) => Err(ListenError::Bind {
                addr,
                flag: role.flag(),
                source,
            }),
        }
    }
}

/// Checks that `i` is a listening TCP socket bound where it was said to be, and registers
/// it with the runtime.
fn adopt(i: Inherited) -> Result<TcpListener, ListenError> {
    let bad = |what: String| ListenError::Inherited {
        flag: i.role.flag(),
        addr: i.addr,
        what,
    };
    match rustix::net::sockopt::socket_acceptconn(&i.fd) {
        Ok(true) => {}
        Ok(false) => return Err(bad("not a listening socket".into())),
        Err(e) => return Err(bad(format!("not a socket: {e}"))),
    }
    let std = std::net::TcpListener::from(i.fd);
    let local = std
        .local_addr()
        .map_err(|e| bad(format!("no local address: {e}")))?;
    if local != i.addr {
        return Err(bad(format!("it is bound to {local}")));
    }
    std.set_nonblocking(true)
        .map_err(|e| bad(format!("cannot make it non-blocking: {e}")))?;
    TcpListener::from_std(std).map_err(|e| bad(format!("cannot register it: {e}")))
}

impl Sockets {
    /// Binds every listener `cfg` names.
    pub async fn bind(cfg: &Config) -> Result<Sockets, ListenError> {
        Sockets::take_over(cfg, Vec::new()).await
    }

    /// Uses the `inherited` sockets for the roles and addresses `cfg` names, binding the
    /// others. Inherited sockets `cfg` no longer names are closed (with the previous
    /// process's copies, their connections go).
    pub async fn take_over(
        cfg: &Config,
        inherited: Vec<Inherited>,
    ) -> Result<Sockets, ListenError> {
        let mut src = Source { inherited };
        let need = |l: Option<TcpListener>| l.expect("only optional addresses are skipped");
        let sockets = Sockets {
            listen: need(src.get(Role::Listen, cfg.listen, false).await?),
            admin: need(src.get(Role::Admin, cfg.admin, false).await?),
            metrics: need(src.get(Role::Metrics, cfg.metrics, false).await?),
            health: need(src.get(Role::Health, cfg.health, false).await?),
            stats: match cfg.stats {
                Some(a) => src.get(Role::Stats, a, false).await?,
                None => None,
            },
            capture_inbound: match cfg.capture_inbound {
                Some(a) => src.get(Role::CaptureInbound, a, false).await?,
                None => None,
            },
            capture_outbound: {
                let mut v = Vec::new();
                for &a in &cfg.capture_outbound {
                    v.extend(src.get(Role::CaptureOutbound, a, true).await?);
                }
                v
            },
        };
        for left in src.inherited {
            tracing::warn!(role = ?left.role, addr = %left.addr, "inherited listener no longer configured; closed");
        }
        Ok(sockets)
    }

    /// Each socket with its role and address.
    pub fn each(&self) -> Vec<(Role, &TcpListener)> {
        let mut v = vec![
            (Role::Listen, &self.listen),
            (Role::Admin, &self.admin),
            (Role::Metrics, &self.metrics),
            (Role::Health, &self.health),
        ];
        v.extend(self.stats.iter().map(|l| (Role::Stats, l)));
        v.extend(
            self.capture_inbound
                .iter()
                .map(|l| (Role::CaptureInbound, l)),
        );
        v.extend(
            self.capture_outbound
                .iter()
                .map(|l| (Role::CaptureOutbound, l)),
        );
        v
    }

    /// Duplicates of every socket, to hand to a successor: they refer to the same sockets
    /// (same accept queues), so the successor accepts what this process has not.
    pub fn duplicate(&self) -> std::io::Result<Vec<Inherited>> {
        self.each()
            .into_iter()
            .map(|(role, l)| {
                Ok(Inherited {
                    role,
                    addr: l.local_addr()?,
                    fd: l.as_fd().try_clone_to_owned()?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inherited(role: Role, addr: SocketAddr, fd: OwnedFd) -> Inherited {
        Inherited { role, addr, fd }
    }

    #[tokio::test]
    async fn a_socket_that_is_not_what_it_was_said_to_be_is_refused() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let fd = || l.as_fd().try_clone_to_owned().unwrap();
        adopt(inherited(Role::Listen, addr, fd())).unwrap();

        let elsewhere: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let e = adopt(inherited(Role::Admin, elsewhere, fd())).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("inherited --admin socket for 127.0.0.1:1: it is bound to"),
            "{e}"
        );

        // A connected socket is no listener.
        let conn = std::net::TcpStream::connect(addr).unwrap();
        let e = adopt(inherited(Role::Listen, addr, OwnedFd::from(conn))).unwrap_err();
        assert!(e.to_string().contains("not a listening socket"), "{e}");
    }
}
