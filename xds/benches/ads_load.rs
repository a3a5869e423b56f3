//! The control plane at fleet size (issue 17): N simulated sidecars (half state
//! of the world, half delta ADS, each its own HTTP/2 connection, Istio node id
//! and pod) against the real `membrane-xds` binary on a watched directory that
//! holds one pod per client and P policies. Measures:
//! 1. one policy change (a policy selecting every pod) → every affected proxy
//!    ACKed the new NPDS version: p50/p99/max from the file's rename;
//! 2. membrane-xds RSS per connected proxy: (RSS with N − RSS with 1) / (N − 1);
//! 3. pod churn (pods created and deleted in the directory at a fixed rate):
//!    rename/unlink → probe clients ACKed NPHDS with the address added/removed,
//!    policy changes made during the churn, and the server's CPU.
//!
//! Prints a Markdown report. Env: XDS_LOAD_CLIENTS (1000), XDS_LOAD_POLICIES
//! (1000), XDS_LOAD_APPS (100), XDS_LOAD_ROUNDS (5), XDS_LOAD_CHURN_RATE (100 pods
//! created and 100 deleted per second), XDS_LOAD_CHURN_SECS (10), XDS_LOAD_PROBES (100).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "ads_load/client.rs"]
mod client;
#[path = "common/mod.rs"]
mod common;

use client::{Proto, Shared, Slot};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 1, 0, 0)) + i as u32 + 1)
}

fn churn_ip(j: usize) -> String {
    format!(
        "{}{}.{}",
        client::CHURN_PREFIX,
        (j / 250) % 250,
        j % 250 + 1
    )
}

fn pod_yaml(name: &str, app: usize, ip: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: app-{app}, tier: bench}}}}\nspec: {{containers: [{{name: c, ports: [{{containerPort: 8080}}]}}]}}\nstatus: {{podIP: {ip}}}\n"
    )
}

fn policies(n: usize, apps: usize) -> String {
    let mut s = String::new();
    for p in 0..n {
        let _ = write!(
            s,
            "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p{p}, namespace: default}}\nspec:\n  endpointSelector: {{matchLabels: {{app: app-{}}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{app: app-{}}}}}]\n    toPorts:\n    - ports: [{{port: \"{}\", protocol: TCP}}]\n      rules:\n        http: [{{method: GET, path: \"/p{p}/.*\"}}]\n",
            p % apps,
            (p + 1) % apps,
            8000 + p / apps
        );
    }
    s
}

/// The policy that changes: it selects every pod, so every proxy is affected. Its
/// peers are one app's pods (`XDS_LOAD_FLEET_FROM=all`: every pod, which makes each
/// sidecar's Envoy RBAC list every pod address: pods² work per change).
fn fleet_policy(round: usize) -> String {
    let from = match std::env::var("XDS_LOAD_FLEET_FROM").as_deref() {
        Ok("all") => "tier: bench",
        _ => "app: app-0",
    };
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: fleet, namespace: default}}\nspec:\n  endpointSelector: {{matchLabels: {{tier: bench}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{{from}}}}}]\n    toPorts:\n    - ports: [{{port: \"9090\", protocol: TCP}}]\n      rules:\n        http: [{{method: GET, path: \"/v{round}/.*\"}}]\n"
    )
}

/// Writes `text` to `path` whole (a dotfile the source skips, then a rename).
fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// utime + stime of `pid`, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / 100.0
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn row(name: &str, mut l: Vec<Duration>) -> String {
    l.sort();
    format!(
        "| {name} | {} | {} | {} | {} |",
        l.len(),
        ms(pct(&l, 0.5)),
        ms(pct(&l, 0.99)),
        ms(l.last().copied().unwrap_or_default())
    )
}

/// The server under test: this build's, or `XDS_LOAD_BIN` (another build, for a
/// before/after comparison in one run of the same load generator).
fn xds_bin() -> PathBuf {
    std::env::var_os("XDS_LOAD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_membrane-xds")))
}

/// Waits until `done` holds for every client's slot; panics after `limit`.
async fn until_all(shared: &Shared, limit: Duration, what: &str, done: impl Fn(&Slot) -> bool) {
    let start = Instant::now();
    loop {
        let mut missing = 0;
        for s in &shared.slots {
            let s = s.lock().unwrap();
            if let Some(e) = &s.ended {
                panic!("a client's stream ended while waiting for {what}: {e}");
            }
            if !done(&s) {
                missing += 1;
            }
        }
        if missing == 0 {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "{missing} clients still without {what} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One change of the fleet policy: rename → each client's first ACK of a new NPDS version.
async fn policy_round(shared: &Shared, file: &Path, round: usize) -> Vec<Duration> {
    let before: Vec<String> = shared
        .slots
        .iter()
        .map(|s| {
            let mut s = s.lock().unwrap();
            s.npds.clear();
            s.npds_version.clone()
        })
        .collect();
    let t0 = Instant::now();
    write_atomic(file, &fleet_policy(round));
    let before = Arc::new(before);
    let changed = |i: usize, s: &Slot| s.npds.iter().find(|(v, _)| *v != before[i]).map(|x| x.1);
    let start = Instant::now();
    loop {
        let mut lat = Vec::with_capacity(shared.slots.len());
        for (i, s) in shared.slots.iter().enumerate() {
            let s = s.lock().unwrap();
            if let Some(at) = changed(i, &s) {
                lat.push(at.duration_since(t0));
            }
        }
        if lat.len() == shared.slots.len() {
            return lat;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "round {round}: {} of {} clients ACKed",
            lat.len(),
            shared.slots.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Churn pods written (rename) and removed (unlink), with the time of each.
#[derive(Default)]
struct ChurnLog {
    created: HashMap<String, Instant>,
    deleted: HashMap<String, Instant>,
}

/// Creates `rate` pods per second, each removed `life` later, for `secs` seconds;
/// then removes the rest.
async fn churn(dir: PathBuf, apps: usize, rate: usize, secs: usize, log: Arc<Mutex<ChurnLog>>) {
    let life = 2 * rate; // pods live 2 s: steady state, `rate` created and `rate` deleted per second
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let path = |j: usize| dir.join(format!("churn-{j}.yaml"));
    let total = rate * secs;
    for j in 0..total {
        tick.tick().await;
        let ip = churn_ip(j);
        write_atomic(&path(j), &pod_yaml(&format!("churn-{j}"), j % apps, &ip));
        log.lock().unwrap().created.insert(ip, Instant::now());
        if j >= life {
            let _ = std::fs::remove_file(path(j - life));
            log.lock()
                .unwrap()
                .deleted
                .insert(churn_ip(j - life), Instant::now());
        }
    }
    for j in total.saturating_sub(life)..total {
        tick.tick().await;
        let _ = std::fs::remove_file(path(j));
        log.lock()
            .unwrap()
            .deleted
            .insert(churn_ip(j), Instant::now());
    }
}

async fn load(report: &mut String) {
    let n = env("XDS_LOAD_CLIENTS", 1000).max(2);
    let npol = env("XDS_LOAD_POLICIES", 1000);
    let apps = env("XDS_LOAD_APPS", 100);
    let rounds = env("XDS_LOAD_ROUNDS", 5);
    let rate = env("XDS_LOAD_CHURN_RATE", 100).max(1);
    let churn_secs = env("XDS_LOAD_CHURN_SECS", 10);
    let probes = env("XDS_LOAD_PROBES", 100).min(n);
    let dir = tempfile::tempdir().unwrap();
    for (k, chunk) in (0..n).collect::<Vec<_>>().chunks(1000).enumerate() {
        let text: String = chunk
            .iter()
            .map(|&i| pod_yaml(&format!("pod-{i}"), i % apps, &pod_ip(i).to_string()))
            .collect();
        std::fs::write(dir.path().join(format!("pods-{k}.yaml")), text).unwrap();
    }
    std::fs::write(dir.path().join("policies.yaml"), policies(npol, apps)).unwrap();
    let fleet = dir.path().join("fleet.yaml");
    std::fs::write(&fleet, fleet_policy(0)).unwrap();

    let (mut child, addr) = common::spawn_xds(&xds_bin(), dir.path(), 1000);
    let pid = child.id();
    let shared = Arc::new(Shared {
        slots: (0..n).map(|_| Mutex::new(Slot::default())).collect(),
        host_events: Mutex::new(Vec::new()),
    });
    let start_client = |i: usize| {
        let node = format!(
            "sidecar~{}~pod-{i}.default~default.svc.cluster.local",
            pod_ip(i)
        );
        let proto = if i.is_multiple_of(2) {
            Proto::Sotw
        } else {
            Proto::Delta
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(client::run(
            addr.clone(),
            i,
            node,
            proto,
            i < probes,
            shared.clone(),
            tx,
        ));
        rx
    };
    // Client 0 first: its first response means the translation is done.
    let t_start = Instant::now();
    let _ = start_client(0).await;
    let both = |s: &Slot| !s.npds_version.is_empty() && s.nphds.is_some();
    while !both(&shared.slots[0].lock().unwrap()) {
        assert!(
            t_start.elapsed() < Duration::from_secs(120),
            "no first snapshot"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready = t_start.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_one = rss_kib(pid);

    // The rest, 100 connecting at a time, as a fleet of proxies starting would.
    let started = Instant::now();
    for chunk in (1..n).collect::<Vec<_>>().chunks(100) {
        let waits: Vec<_> = chunk.iter().map(|&i| start_client(i)).collect();
        for w in waits {
            let _ = w.await;
        }
    }
    until_all(&shared, Duration::from_secs(300), "both types", both).await;
    let connect_all = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_all = rss_kib(pid);

    // Phase marks on stderr (the report goes to stdout), for a profiler to attach to.
    eprintln!("ads_load: {n} connected; rounds");
    let mut quiet = Vec::new();
    for round in 1..=rounds {
        quiet.push(row(
            &round.to_string(),
            policy_round(&shared, &fleet, round).await,
        ));
    }

    // The flight recorder keeps a bounded history per proxy, which fills as changes go out:
    // memory per proxy after the rounds too, not only just after connecting.
    let rss_rounds = rss_kib(pid);

    // Churn, with policy changes made while it runs.
    eprintln!("ads_load: churn");
    shared.host_events.lock().unwrap().clear();
    let log = Arc::new(Mutex::new(ChurnLog::default()));
    let cpu0 = cpu_secs(pid);
    let c0 = Instant::now();
    let churner = tokio::spawn(churn(
        dir.path().into(),
        apps,
        rate,
        churn_secs,
        log.clone(),
    ));
    let mut during = Vec::new();
    let mut round = rounds;
    while !churner.is_finished() {
        round += 1;
        during.extend(policy_round(&shared, &fleet, round).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    churner.await.unwrap();
    eprintln!("ads_load: churn done");
    let churn_wall = c0.elapsed();
    let cpu = cpu_secs(pid) - cpu0;
    let last_write = Instant::now();
    // Every probe sees every removal (the last events), bounded.
    let expected = probes * log.lock().unwrap().deleted.len();
    let wait = Instant::now();
    while wait.elapsed() < Duration::from_secs(60) {
        let removed = shared
            .host_events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| !e.added)
            .count();
        if removed >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And every client has the same NPHDS version as probe 0.
    let settled = loop {
        let target = shared.slots[0].lock().unwrap().nphds.clone().map(|x| x.0);
        let behind = shared
            .slots
            .iter()
            .filter(|s| s.lock().unwrap().nphds.as_ref().map(|x| &x.0) != target.as_ref())
            .count();
        if behind == 0 || last_write.elapsed() > Duration::from_secs(60) {
            break (behind, last_write.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (mut adds, mut dels, mut unseen) = (Vec::new(), Vec::new(), 0usize);
    {
        let log = log.lock().unwrap();
        let ev = shared.host_events.lock().unwrap();
        let mut seen: HashMap<(&str, bool), usize> = HashMap::new();
        for e in ev.iter() {
            let at = if e.added {
                log.created.get(&e.ip)
            } else {
                log.deleted.get(&e.ip)
            };
            if let Some(t) = at {
                *seen.entry((e.ip.as_str(), e.added)).or_default() += 1;
                let d = e.at.saturating_duration_since(*t);
                if e.added {
                    adds.push(d)
                } else {
                    dels.push(d)
                }
            }
        }
        for ip in log.created.keys() {
            unseen += probes.saturating_sub(*seen.get(&(ip.as_str(), true)).unwrap_or(&0));
        }
    }
    let ended = shared
        .slots
        .iter()
        .filter(|s| s.lock().unwrap().ended.is_some())
        .count();
    let _ = child.kill();
    let _ = child.wait();

    let per = rss_all.saturating_sub(rss_one) as f64 / (n - 1) as f64;
    let per_rounds = rss_rounds.saturating_sub(rss_one) as f64 / (n - 1) as f64;
    let _ = writeln!(report, "## {n} ADS clients\n");
    let _ = writeln!(
        report,
        "{n} simulated sidecars on the real membrane-xds (`{}`, plaintext xDS on \
         loopback, directory source watched with inotify), each its own HTTP/2 connection, \
         Istio node id and pod: {} state-of-the-world and {} delta ADS streams, each \
         subscribed to NPDS and NPHDS (wildcard), ACKing every response at once. The \
         source holds {n} pods ({apps} apps, one pod per client) and {} policies.\n",
        xds_bin().display(),
        n.div_ceil(2),
        n / 2,
        npol + 1
    );
    let _ = writeln!(
        report,
        "First snapshot for the first client {} after start; the other {} connected and \
         had both types in {}.\n",
        ms(ready),
        n - 1,
        ms(connect_all)
    );
    let _ = writeln!(
        report,
        "### One policy change → every affected proxy ACKed\n"
    );
    let _ = writeln!(
        report,
        "The changed policy selects every pod (all {n} proxies are affected) and allows \
         {} on port 9090 with an HTTP rule whose path changes. Latency = the policy file's \
         rename → the client ACKed the new NPDS version. Goal: p99 < 1 s.\n",
        match std::env::var("XDS_LOAD_FLEET_FROM").as_deref() {
            Ok("all") => "every pod",
            _ => "app-0's pods",
        }
    );
    let _ = writeln!(
        report,
        "| round | ACKs | p50 | p99 | max |\n|---|---|---|---|---|"
    );
    for r in &quiet {
        let _ = writeln!(report, "{r}");
    }
    let _ = writeln!(report, "\n### Memory per connected proxy\n");
    let _ = writeln!(
        report,
        "membrane-xds RSS {rss_one} KiB with 1 client, {rss_all} KiB with {n}: \
         **{per:.1} KiB per connected proxy**. Goal: ≤ 16 KiB. After the {rounds} policy \
         changes: {rss_rounds} KiB, {per_rounds:.1} KiB per connected proxy (the per-proxy \
         history of the flight recorder fills as changes go out).\n"
    );
    let _ = writeln!(report, "### Pod churn\n");
    let _ = writeln!(
        report,
        "{rate} pods created and {rate} deleted per second (each lives 2 s, one file per \
         pod, written by rename, removed by unlink) for {churn_secs} s (took {:.1} s), \
         while the fleet policy changes again as soon as the previous change is ACKed \
         everywhere (+500 ms). Address latency = the pod file's rename/unlink → a probe \
         client ({probes} probes, half delta) ACKed NPHDS with the address added/removed. \
         Goal: p99 ≤ 1 s.\n",
        churn_wall.as_secs_f64()
    );
    let _ = writeln!(
        report,
        "| measure | n | p50 | p99 | max |\n|---|---|---|---|---|"
    );
    let _ = writeln!(report, "{}", row("pod added → NPHDS ACKed", adds));
    let _ = writeln!(report, "{}", row("pod removed → NPHDS ACKed", dels));
    let _ = writeln!(
        report,
        "{}",
        row("policy change → NPDS ACKed (all clients)", during)
    );
    let _ = writeln!(
        report,
        "\nAdditions a probe never saw (the pod was gone before its next push): {unseen}. \
         All {n} clients on one NPHDS version {} after the last churn write ({} behind; this \
         includes waiting, up to 60 s, for every probe to see every removal). \
         membrane-xds CPU during the churn: {:.2} cores. Streams ended: {ended}.\n",
        ms(settled.1),
        settled.0,
        cpu / churn_wall.as_secs_f64()
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut report = String::new();
    rt.block_on(load(&mut report));
    print!("{report}");
}
