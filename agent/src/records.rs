//! The sidecars' request records (`--records-socket`, e.g.
//! `/var/run/membrane/sidecar/records.sock`): each membrane-proxy on the node sends one
//! JSON line per HTTP request it decided (a monitor [`Event`] of type `l7`), and the
//! records join the ring-buffer events in the same [`Hub`], so `membrane monitor` shows a
//! request's L3/L4 and L7 fate together.
//!
//! The socket's directory is mounted into every injected pod, so any pod on the node can
//! connect, and nothing a client says about itself is believed. Every connection is
//! attributed to the endpoint whose network namespace its peer process is in
//! (`SO_PEERCRED` pid → `/proc/PID/ns/net` → the registration with that namespace); the
//! record's own side (the destination of an `ingress` record, the source of an `egress`
//! one) gets that endpoint's pod, identity and address, the other side's pod is the
//! endpoint holding its address on this node or nothing, and `node`, `type` and
//! `program` are the agent's. A process in no registered endpoint's namespace (the host,
//! a host-network pod) is refused and counted. Bounds: a record longer than
//! `--records-max-bytes` ends its connection, at most `--records-max-connections`
//! connections at once and 4 per endpoint, and each endpoint's records beyond
//! `--records-rate` a second (burst: twice that) are dropped and counted.
//!
//! It must never block the agent: each connection has its own thread, publishing to the
//! hub never waits, and the node's lock is only tried (`try_lock`) after a connection's
//! first attribution, so a long programming pass delays nobody's records.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use membrane_api::monitor::{self, Event, TYPE_L7};
use membrane_datapath::api::Hub;

use crate::node::Node;

/// Connections one endpoint may hold at once (a sidecar needs one; a successor during a
/// hot restart, a second).
const PER_ENDPOINT_CONNECTIONS: usize = 4;
/// How often a connection's attribution is looked up again (a pod relabelled, gone).
const REFRESH_EVERY: Duration = Duration::from_secs(5);
/// A record's own `time` is kept when it is at most this far from the agent's clock
/// (the sidecar batches); otherwise the time of arrival is written.
const TIME_SLACK: Duration = Duration::from_secs(60);

/// Why the records socket could not be served.
#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    /// Binding the socket failed.
    #[error("--records-socket {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// The records socket's flags.
#[derive(clap::Args, Debug, Clone)]
pub struct RecordArgs {
    /// Unix socket the node's sidecars send their request records to (the injector mounts
    /// its directory into every injected pod); unset: no sidecar records.
    #[arg(long, env = "MEMBRANE_RECORDS_SOCKET")]
    pub records_socket: Option<PathBuf>,
    /// Longest record line, in bytes; a longer one ends its connection.
    #[arg(long, env = "MEMBRANE_RECORDS_MAX_BYTES", default_value_t = 16 << 10,
          value_parser = clap::value_parser!(u64).range(512..=(1 << 20)))]
    pub records_max_bytes: u64,
    /// Sidecar connections served at once (all endpoints).
    #[arg(long, env = "MEMBRANE_RECORDS_MAX_CONNECTIONS", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub records_max_connections: u64,
    /// Records per second taken from one endpoint (burst: twice as many); more are
    /// dropped and counted.
    #[arg(long, env = "MEMBRANE_RECORDS_RATE", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub records_rate: u64,
}

impl Default for RecordArgs {
    fn default() -> Self {
        RecordArgs {
            records_socket: None,
            records_max_bytes: 16 << 10,
            records_max_connections: 256,
            records_rate: 2000,
        }
    }
}

/// What the records socket took and refused (`membrane status`, `sidecar_records`).
#[derive(Debug, Default)]
pub struct RecordStats {
    /// Connections open now.
    pub connections: AtomicUsize,
    /// Records published into the event stream.
    pub published: AtomicU64,
    /// Connections refused: the peer process is in no registered endpoint's namespace.
    pub refused_unknown_peer: AtomicU64,
    /// Connections refused: `--records-max-connections`, or the endpoint's own bound.
    pub refused_busy: AtomicU64,
    /// Connections ended by a record longer than `--records-max-bytes`.
    pub refused_too_long: AtomicU64,
    /// Lines that were not an `l7` record.
    pub malformed: AtomicU64,
    /// Records over the endpoint's `--records-rate`.
    pub rate_limited: AtomicU64,
}

impl RecordStats {
    /// The counters as JSON.
    pub fn json(&self) -> serde_json::Value {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "connections": self.connections.load(Ordering::Relaxed),
            "published": n(&self.published),
            "refused_unknown_peer": n(&self.refused_unknown_peer),
            "refused_busy": n(&self.refused_busy),
            "refused_too_long": n(&self.refused_too_long),
            "malformed": n(&self.malformed),
            "rate_limited": n(&self.rate_limited),
        })
    }
}

/// Binds `path` for any local user (mode 0666; the sidecar runs as its own uid, and who
/// may speak for which pod is decided by the peer's network namespace, not its uid). A
/// socket nobody answers on is replaced; a live one, or a file that is not a socket, is
/// an error.
pub fn bind(path: &Path) -> Result<UnixListener, RecordsError> {
    let err = |source| RecordsError::Bind {
        path: path.to_owned(),
        source,
    };
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(err)?;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another agent is serving this socket",
                )));
            }
            std::fs::remove_file(path).map_err(err)?;
        }
        Ok(_) => {
            return Err(err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a socket; not replacing it",
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(err)?;
    Ok(listener)
}

/// One registered endpoint as the records are attributed to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributed {
    /// `namespace/pod`.
    pub pod: String,
    /// Its addresses (the control plane's, else the registration's).
    pub ips: Vec<IpAddr>,
    /// Its identity (0 while the control plane does not describe it).
    pub identity: u32,
}

/// The endpoints of the node by network namespace (device, inode), and by address.
#[derive(Debug, Default)]
struct Table {
    by_netns: HashMap<(u64, u64), Attributed>,
    by_ip: HashMap<IpAddr, String>,
}

impl Node {
    /// The registered endpoints with the network namespace each is in (device and inode
    /// of its `netns` path; an endpoint whose namespace is gone is left out).
    pub fn records_table(&self) -> Vec<((u64, u64), Attributed)> {
        self.regs
            .iter()
            .filter_map(|(key, reg)| {
                let m = std::fs::metadata(&reg.netns).ok()?;
                let spec = self.spec(key).flatten();
                let a = Attributed {
                    pod: key.clone(),
                    ips: spec.map_or_else(|| reg.ips.clone(), |s| s.ips.clone()),
                    identity: spec.map_or(0, |s| s.identity),
                };
                Some(((m.dev(), m.ino()), a))
            })
            .collect()
    }
}

fn table(node: &Node) -> Table {
    let mut t = Table::default();
    for (ns, a) in node.records_table() {
        for ip in &a.ips {
            t.by_ip.insert(*ip, a.pod.clone());
        }
        t.by_netns.insert(ns, a);
    }
    t
}

/// Per endpoint: connections held and the rate limiter's bucket.
#[derive(Debug)]
struct PeerState {
    connections: usize,
    tokens: f64,
    at: Instant,
}

/// What every connection's thread shares.
struct Shared {
    node: Arc<Mutex<Node>>,
    hub: Arc<Hub>,
    args: RecordArgs,
    stats: Arc<RecordStats>,
    peers: Mutex<HashMap<String, PeerState>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Accepts sidecars' connections on `listener` forever (see the module docs).
pub fn serve(
    listener: UnixListener,
    node: Arc<Mutex<Node>>,
    hub: Arc<Hub>,
    args: RecordArgs,
    stats: Arc<RecordStats>,
) {
    let shared = Arc::new(Shared {
        node,
        hub,
        args,
        stats,
        peers: Mutex::new(HashMap::new()),
    });
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let s = &shared.stats;
        if s.connections.load(Ordering::Relaxed) >= shared.args.records_max_connections as usize {
            s.refused_busy.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        // The peer's namespace is read now, while the process that connected most
        // likely still runs under its pid (SO_PEERCRED names the connecting process).
        let netns = peer_netns(&conn);
        s.connections.fetch_add(1, Ordering::Relaxed);
        let shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("sidecar-records".into())
            .spawn(move || {
                if let Err(e) = connection(&shared, conn, netns) {
                    tracing::debug!("sidecar records connection: {e}");
                }
                shared.stats.connections.fetch_sub(1, Ordering::Relaxed);
            });
        if let Err(e) = spawned {
            tracing::warn!("sidecar records: cannot start a thread: {e}");
        }
    }
}

/// The network namespace (device, inode) of the process at the other end of `conn`.
fn peer_netns(conn: &UnixStream) -> io::Result<(u64, u64)> {
    let cred = nix::sys::socket::getsockopt(conn, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(io::Error::from)?;
    let m = std::fs::metadata(format!("/proc/{}/ns/net", cred.pid()))?;
    Ok((m.dev(), m.ino()))
}

/// Refuses `conn` with one error line (the sidecar logs it).
fn refuse(mut conn: UnixStream, why: &str) {
    let _ = conn.set_write_timeout(Some(Duration::from_millis(100)));
    let _ = writeln!(conn, "{}", serde_json::json!({ "error": why }));
}

fn connection(shared: &Shared, conn: UnixStream, netns: io::Result<(u64, u64)>) -> io::Result<()> {
    let stats = &shared.stats;
    let mut table = table(&lock(&shared.node));
    let who = match netns
        .ok()
        .and_then(|ns| table.by_netns.get(&ns).cloned().map(|a| (ns, a)))
    {
        Some(w) => w,
        None => {
            stats.refused_unknown_peer.fetch_add(1, Ordering::Relaxed);
            refuse(
                conn,
                "the connecting process is in no endpoint of this node",
            );
            return Ok(());
        }
    };
    let (ns, mut me) = who;
    {
        let mut peers = lock(&shared.peers);
        let p = peers.entry(me.pod.clone()).or_insert_with(|| PeerState {
            connections: 0,
            tokens: 2.0 * shared.args.records_rate as f64,
            at: Instant::now(),
        });
        if p.connections >= PER_ENDPOINT_CONNECTIONS {
            drop(peers);
            stats.refused_busy.fetch_add(1, Ordering::Relaxed);
            refuse(conn, "too many connections from this endpoint");
            return Ok(());
        }
        p.connections += 1;
    }
    let pod = me.pod.clone();
    let done = read_records(shared, &conn, ns, &mut me, &mut table);
    let mut peers = lock(&shared.peers);
    if let Some(p) = peers.get_mut(&pod) {
        p.connections -= 1;
        if p.connections == 0 {
            peers.remove(&pod);
        }
    }
    done
}

fn read_records(
    shared: &Shared,
    conn: &UnixStream,
    ns: (u64, u64),
    me: &mut Attributed,
    table: &mut Table,
) -> io::Result<()> {
    let max = shared.args.records_max_bytes as usize;
    let mut reader = BufReader::with_capacity(64 << 10, conn);
    let mut line = Vec::with_capacity(1024);
    let mut refreshed = Instant::now();
    loop {
        line.clear();
        // At most `max` bytes and the newline: a longer line ends the connection.
        let n = io::Read::take(&mut reader, max as u64 + 1).read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') {
            if line.len() > max {
                shared
                    .stats
                    .refused_too_long
                    .fetch_add(1, Ordering::Relaxed);
                refuse(
                    conn.try_clone()?,
                    &format!("record longer than {max} bytes"),
                );
            }
            return Ok(());
        }
        if refreshed.elapsed() >= REFRESH_EVERY {
            refreshed = Instant::now();
            // Never wait for the node: a busy one is asked again on the next record.
            if let Ok(node) = shared.node.try_lock() {
                *table = self::table(&node);
                match table.by_netns.get(&ns) {
                    Some(a) => *me = a.clone(),
                    None => return Ok(()), // the endpoint is gone
                }
            }
        }
        let Some(ev) = parse(&line) else {
            shared.stats.malformed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if !take_token(shared, &me.pod) {
            shared.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let ev = attribute(ev, shared.hub.node(), me, table, SystemTime::now());
        shared.hub.publish(&ev);
        shared.stats.published.fetch_add(1, Ordering::Relaxed);
    }
}

/// One token from `pod`'s bucket (`--records-rate` a second, twice that at most).
fn take_token(shared: &Shared, pod: &str) -> bool {
    let rate = shared.args.records_rate as f64;
    let mut peers = lock(&shared.peers);
    let Some(p) = peers.get_mut(pod) else {
        return false;
    };
    let now = Instant::now();
    p.tokens = (p.tokens + now.duration_since(p.at).as_secs_f64() * rate).min(2.0 * rate);
    p.at = now;
    if p.tokens >= 1.0 {
        p.tokens -= 1.0;
        true
    } else {
        false
    }
}

/// A line as an `l7` record with a verdict, or `None`.
fn parse(line: &[u8]) -> Option<Event> {
    let ev: Event = serde_json::from_slice(line).ok()?;
    let verdict_ok = matches!(ev.verdict.as_deref(), Some("allowed" | "denied"));
    let l7_ok = ev
        .l7
        .as_ref()
        .is_some_and(|l| matches!(l.direction.as_str(), "ingress" | "egress"));
    (ev.kind == TYPE_L7 && verdict_ok && l7_ok).then_some(ev)
}

/// `ev` as the agent vouches for it: the sender's side is `me` (pod, identity, an
/// address of its own), the other side's pod is what this node knows of its address,
/// and the stream's own fields are the agent's.
fn attribute(mut ev: Event, node: &str, me: &Attributed, table: &Table, now: SystemTime) -> Event {
    let ingress = ev.l7.as_ref().is_some_and(|l| l.direction == "ingress");
    let (mine, theirs) = match ingress {
        true => (&mut ev.dst, &ev.src),
        false => (&mut ev.src, &ev.dst),
    };
    let addr = mine.as_deref().and_then(|a| a.parse::<SocketAddr>().ok());
    // An address that is not the endpoint's own (an egress request's loopback source, or
    // a claim) is replaced by the endpoint's first address, its port kept.
    let own = match (addr, me.ips.first()) {
        (Some(a), _) if me.ips.contains(&a.ip()) => Some(a.to_string()),
        (a, Some(ip)) => Some(SocketAddr::new(*ip, a.map_or(0, |a| a.port())).to_string()),
        (_, None) => None,
    };
    *mine = own;
    let their_pod = theirs
        .as_deref()
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .and_then(|a| table.by_ip.get(&a.ip()).cloned());
    let (my_pod, my_id) = (Some(me.pod.clone()), me.identity);
    if ingress {
        ev.dst_pod = my_pod;
        ev.src_pod = their_pod;
        ev.dst_identity = my_id;
    } else {
        ev.src_pod = my_pod;
        ev.dst_pod = their_pod;
        ev.src_identity = my_id;
    }
    ev.node = node.to_owned();
    ev.kind = TYPE_L7.to_owned();
    ev.program = "sidecar".to_owned();
    ev.proto = 6;
    ev.count = 1;
    let claimed = humantime::parse_rfc3339(&ev.time).ok();
    let plausible = claimed.is_some_and(|t| {
        t.duration_since(now).unwrap_or_default() <= Duration::from_secs(1)
            && now.duration_since(t).unwrap_or_default() <= TIME_SLACK
    });
    if !plausible {
        ev.time = monitor::rfc3339(now);
    }
    ev
}

#[cfg(test)]
mod tests;
