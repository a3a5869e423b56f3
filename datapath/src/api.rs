//! The agent's unix-socket API (`/var/run/membrane/agent.sock`).
//!
//! Protocol: the client sends one JSON line, `{"request":"status"}`,
//! `{"request":"monitor"}` (`"last":N` replays the latest N first) or one of the node daemon's requests ([`Request`]:
//! membrane-cni's `register`/`unregister`, the CLI's endpoint, identity,
//! service and policy queries). Every request but `monitor` gets one JSON
//! object back and the connection is closed. `monitor` gets newline-delimited
//! JSON [`Event`](crate::events::Event)s until either side closes. The socket
//! is the node's root-only door (mode 0600): registrations come only from it.
//!
//! Fan-out never blocks the ring-buffer reader: each subscriber has a
//! bounded queue drained by its own writer thread; when the queue is full
//! the event is skipped for that subscriber and counted, and a `lost`
//! record with the count goes out before its next event.
//!
//! Bounds ([`Limits`]): a request line longer than `max_request_bytes` or
//! not complete within `request_timeout` (as a whole, not per read, so a
//! client trickling bytes gains nothing) gets an error line and the
//! connection is closed; past `max_clients` connections at once (monitor
//! streams included) a new one gets an error line and is closed. Either
//! way the other clients are served as before.

use std::{
    fs,
    io::{self, Write},
    os::unix::{
        fs::{FileTypeExt, PermissionsExt},
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::events::Event;

/// Default socket path.
pub const DEFAULT_SOCKET: &str = "/var/run/membrane/agent.sock";
/// Events queued per subscriber before it starts losing them.
pub const SUBSCRIBER_QUEUE: usize = 4096;

/// What the socket server allows one client, and all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest request line, newline excluded.
    pub max_request_bytes: usize,
    /// Connections served at once, monitor streams included.
    pub max_clients: usize,
    /// Time for the whole request line to arrive.
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        // A request is one short JSON object; 4 KiB leaves room for
        // requests with arguments. 64 clients: a node's CLI calls and a
        // few `membrane monitor` followers.
        Limits {
            max_request_bytes: 4096,
            max_clients: 64,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// What the socket server refused, for the status reply.
#[derive(Debug, Default)]
pub struct ServeStats {
    /// Connections open now.
    pub clients: AtomicUsize,
    /// Connections closed at once for being past `max_clients`.
    pub refused_busy: AtomicU64,
    /// Requests refused for being longer than `max_request_bytes`.
    pub refused_too_long: AtomicU64,
    /// Requests not complete within `request_timeout`.
    pub timed_out: AtomicU64,
}

impl ServeStats {
    /// The counters as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "clients": self.clients.load(Ordering::Relaxed),
            "refused_busy": self.refused_busy.load(Ordering::Relaxed),
            "refused_too_long": self.refused_too_long.load(Ordering::Relaxed),
            "timed_out": self.timed_out.load(Ordering::Relaxed),
        })
    }
}

/// A client's request line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum Request {
    /// One status object.
    Status,
    /// The event stream, after the latest `last` events the agent still holds.
    Monitor {
        /// Events to replay first (0: only new ones).
        #[serde(default)]
        last: usize,
    },
    /// membrane-cni ADD: a pod on this node to enforce (node daemon only).
    Register(Registration),
    /// membrane-cni DEL: forget the pod that container's interface belongs to.
    Unregister {
        /// The runtime's container id (`CNI_CONTAINERID`).
        container_id: String,
        /// The pod's interface (`CNI_IFNAME`).
        ifname: String,
    },
    /// The node's endpoints.
    EndpointList,
    /// One endpoint, `NAMESPACE/POD`.
    EndpointGet {
        /// `NAMESPACE/POD`.
        endpoint: String,
    },
    /// The ipcache: prefix -> identity.
    IdentityList,
    /// The service frontends and their backends.
    ServiceList,
    /// One endpoint's policy map, read back from the kernel.
    PolicyGet {
        /// `NAMESPACE/POD`.
        endpoint: String,
    },
    /// The packet path's conntrack table.
    CtList,
    /// The packet path's counters: forwards and drops by reason.
    TcStats,
    /// The XDP prefilter: denied prefixes with their source, device, mode, counters.
    PrefilterList,
    /// Deny these CIDRs at the prefilter (all or none: one bad CIDR refuses the request).
    PrefilterAdd {
        /// CIDRs or addresses.
        cidrs: Vec<String>,
    },
    /// Stop denying these CIDRs (only ones `prefilter-add` added; all or none).
    PrefilterDelete {
        /// CIDRs or addresses.
        cidrs: Vec<String>,
    },
}

/// A pod registered with the node daemon by membrane-cni ADD.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// The pod's namespace (`K8S_POD_NAMESPACE`).
    pub namespace: String,
    /// The pod's name (`K8S_POD_NAME`).
    pub pod: String,
    /// The runtime's container id (`CNI_CONTAINERID`): DEL names the pod by it.
    pub container_id: String,
    /// The pod's interface (`CNI_IFNAME`).
    pub ifname: String,
    /// The pod's network namespace (`CNI_NETNS`).
    pub netns: PathBuf,
    /// The pod's cgroup v2 directory (absolute), from the runtime's `cgroupPath`.
    pub cgroup: PathBuf,
    /// The pod's addresses, from the previous plugin's result.
    #[serde(default)]
    pub ips: Vec<std::net::IpAddr>,
    /// The pod's host-side interface in the node's network namespace (the previous
    /// result's interface without `sandbox`): the node daemon attaches the packet path
    /// (tc) to it. None: the previous plugin reported none (a registration of an earlier
    /// plugin, or a topology without a host-side veth); the socket hooks still enforce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ifname: Option<String>,
    /// The MAC of the pod's interface (`CNI_IFNAME` in the previous result), as
    /// `aa:bb:cc:dd:ee:ff`, for the packet path's delivery to the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// Bind the API socket at `path` with mode 0600 (root only: it takes pod
/// registrations). A socket file nobody
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
    let placed = fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(listener)
}

/// Sends one request to the agent at `socket` and reads its one-line JSON reply, each
/// within `timeout`. A reply with an `error` field is returned as it is: the caller says
/// what failed.
pub fn request(socket: &Path, req: &Request, timeout: Duration) -> io::Result<serde_json::Value> {
    let mut conn = UnixStream::connect(socket)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    let line = serde_json::to_string(req).map_err(io::Error::other)?;
    writeln!(conn, "{line}")?;
    let mut reply = String::new();
    io::BufRead::read_line(&mut io::BufReader::new(&conn), &mut reply)?;
    serde_json::from_str(reply.trim()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: reply {:?} is not JSON: {e}",
                socket.display(),
                reply.trim()
            ),
        )
    })
}

struct Subscriber {
    tx: SyncSender<String>,
    lost: u64,
}

/// The subscribers of one agent's event stream.
pub struct Hub {
    node: String,
    // The latest `keep` lines, updated under `subs`'s lock so a new subscriber's replay
    // and its live lines neither overlap nor leave a gap.
    subs: Mutex<(Vec<Subscriber>, std::collections::VecDeque<String>)>,
    queue: usize,
    keep: usize,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("node", &self.node).finish()
    }
}

impl Hub {
    /// A hub for `node` with `queue` events of room per subscriber.
    pub fn new(node: &str, queue: usize) -> Self {
        Self::with_ring(node, queue, 0)
    }

    /// A hub that also keeps its latest `keep` events for `monitor` with `last`.
    pub fn with_ring(node: &str, queue: usize, keep: usize) -> Self {
        Self {
            node: node.to_owned(),
            subs: Mutex::new(Default::default()),
            queue: queue.max(1),
            keep,
        }
    }

    /// The node name events carry.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Current subscribers.
    pub fn subscribers(&self) -> usize {
        self.subs.lock().map(|s| s.0.len()).unwrap_or(0)
    }

    /// Add a subscriber; its lines come out of the receiver.
    pub fn subscribe(&self) -> Receiver<String> {
        self.subscribe_last(0).1
    }

    /// The latest `last` lines held (oldest first) and a subscriber of later ones.
    pub fn subscribe_last(&self, last: usize) -> (Vec<String>, Receiver<String>) {
        let (tx, rx) = sync_channel(self.queue);
        let mut replay = Vec::new();
        if let Ok(mut s) = self.subs.lock() {
            let skip = s.1.len().saturating_sub(last);
            replay = s.1.iter().skip(skip).cloned().collect();
            s.0.push(Subscriber { tx, lost: 0 });
        }
        (replay, rx)
    }

    /// Hand one event to every subscriber without waiting for any.
    pub fn publish(&self, ev: &Event) {
        let Ok(mut line) = serde_json::to_string(ev) else {
            return;
        };
        line.push('\n');
        let Ok(mut guard) = self.subs.lock() else {
            return;
        };
        let (subs, ring) = &mut *guard;
        if self.keep > 0 {
            if ring.len() >= self.keep {
                ring.pop_front();
            }
            ring.push_back(line.clone());
        }
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

/// Accept connections on `listener` forever, one thread per client, within
/// the default [`Limits`]. `status` builds the reply to a status request.
pub fn serve<F>(listener: UnixListener, hub: Arc<Hub>, status: F)
where
    F: Fn() -> serde_json::Value + Send + Sync + 'static,
{
    serve_with(
        listener,
        hub,
        status,
        Limits::default(),
        Arc::new(ServeStats::default()),
    )
}

/// [`serve`] within `limits`, counting refusals in `stats`. Only `status`
/// and `monitor` are served; the node daemon's requests get an error line.
pub fn serve_with<F>(
    listener: UnixListener,
    hub: Arc<Hub>,
    status: F,
    limits: Limits,
    stats: Arc<ServeStats>,
) where
    F: Fn() -> serde_json::Value + Send + Sync + 'static,
{
    let handler = move |req: Request| match req {
        Request::Status => status(),
        other => serde_json::json!({
            "error": format!("{other:?}: this agent serves one cgroup; run `membrane-agent run --node NAME --xds-address URL` for the node daemon's requests")
        }),
    };
    serve_requests(listener, hub, handler, limits, stats)
}

/// [`serve_with`] with every request but `monitor` answered by `handler`.
pub fn serve_requests<F>(
    listener: UnixListener,
    hub: Arc<Hub>,
    handler: F,
    limits: Limits,
    stats: Arc<ServeStats>,
) where
    F: Fn(Request) -> serde_json::Value + Send + Sync + 'static,
{
    let status = Arc::new(handler);
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        if stats.clients.load(Ordering::Relaxed) >= limits.max_clients {
            stats.refused_busy.fetch_add(1, Ordering::Relaxed);
            // One short line into an empty socket buffer; bounded anyway,
            // since this is the accepting thread.
            let _ = conn.set_write_timeout(Some(Duration::from_millis(100)));
            let reply = serde_json::json!({
                "error": format!("too many clients: the agent serves at most {} at once; try again", limits.max_clients)
            });
            let _ = writeln!(conn, "{reply}");
            continue;
        }
        stats.clients.fetch_add(1, Ordering::Relaxed);
        let (hub, status, stats) = (hub.clone(), status.clone(), stats.clone());
        thread::spawn(move || {
            if let Err(e) = handle(conn, &hub, &*status, &limits, &stats) {
                eprintln!("membrane-agent: api client: {e}");
            }
            stats.clients.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Why no request line was read.
enum LineError {
    TooLong,
    TimedOut,
    Io(io::Error),
}

/// Reads one line of at most `max` bytes (newline excluded) within
/// `timeout` in all; bytes after the newline are ignored.
fn read_request_line(
    conn: &UnixStream,
    max: usize,
    timeout: Duration,
) -> Result<String, LineError> {
    let deadline = Instant::now() + timeout;
    let mut line = Vec::new();
    let mut chunk = [0u8; 512];
    let mut reader = conn;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(LineError::TimedOut);
        }
        conn.set_read_timeout(Some(left)).map_err(LineError::Io)?;
        let n = match io::Read::read(&mut reader, &mut chunk) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(LineError::TimedOut)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(LineError::Io(e)),
        };
        let got = &chunk[..n];
        let end = got.iter().position(|b| *b == b'\n');
        line.extend_from_slice(&got[..end.unwrap_or(n)]);
        if line.len() > max {
            return Err(LineError::TooLong);
        }
        if end.is_some() || n == 0 {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
    }
}

fn handle(
    conn: UnixStream,
    hub: &Hub,
    handler: &dyn Fn(Request) -> serde_json::Value,
    limits: &Limits,
    stats: &ServeStats,
) -> io::Result<()> {
    let read = read_request_line(&conn, limits.max_request_bytes, limits.request_timeout);
    let mut out = conn;
    let line = match read {
        Ok(l) => l,
        Err(LineError::Io(e)) => return Err(e),
        Err(why) => {
            let error = match why {
                LineError::TooLong => {
                    stats.refused_too_long.fetch_add(1, Ordering::Relaxed);
                    format!(
                        "request longer than {} bytes; expected one JSON line",
                        limits.max_request_bytes
                    )
                }
                _ => {
                    stats.timed_out.fetch_add(1, Ordering::Relaxed);
                    format!(
                        "no complete request line within {:?}",
                        limits.request_timeout
                    )
                }
            };
            let _ = out.set_write_timeout(Some(Duration::from_secs(1)));
            writeln!(out, "{}", serde_json::json!({ "error": error }))?;
            return Ok(());
        }
    };
    let req: Request = match serde_json::from_str(line.trim()) {
        Ok(r) => r,
        Err(e) => {
            let reply = serde_json::json!({
                "error": format!("bad request {:?}: {e}; expected e.g. {{\"request\":\"status\"}} or {{\"request\":\"monitor\"}}", line.trim())
            });
            writeln!(out, "{reply}")?;
            return Ok(());
        }
    };
    match req {
        Request::Monitor { last } => {
            let (replay, rx) = hub.subscribe_last(last);
            for line in replay {
                out.write_all(line.as_bytes())?;
            }
            // A quiet node sends no event that would fail on a gone client,
            // so its hang-up is looked for between events: a gone client
            // must not hold one of the `max_clients` places.
            let mut probe = out.try_clone()?;
            probe.set_read_timeout(Some(Duration::from_millis(1)))?;
            loop {
                match rx.recv_timeout(Duration::from_secs(1)) {
                    Ok(line) => out.write_all(line.as_bytes())?,
                    Err(RecvTimeoutError::Disconnected) => return Ok(()),
                    Err(RecvTimeoutError::Timeout) => {
                        let mut b = [0u8; 64];
                        match io::Read::read(&mut probe, &mut b) {
                            Ok(0) => return Ok(()),
                            Ok(_) => {}
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    io::ErrorKind::WouldBlock
                                        | io::ErrorKind::TimedOut
                                        | io::ErrorKind::Interrupted
                                ) => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
            }
        }
        other => writeln!(out, "{}", handler(other)),
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
    fn a_ring_replays_the_latest_before_the_live_ones() {
        let hub = Hub::with_ring("n1", 8, 2);
        let ev = |i: u64| Event {
            cookie: i,
            ..Event::default()
        };
        (0..3).for_each(|i| hub.publish(&ev(i)));
        let (replay, rx) = hub.subscribe_last(5);
        hub.publish(&ev(3));
        let got: Vec<u64> = replay
            .into_iter()
            .chain(rx.try_iter())
            .map(|l| serde_json::from_str::<Event>(&l).unwrap().cookie)
            .collect();
        assert_eq!(got, [1, 2, 3]);
        let old: Request = serde_json::from_str(r#"{"request":"monitor"}"#).unwrap();
        assert_eq!(old, Request::Monitor { last: 0 });
    }

    #[test]
    fn requests_are_one_json_object_tagged_by_request() {
        let reg = Request::Register(Registration {
            namespace: "default".into(),
            pod: "web".into(),
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: "/run/netns/x".into(),
            cgroup: "/sys/fs/cgroup/x".into(),
            ips: vec!["10.0.0.1".parse().unwrap()],
            host_ifname: None,
            mac: None,
        });
        let line = serde_json::to_string(&reg).unwrap();
        assert!(
            line.starts_with(r#"{"request":"register","namespace":"default""#),
            "{line}"
        );
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), reg);
        let get: Request =
            serde_json::from_str(r#"{"request":"policy-get","endpoint":"default/web"}"#).unwrap();
        assert_eq!(
            get,
            Request::PolicyGet {
                endpoint: "default/web".into()
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"request":"register"}"#).is_err());
    }

    #[test]
    fn a_single_cgroup_agent_refuses_the_daemons_requests_with_an_error_line() {
        let dir = std::env::temp_dir().join(format!("membrane-api-req-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("agent.sock");
        let l = bind(&path).unwrap();
        let hub = Arc::new(Hub::new("n1", 4));
        let stats = Arc::new(ServeStats::default());
        thread::spawn(move || {
            serve_with(
                l,
                hub,
                || serde_json::json!({"node": "n1"}),
                Limits::default(),
                stats,
            )
        });
        let t = Duration::from_secs(5);
        assert_eq!(request(&path, &Request::Status, t).unwrap()["node"], "n1");
        let r = request(&path, &Request::EndpointList, t).unwrap();
        assert!(
            r["error"].as_str().unwrap().contains("--xds-address"),
            "{r}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn overlong_lines_get_an_error_line() {
        let dir = std::env::temp_dir().join(format!("membrane-api-long-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("agent.sock");
        let l = bind(&path).unwrap();
        let limits = Limits {
            max_request_bytes: 256,
            ..Limits::default()
        };
        let hub = Arc::new(Hub::new("n1", 4));
        let stats = Arc::new(ServeStats::default());
        thread::spawn(move || serve_with(l, hub, || serde_json::json!({}), limits, stats));
        let mut s = UnixStream::connect(&path).unwrap();
        let w = s.write_all(&vec![b'a'; 64 << 10]);
        let mut out = String::new();
        let r = io::Read::read_to_string(&mut s, &mut out);
        assert!(out.contains("longer than 256"), "{w:?} {r:?} {out:?}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stale_socket_is_replaced_live_one_and_other_files_are_not() {
        let dir = std::env::temp_dir().join(format!("membrane-api-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("agent.sock");
        let l = bind(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
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
