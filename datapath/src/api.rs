//! The agent's unix-socket API (`/var/run/membrane/agent.sock`).
//!
//! Protocol: the client sends one JSON line, `{"request":"status"}` or
//! `{"request":"monitor"}`. `status` gets one JSON object back and the
//! connection is closed. `monitor` gets newline-delimited JSON
//! [`Event`](crate::events::Event)s until either side closes.
//!
//! Fan-out never blocks the ring-buffer reader: each subscriber has a
//! bounded queue drained by its own writer thread; when the queue is full
//! the event is skipped for that subscriber and counted, and a `lost`
//! record with the count goes out before its next event.

use std::{
    fs,
    io::{self, BufRead, BufReader, Write},
    os::unix::{
        fs::{FileTypeExt, PermissionsExt},
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    sync::{
        mpsc::{sync_channel, Receiver, SyncSender, TrySendError},
        Arc, Mutex,
    },
    thread,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::events::Event;

/// Default socket path.
pub const DEFAULT_SOCKET: &str = "/var/run/membrane/agent.sock";
/// Events queued per subscriber before it starts losing them.
pub const SUBSCRIBER_QUEUE: usize = 4096;

/// A client's request line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum Request {
    /// One status object.
    Status,
    /// The event stream.
    Monitor,
}

/// Bind the API socket at `path` with mode 0660. A socket file nobody
/// answers on (left by an agent that died) is replaced; a live one, or a
/// file that is not a socket, is an error. The socket is bound under a
/// temporary name and renamed into place, so it never exists at `path`
/// with looser permissions.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent)?;
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{}: another agent is serving this socket", path.display()),
                ));
            }
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{}: exists and is not a socket; not replacing it",
                    path.display()
                ),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let tmp: PathBuf = parent.join(format!(
        ".{}.{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)?;
    let placed = fs::set_permissions(&tmp, fs::Permissions::from_mode(0o660))
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(listener)
}

struct Subscriber {
    tx: SyncSender<String>,
    lost: u64,
}

/// The subscribers of one agent's event stream.
pub struct Hub {
    node: String,
    subs: Mutex<Vec<Subscriber>>,
    queue: usize,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("node", &self.node).finish()
    }
}

impl Hub {
    /// A hub for `node` with `queue` events of room per subscriber.
    pub fn new(node: &str, queue: usize) -> Self {
        Self {
            node: node.to_owned(),
            subs: Mutex::new(Vec::new()),
            queue: queue.max(1),
        }
    }

    /// The node name events carry.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Current subscribers.
    pub fn subscribers(&self) -> usize {
        self.subs.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Add a subscriber; its lines come out of the receiver.
    pub fn subscribe(&self) -> Receiver<String> {
        let (tx, rx) = sync_channel(self.queue);
        if let Ok(mut s) = self.subs.lock() {
            s.push(Subscriber { tx, lost: 0 });
        }
        rx
    }

    /// Hand one event to every subscriber without waiting for any.
    pub fn publish(&self, ev: &Event) {
        let Ok(mut line) = serde_json::to_string(ev) else {
            return;
        };
        line.push('\n');
        let Ok(mut subs) = self.subs.lock() else {
            return;
        };
        subs.retain_mut(|s| {
            if s.lost > 0 {
                let mut lost =
                    serde_json::to_string(&Event::lost(&self.node, s.lost, "slow-subscriber"))
                        .unwrap_or_default();
                lost.push('\n');
                match s.tx.try_send(lost) {
                    Ok(()) => s.lost = 0,
                    Err(TrySendError::Full(_)) => {
                        s.lost += 1;
                        return true;
                    }
                    Err(TrySendError::Disconnected(_)) => return false,
                }
            }
            match s.tx.try_send(line.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    s.lost += 1;
                    true
                }
                Err(TrySendError::Disconnected(_)) => false,
            }
        });
    }
}

/// Accept connections on `listener` forever, one thread per client.
/// `status` builds the reply to a status request.
pub fn serve<F>(listener: UnixListener, hub: Arc<Hub>, status: F)
where
    F: Fn() -> serde_json::Value + Send + Sync + 'static,
{
    let status = Arc::new(status);
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let hub = hub.clone();
        let status = status.clone();
        thread::spawn(move || {
            if let Err(e) = handle(conn, &hub, &*status) {
                eprintln!("membrane-agent: api client: {e}");
            }
        });
    }
}

fn handle(conn: UnixStream, hub: &Hub, status: &dyn Fn() -> serde_json::Value) -> io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    let mut out = conn;
    let req: Request = match serde_json::from_str(line.trim()) {
        Ok(r) => r,
        Err(e) => {
            let reply = serde_json::json!({
                "error": format!("bad request {:?}: {e}; expected {{\"request\":\"status\"}} or {{\"request\":\"monitor\"}}", line.trim())
            });
            writeln!(out, "{reply}")?;
            return Ok(());
        }
    };
    match req {
        Request::Status => writeln!(out, "{}", status()),
        Request::Monitor => {
            let rx = hub.subscribe();
            // Ends when the client goes away (write error) or the hub drops us.
            for line in rx {
                out.write_all(line.as_bytes())?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_subscriber_skips_and_is_told_how_many() {
        let hub = Hub::new("n1", 2);
        let rx = hub.subscribe();
        let ev = |i: u64| Event {
            kind: "trace".into(),
            cookie: i,
            ..Event::default()
        };
        for i in 0..5 {
            hub.publish(&ev(i));
        }
        let got: Vec<Event> = rx
            .try_iter()
            .map(|l| serde_json::from_str(&l).unwrap())
            .collect();
        assert_eq!(got.iter().map(|e| e.cookie).collect::<Vec<_>>(), [0, 1]);
        // Room again: the loss is reported before the next event.
        hub.publish(&ev(5));
        let got: Vec<Event> = rx
            .try_iter()
            .map(|l| serde_json::from_str(&l).unwrap())
            .collect();
        assert_eq!(got[0].kind, "lost");
        assert_eq!(got[0].count, 3);
        assert_eq!(got[1].cookie, 5);
        drop(rx);
        hub.publish(&ev(6));
        assert_eq!(hub.subscribers(), 0, "a gone subscriber is dropped");
    }

    #[test]
    fn stale_socket_is_replaced_live_one_and_other_files_are_not() {
        let dir = std::env::temp_dir().join(format!("membrane-api-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("agent.sock");
        let l = bind(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        assert_eq!(
            bind(&path).unwrap_err().kind(),
            io::ErrorKind::AddrInUse,
            "a live socket stays"
        );
        drop(l); // the file stays behind, nobody answers: stale
        let _l = bind(&path).unwrap();
        let file = dir.join("not-a-socket");
        fs::write(&file, "x").unwrap();
        assert_eq!(
            bind(&file).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(fs::read_to_string(&file).unwrap(), "x");
        fs::remove_dir_all(&dir).unwrap();
    }
}
