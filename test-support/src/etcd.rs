//! A real etcd (Debian `etcd-server`) on loopback, with its data in a temp dir; killed (by
//! pid) and reaped on drop.
//!
//! Ports: etcd is started on `127.0.0.1:0` for clients and peers and the launcher reads the
//! client port it bound from its log (`serving ... client requests on 127.0.0.1:PORT`), so
//! no port is chosen for it. A restart reuses that client port, as a restarted server
//! would (clients hold its URL); if something else took the port in between, the restart
//! retries a bounded number of times, then fails naming the port.
//!
//! [`Etcd::cluster`] starts a three-member (or n-member) cluster instead. Members must know
//! each other's peer URLs before any starts, so port 0 cannot serve there; each member
//! gets a loopback address of its own, derived from the test process's pid (the pid is
//! unique among running tests, and nothing else binds these addresses), with etcd's
//! ports 2379 (clients) and 2380 (peers). A member is killed with [`Etcd::stop`] and
//! rejoins with [`Etcd::restart`] (same name, data and addresses).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::process::ChildGuard;

/// How long etcd may take to report its client address.
const START_LIMIT: Duration = Duration::from_secs(20);
/// How often a restart retries a client port something else holds.
const RESTART_ATTEMPTS: u32 = 20;

/// TLS on the client port; client certificates are then required (`--client-cert-auth`).
#[derive(Clone, Debug)]
pub struct EtcdTls {
    /// The server certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// The CA client certificates must chain to.
    pub ca: PathBuf,
}

/// What makes a server a member of a cluster of several.
#[derive(Clone, Debug)]
struct Member {
    /// Its name (`m0`, `m1`, ...).
    name: String,
    /// Its loopback address, for clients (2379) and peers (2380).
    ip: String,
    /// `NAME=PEER_URL,...` of every member.
    initial_cluster: String,
    /// The cluster's token, unique per cluster.
    token: String,
}

/// A running etcd.
#[derive(Debug)]
pub struct Etcd {
    proc: Option<ChildGuard>,
    client_port: u16,
    member: Option<Member>,
    /// Its data directory and log (`etcd.log`).
    pub dir: tempfile::TempDir,
    /// TLS on the client port, if any.
    pub tls: Option<EtcdTls>,
}

impl Etcd {
    /// Starts etcd and returns once it reported its client address.
    pub fn start() -> Etcd {
        Self::start_with(None)
    }

    /// Starts etcd serving clients over TLS only, requiring a client certificate that
    /// chains to `ca`.
    pub fn start_tls(cert: &Path, key: &Path, ca: &Path) -> Etcd {
        Self::start_with(Some(EtcdTls {
            cert: cert.into(),
            key: key.into(),
            ca: ca.into(),
        }))
    }

    fn start_with(tls: Option<EtcdTls>) -> Etcd {
        let mut e = Etcd {
            proc: None,
            client_port: 0,
            member: None,
            dir: tempfile::tempdir().unwrap(),
            tls,
        };
        e.spawn()
            .unwrap_or_else(|log| panic!("etcd did not start: {log}"));
        e
    }

    /// Starts a cluster of `n` (at most 8) members (plaintext) and returns once every
    /// member serves clients, which etcd does only once the cluster has a leader. Member
    /// `i` listens on `127.X.Y.(B+i)`, X.Y from this process's pid, B from how many
    /// clusters it started before.
    pub fn cluster(n: usize) -> Vec<Etcd> {
        // Clusters of one process (tests sharing a binary under `cargo test`) take turns
        // through the last octet.
        static CLUSTERS: AtomicUsize = AtomicUsize::new(0);
        let pid = std::process::id();
        let net = format!("127.{}.{}", 100 + (pid >> 8) % 150, pid % 256);
        let base = 1 + CLUSTERS.fetch_add(1, Ordering::Relaxed) * 8;
        assert!(
            n <= 8 && base + n < 255,
            "too many etcd clusters in one process"
        );
        let ips: Vec<String> = (0..n).map(|i| format!("{net}.{}", base + i)).collect();
        let initial_cluster = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| format!("m{i}=http://{ip}:2380"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members: Vec<Etcd> = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| Etcd {
                proc: None,
                client_port: 2379,
                member: Some(Member {
                    name: format!("m{i}"),
                    ip: ip.clone(),
                    initial_cluster: initial_cluster.clone(),
                    token: format!("membrane-test-{pid}-{base}"),
                }),
                dir: tempfile::tempdir().unwrap(),
                tls: None,
            })
            .collect();
        // Every member first: none serves clients before the others are up.
        let started: Vec<ChildGuard> = members.iter().map(Etcd::launch).collect();
        for (m, guard) in members.iter_mut().zip(started) {
            let guard = m
                .wait_served(guard)
                .unwrap_or_else(|log| panic!("etcd member {} did not start: {log}", m.url()));
            m.proc = Some(guard);
        }
        members
    }

    /// `http://127.0.0.1:PORT` (`https://` with TLS; a cluster member's own address).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let ip = self.member.as_ref().map_or("127.0.0.1", |m| m.ip.as_str());
        format!("{scheme}://{ip}:{}", self.client_port)
    }

    /// Whether the server runs (not [`Etcd::stop`]ped).
    pub fn is_running(&self) -> bool {
        self.proc.is_some()
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.client_port
    }

    /// What etcd logged since it was last started.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// Kills the server (its data stays).
    pub fn stop(&mut self) {
        self.proc = None;
    }

    /// Starts the server again on the same client port and data.
    pub fn restart(&mut self) {
        self.stop();
        let mut last = String::new();
        for _ in 0..RESTART_ATTEMPTS {
            match self.spawn() {
                Ok(()) => return,
                Err(log) if log.contains("address already in use") => {
                    last = log;
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(log) => panic!("etcd did not restart: {log}"),
            }
        }
        panic!(
            "etcd could not have its client port {} back: {last}",
            self.client_port
        );
    }

    /// Spawns etcd on the known client port (0 the first time) and waits until it reports
    /// the address it serves clients on; `Err(log)` when it exits or stays silent.
    fn spawn(&mut self) -> Result<(), String> {
        let guard = self.launch();
        self.proc = Some(self.wait_served(guard)?);
        Ok(())
    }

    /// Spawns etcd with its log in `etcd.log`, without waiting.
    fn launch(&self) -> ChildGuard {
        let client = self.url();
        let (name, peer, initial_cluster, token) = match &self.member {
            Some(m) => (
                m.name.clone(),
                format!("http://{}:2380", m.ip),
                m.initial_cluster.clone(),
                m.token.clone(),
            ),
            None => {
                let peer = "http://127.0.0.1:0".to_owned();
                let cluster = format!("test={peer}");
                ("test".to_owned(), peer, cluster, "etcd-cluster".to_owned())
            }
        };
        let log_path = self.dir.path().join("etcd.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut tls_args: Vec<&std::ffi::OsStr> = Vec::new();
        if let Some(t) = &self.tls {
            tls_args.extend([
                "--cert-file".as_ref(),
                t.cert.as_os_str(),
                "--key-file".as_ref(),
                t.key.as_os_str(),
                "--trusted-ca-file".as_ref(),
                t.ca.as_os_str(),
                "--client-cert-auth".as_ref(),
            ]);
        }
        let child = Command::new("etcd")
            .args(&tls_args)
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--name", &name])
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-token", &token])
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("spawn etcd (Debian etcd-server; scripts/install-deps.sh installs it)");
        ChildGuard(child)
    }

    /// Waits until the server `guard` runs reports its client address; `Err(log)` when it
    /// exits or stays silent.
    fn wait_served(&mut self, mut guard: ChildGuard) -> Result<ChildGuard, String> {
        let log_path = self.dir.path().join("etcd.log");
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Some(port) = served_port(&text) {
                self.client_port = port;
                return Ok(guard);
            }
            if guard.0.try_wait().ok().flatten().is_some() || start.elapsed() > START_LIMIT {
                return Err(text);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The port in etcd's `serving [insecure ]client requests on 127.0.0.1:PORT` line.
fn served_port(log: &str) -> Option<u16> {
    log.lines().find_map(|l| {
        let (_, rest) = l.split_once("client requests on ")?;
        let addr = rest.split([',', ' ']).next()?;
        addr.rsplit_once(':')?.1.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::served_port;

    #[test]
    fn the_client_port_is_read_from_both_forms_of_the_line() {
        let insecure = "2026-12-07 02:14:02.730321 N | embed: serving insecure client requests on 127.0.0.1:44549, this is strongly discouraged!";
        assert_eq!(served_port(insecure), Some(44549));
        let secure =
            "2026-12-07 02:14:02.730321 I | embed: serving client requests on 127.0.0.1:40001";
        assert_eq!(served_port(secure), Some(40001));
        assert_eq!(
            served_port("embed: listening for peers on 127.0.0.1:45693"),
            None
        );
    }
}
