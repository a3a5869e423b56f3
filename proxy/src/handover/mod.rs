//! Hot restart: replacing a running proxy by a new process (an upgrade) without a failed
//! request, as Envoy's hot restart does it. A proxy started with `--handover-socket PATH`
//! serves PATH (a unix socket, mode 0600, root or its own uid only). A new process started
//! with the same flag connects, receives every listening socket over SCM_RIGHTS with its
//! role and address ([`crate::listeners`]), starts serving on them (once it has its
//! policy), takes PATH over for the next upgrade, and tells the old process to drain.
//!
//! The sockets themselves move, not their addresses: both processes hold the same sockets,
//! so the connections queued on them are accepted by whichever process asks first, and
//! the old process closing its copies loses none (SO_REUSEPORT would give each process its
//! own queue, and closing the old one resets what was queued on it). A new process that
//! fails before it asks for the drain just closes its copies; the old one keeps serving.
//!
//! The exchange ([`wire`]): new → `hello`; old → `sockets` (+ descriptors); new, serving →
//! `drain`; old → `draining`, then it stops accepting and finishes its connections.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::listeners::{Inherited, Role};

mod startup;
mod wire;

pub use startup::start;
use wire::{Conn, Described, Message, MAX_SOCKETS, VERSION};

/// Why a handover could not happen.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// The handover socket could not be connected to or served.
    #[error("handover socket {path}: {source}")]
    Socket {
        /// `--handover-socket`.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Reading or writing the connection failed.
    #[error("handover: {doing} {message}: {source}")]
    Io {
        /// "sending" or "receiving".
        doing: &'static str,
        /// Which message.
        message: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The other process closed the connection.
    #[error("handover: the other process closed the connection")]
    Closed,
    /// The other process sent what the protocol does not allow.
    #[error("handover: {what}")]
    Protocol {
        /// What was wrong.
        what: String,
    },
    /// The running proxy refused.
    #[error("handover: the running proxy refused: {reason}")]
    Refused {
        /// Its reason.
        reason: String,
    },
    /// The running proxy is another one than this process is configured to replace.
    #[error("handover: the running proxy (pid {pid}) listens on {theirs} for --listen, this one is configured with --listen {ours}; not taking it over")]
    NotThisProxy {
        /// Its pid.
        pid: u32,
        /// Its `--listen` socket, if it offered one.
        theirs: String,
        /// This process's `--listen`.
        ours: SocketAddr,
    },
    /// No answer in time.
    #[error("handover: no {waiting_for} within {within:?}")]
    Timeout {
        /// The message waited for.
        waiting_for: &'static str,
        /// How long.
        within: Duration,
    },
}

/// How long either side waits for an answer that needs no work.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// The running proxy this process replaces, once it has handed its sockets over.
pub struct Predecessor {
    conn: Conn,
    /// Its pid.
    pub pid: u32,
    /// Its restart epoch (this process's is one more).
    pub epoch: u64,
}

async fn answer(
    conn: &mut Conn,
    waiting_for: &'static str,
) -> Result<(Message, Vec<std::os::fd::OwnedFd>), HandoverError> {
    tokio::time::timeout(ANSWER_TIMEOUT, conn.recv())
        .await
        .map_err(|_| HandoverError::Timeout {
            waiting_for,
            within: ANSWER_TIMEOUT,
        })?
}

fn unexpected(expected: &str, got: &Message) -> HandoverError {
    HandoverError::Protocol {
        what: format!("expected {expected}, got {got:?}"),
    }
}

/// Asks the proxy serving `path` for its listening sockets. `Ok(None)`: no proxy serves it
/// (no socket there, or a stale one nobody listens on): a fresh start.
pub async fn connect(path: &Path) -> Result<Option<(Predecessor, Vec<Inherited>)>, HandoverError> {
    let stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(source) => {
            return Err(HandoverError::Socket {
                path: path.to_owned(),
                source,
            })
        }
    };
    // Whoever listens on the path hands over the sockets this process will serve on.
    check_peer(&stream, "running proxy")?;
    let mut conn = Conn::new(stream);
    let hello = Message::Hello {
        version: VERSION,
        pid: std::process::id(),
    };
    conn.send(&hello, &[]).await?;
    let (msg, fds) = answer(&mut conn, "sockets").await?;
    let (pid, epoch, sockets) = match msg {
        Message::Sockets {
            version,
            pid,
            epoch,
            sockets,
        } if version == VERSION => (pid, epoch, sockets),
        Message::Refused { reason } => return Err(HandoverError::Refused { reason }),
        other => return Err(unexpected("sockets of protocol version 1", &other)),
    };
    if fds.len() != sockets.len() {
        return Err(HandoverError::Protocol {
            what: format!(
                "{} sockets described but {} received",
                sockets.len(),
                fds.len()
            ),
        });
    }
    let inherited = sockets
        .into_iter()
        .zip(fds)
        .map(|(Described { role, addr }, fd)| Inherited { role, addr, fd })
        .collect();
    Ok(Some((Predecessor { conn, pid, epoch }, inherited)))
}

/// Checks that the proxy offering `inherited` is the one a process listening on `listen`
/// replaces: same `--listen` (port 0: same address, any port).
pub fn check_same_proxy(
    pid: u32,
    inherited: &[Inherited],
    listen: SocketAddr,
) -> Result<(), HandoverError> {
    let theirs = inherited.iter().find(|i| i.role == Role::Listen);
    match theirs {
        Some(i) if i.addr == listen || (listen.port() == 0 && i.addr.ip() == listen.ip()) => Ok(()),
        _ => Err(HandoverError::NotThisProxy {
            pid,
            theirs: theirs.map_or("nothing".into(), |i| i.addr.to_string()),
            ours: listen,
        }),
    }
}

impl Predecessor {
    /// Tells the predecessor that this process serves now: it stops accepting and drains.
    pub async fn drain(mut self) -> Result<(), HandoverError> {
        let drain = Message::Drain {
            pid: std::process::id(),
        };
        self.conn.send(&drain, &[]).await?;
        match answer(&mut self.conn, "draining").await?.0 {
            Message::Draining => Ok(()),
            other => Err(unexpected("draining", &other)),
        }
    }
}

/// What a running proxy offers a successor.
pub struct Offer {
    /// Its restart epoch.
    pub epoch: u64,
    /// Its listening sockets (duplicates: see [`crate::listeners::Sockets::duplicate`]).
    pub sockets: Vec<Inherited>,
}

/// The handover socket of a running proxy.
pub struct Server {
    path: PathBuf,
    /// The socket file's inode: removed at exit only while it is still this process's.
    ino: u64,
    successor: oneshot::Receiver<u32>,
    task: JoinHandle<()>,
}

impl Server {
    /// Serves `path` (replacing whatever is there, atomically: a predecessor's socket
    /// becomes this one's for the next upgrade), offering `offer` until a successor takes
    /// it or `shutdown` turns true.
    pub fn listen(
        path: &Path,
        offer: Offer,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Server, HandoverError> {
        if offer.sockets.len() > MAX_SOCKETS {
            return Err(HandoverError::Protocol {
                what: format!(
                    "{} listening sockets are more than the {MAX_SOCKETS} a handover carries",
                    offer.sockets.len()
                ),
            });
        }
        let err = |source| HandoverError::Socket {
            path: path.to_owned(),
            source,
        };
        let mut temp = path.as_os_str().to_owned();
        temp.push(format!(".{}.tmp", std::process::id()));
        let temp = PathBuf::from(temp);
        let _ = std::fs::remove_file(&temp);
        let listener = UnixListener::bind(&temp).map_err(err)?;
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        std::fs::rename(&temp, path).map_err(err)?;
        let ino = std::fs::metadata(path).map_err(err)?.ino();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(serve(listener, offer, tx, shutdown));
        Ok(Server {
            path: path.to_owned(),
            ino,
            successor: rx,
            task,
        })
    }

    /// Resolves with the successor's pid once one serves on the sockets and asked this
    /// process to drain; never if none does.
    pub async fn handed_over(&mut self) -> u32 {
        match (&mut self.successor).await {
            Ok(pid) => pid,
            Err(_) => std::future::pending().await,
        }
    }

    /// Stops serving, and removes the socket file unless a successor has taken it over.
    pub fn close(self) {
        self.task.abort();
        if std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

async fn serve(
    listener: UnixListener,
    offer: Offer,
    successor: oneshot::Sender<u32>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "handover socket: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let outcome = tokio::select! {
            o = offer_to(stream, &offer) => o,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match outcome {
            Ok(pid) => {
                let _ = successor.send(pid);
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "no handover; this process keeps serving");
            }
        }
    }
}

/// Refuses a peer (`who`) that is neither root nor of this process's uid: only the proxy's
/// own user may take its sockets, or hand it sockets to serve on.
fn check_peer(stream: &UnixStream, who: &str) -> Result<(), HandoverError> {
    let cred =
        rustix::net::sockopt::socket_peercred(stream.as_fd()).map_err(|e| HandoverError::Io {
            doing: "reading the peer credentials of",
            message: "the connection",
            source: e.into(),
        })?;
    let me = rustix::process::getuid();
    if cred.uid != me && !cred.uid.is_root() {
        return Err(HandoverError::Protocol {
            what: format!(
                "refused {who} pid {}: uid {} is neither root nor this process's uid {}",
                cred.pid.as_raw_nonzero(),
                cred.uid.as_raw(),
                me.as_raw()
            ),
        });
    }
    Ok(())
}

/// One successor's handover: its pid once it serves and asks for the drain.
async fn offer_to(stream: UnixStream, offer: &Offer) -> Result<u32, HandoverError> {
    check_peer(&stream, "successor")?;
    let mut conn = Conn::new(stream);
    let pid = match answer(&mut conn, "hello").await?.0 {
        Message::Hello { version, pid } if version == VERSION => pid,
        Message::Hello { version, pid } => {
            let reason = format!("protocol version {version} is not this process's {VERSION}");
            let _ = conn
                .send(
                    &Message::Refused {
                        reason: reason.clone(),
                    },
                    &[],
                )
                .await;
            return Err(HandoverError::Protocol {
                what: format!("successor pid {pid}: {reason}"),
            });
        }
        other => return Err(unexpected("hello", &other)),
    };
    let described = offer
        .sockets
        .iter()
        .map(|s| Described {
            role: s.role,
            addr: s.addr,
        })
        .collect();
    let fds: Vec<_> = offer.sockets.iter().map(|s| s.fd.as_fd()).collect();
    let msg = Message::Sockets {
        version: VERSION,
        pid: std::process::id(),
        epoch: offer.epoch,
        sockets: described,
    };
    conn.send(&msg, &fds).await?;
    tracing::info!(
        successor = pid,
        "listening sockets handed over; serving on until the successor asks for the drain"
    );
    // No time limit: the successor may wait for its first policy from the control plane.
    // If it gives up, the connection closes and this process goes on serving.
    match conn.recv().await?.0 {
        Message::Drain { pid } => {
            conn.send(&Message::Draining, &[]).await?;
            Ok(pid)
        }
        other => Err(unexpected("drain", &other)),
    }
}

#[cfg(test)]
mod tests;
