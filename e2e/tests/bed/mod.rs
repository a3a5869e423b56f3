//! The netns mini-cluster (`membrane-minicluster`) as the e2e tests' test bed: the
//! workspace's binaries found, and probes that ask one request again and again from a
//! ship's pod, each answer classified, while something changes under them.

// Shared by several test files, each using part of it.
#![allow(dead_code)]

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use membrane_minicluster::{Bins, Cluster, Pod};

/// The workspace's binaries: `make test` (`cargo build --workspace --bins`) puts them in
/// the directory above this test's executable. A missing one fails the test, saying how
/// to get it (building from inside a test would race the build running it).
pub fn bins() -> Bins {
    let exe = std::env::current_exe().expect("this test's executable");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    Cluster::prerequisites(dir).unwrap_or_else(|why| {
        panic!("{why} (build the workspace's binaries first: cargo build --workspace --bins)")
    })
}

/// What a request got: the status code, or `drop` for no response (the datapath drops
/// a connection it refuses: curl gives up).
pub fn kind(answer: &str) -> String {
    match answer.split_whitespace().next() {
        Some("no") => "drop".to_owned(),
        Some(code) => code.to_owned(),
        None => "empty".to_owned(),
    }
}

/// One request asked again and again: `ship` to `target` (an address), `method path`.
#[derive(Clone, Copy)]
pub struct Probe {
    /// Who asks.
    pub ship: Pod,
    /// Whom: a deathstar's address, or the service's.
    pub target: &'static str,
    /// The request.
    pub method: &'static str,
    /// Its path.
    pub path: &'static str,
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} http://{}{}",
            self.ship.name, self.method, self.target, self.path
        )
    }
}

/// How long a dropped request waits for an answer.
const DROP_WAIT: u32 = 1;

impl Probe {
    /// One request: its [`kind`].
    pub fn ask(&self, c: &Cluster) -> String {
        let url = format!("http://{}{}", self.target, self.path);
        let got = c
            .request_within(self.ship.name, self.method, &url, DROP_WAIT)
            .unwrap_or_else(|e| panic!("{self}: {e:#}"));
        kind(&got)
    }
}

/// Every answer each probe got while [`watch`] ran, in order, with whether it was
/// asked once the change had begun.
pub struct Seen {
    /// The probe.
    pub probe: Probe,
    /// (answer kind, asked once the change had begun).
    pub answers: Vec<(String, bool)>,
}

impl Seen {
    /// How many answers were not `want`.
    pub fn not(&self, want: &str) -> usize {
        self.answers.iter().filter(|(k, _)| k != want).count()
    }
}

/// The probes asked in a loop each on a thread of its own while `change` runs: each
/// first answers at least twice, then `change` runs, then each goes on until the change
/// has returned, one more answer came after that, and `done` says the answers are
/// enough (or 60 s pass after the change: bounded).
pub fn watch(
    c: &Cluster,
    probes: &[Probe],
    change: impl FnOnce(),
    done: impl Fn(&Probe, &[(String, bool)]) -> bool + Sync,
) -> Vec<Seen> {
    let (changed, finished) = (AtomicBool::new(false), AtomicBool::new(false));
    let seen: Vec<Mutex<Vec<(String, bool)>>> = probes.iter().map(|_| Mutex::default()).collect();
    let limit = Mutex::new(Instant::now() + Duration::from_secs(60));
    std::thread::scope(|s| {
        for (p, out) in probes.iter().zip(&seen) {
            let (changed, finished, done, limit) = (&changed, &finished, &done, &limit);
            s.spawn(move || loop {
                let after = changed.load(Ordering::SeqCst);
                let over = finished.load(Ordering::SeqCst);
                let k = p.ask(c);
                let mut v = out.lock().unwrap();
                v.push((k, after));
                if (over && done(p, &v)) || Instant::now() > *limit.lock().unwrap() {
                    return;
                }
            });
        }
        // Every probe has its answer from before the change.
        while seen.iter().any(|v| v.lock().unwrap().len() < 2)
            && Instant::now() < *limit.lock().unwrap()
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        // A request started from here on may get the old answer or the new one.
        changed.store(true, Ordering::SeqCst);
        change();
        *limit.lock().unwrap() = Instant::now() + Duration::from_secs(60);
        finished.store(true, Ordering::SeqCst);
    });
    probes
        .iter()
        .zip(seen)
        .map(|(p, v)| Seen {
            probe: *p,
            answers: v.into_inner().unwrap(),
        })
        .collect()
}
