//! Step 6's mini-cluster: its pods, what it made (to undo once), and the scenario it plays.

use super::pods::is_root;
use super::*;

/// A pod of the mini-cluster: its labels, address and identity.
pub(super) struct Pod {
    pub(super) name: &'static str,
    pub(super) labels: &'static str,
    pub(super) ip: &'static str,
    pub(super) identity: u32,
}

/// Step 6: a mini-cluster on this machine. Every pod is a network namespace
/// on a bridge (in a namespace of its own, the "node") and a cgroup with
/// the eBPF datapath attached: the ships' connects to the deathstar service
/// go to a replica chosen per connection and are decided at L3/L4 on it
/// (maps written from the policy engine's verdicts); each deathstar's
/// inbound connections are handed by sk_lookup to its membrane-proxy
/// sidecar, which enforces the L7 rules. Everything it starts
/// is stopped, detached and removed when it is dropped (failures included)
/// or when SIGINT/SIGTERM arrives first.
pub(super) struct Cluster {
    pub(super) tag: String,
    pub(super) cgroups: PathBuf,
    pub(super) dir: PathBuf,
    pub(super) state: Arc<Mutex<Teardown>>,
}

/// What the mini-cluster made, in the order it was made, to be undone once.
#[derive(Default)]
pub(super) struct Teardown {
    pub(super) children: Vec<Child>,
    pub(super) attached: Vec<(Datapath, PathBuf)>,
    pub(super) netns: Vec<String>,
    pub(super) dirs: Vec<PathBuf>,
}

impl Teardown {
    pub(super) fn run(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
        for (dp, cg) in self.attached.drain(..) {
            for ns in &self.netns {
                let _ = dp.detach_netns(&PathBuf::from("/run/netns").join(ns));
            }
            let _ = dp.detach(&cg);
            let _ = std::fs::remove_dir(dp.dir());
            let _ = std::fs::remove_dir(&cg);
        }
        for ns in self.netns.drain(..).rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", &ns])
                .stderr(Stdio::null())
                .status();
        }
        // Innermost first: the cgroup and bpffs roots, the temp directory.
        for d in self.dirs.drain(..).rev() {
            let _ = std::fs::remove_dir_all(&d).or_else(|_| std::fs::remove_dir(&d));
        }
    }
}

/// Undo `state` and exit when SIGINT or SIGTERM arrives before the demo ends.
fn teardown_on_signal(state: Arc<Mutex<Teardown>>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    std::thread::spawn(move || {
        rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        });
        if let Ok(mut t) = state.lock() {
            t.run();
        }
        std::process::exit(130);
    });
    Ok(())
}

pub(super) const NODE_BRIDGE: &str = "10.200.0.1/24";

impl Cluster {
    /// The sidecar binary, or why step 6 cannot run here.
    pub(super) fn prerequisites() -> std::result::Result<PathBuf, String> {
        let proxy = std::env::current_exe()
            .map_err(|e| format!("cannot find this binary: {e}"))?
            .with_file_name("membrane-proxy");
        if !proxy.is_file() {
            return Err(format!(
                "the live step needs membrane-proxy beside this binary ({})",
                proxy.display()
            ));
        }
        if !is_root() {
            return Err("the live step needs root (network namespaces, cgroups, eBPF)".into());
        }
        for tool in ["ip", "curl"] {
            let found = Command::new(tool)
                .arg("-V")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok();
            if !found {
                return Err(format!("the live step needs `{tool}`"));
            }
        }
        if membrane_datapath::cgroup2_mount().is_none() {
            return Err("the live step needs a cgroup v2 mount".into());
        }
        Ok(proxy)
    }

    pub(super) fn run(proxy: &Path) -> Result<()> {
        let tag = format!("membrane-demo-{}", std::process::id());
        step(&format!(
            "6. Live: a mini-cluster ({tag}: a network namespace and a cgroup per pod, \
             the eBPF datapath, two deathstar replicas with sidecars behind a service)"
        ));
        let cg2 = membrane_datapath::cgroup2_mount().context("no cgroup v2 mount")?;
        let state = Arc::new(Mutex::new(Teardown::default()));
        teardown_on_signal(state.clone())?;
        let c = Cluster {
            cgroups: cg2.join(&tag),
            dir: std::env::temp_dir().join(&tag),
            tag,
            state,
        };
        let bpf = PathBuf::from("/sys/fs/bpf").join(&c.tag);
        membrane_datapath::ensure_bpffs(&bpf)?;
        for d in [&c.dir, &c.cgroups, &bpf] {
            std::fs::create_dir(d).with_context(|| format!("create {}", d.display()))?;
            c.undo().dirs.push(d.clone());
        }

        // The policy engine as the control plane runs it: the L7 policy, and
        // every pod an endpoint with an identity, one per label set.
        let mut engine = Engine::default();
        engine.apply_policies(compile_quietly(L7)?);
        let mut pod = |name, labels: &'static str, ip| -> Result<Pod> {
            let endpoint = Endpoint {
                labels: pod_labels(LabelSet::parse(labels)?),
                named_ports: NamedPorts::new(),
            };
            let identity = engine.upsert_endpoint(name, endpoint)?.0 .0;
            Ok(Pod {
                name,
                labels,
                ip,
                identity,
            })
        };
        let deathstars = [
            pod("deathstar-1", DEATHSTAR, "10.200.0.10")?,
            pod("deathstar-2", DEATHSTAR, "10.200.0.11")?,
        ];
        let ships = [
            pod("tiefighter", TIEFIGHTER, "10.200.0.2")?,
            pod("xwing", XWING, "10.200.0.3")?,
        ];
        c.node()?;
        for p in deathstars.iter().chain(&ships) {
            c.pod_network(p)?;
            let cg = c.cgroups.join(p.name);
            std::fs::create_dir(&cg).with_context(|| format!("create {}", cg.display()))?;
            c.undo().dirs.push(cg);
            println!(
                "  pod {:<11} {:<12} identity {} ({})",
                p.name, p.ip, p.identity, p.labels
            );
        }
        let backends: Vec<SocketAddr> = deathstars
            .iter()
            .map(|d| Ok(SocketAddr::new(d.ip.parse()?, 80)))
            .collect::<Result<_>>()?;
        let service: SocketAddr = SERVICE.parse()?;
        println!(
            "  service deathstar {service} -> {}",
            backends
                .iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );

        // The ships: connects to the service go to a replica chosen per
        // connection, and are decided at L3/L4 on that replica by the map
        // entries the datapath derives from the engine's resolved policies
        // (the L3/L4 part of the L7 policy), revision 1.
        let end = |p: &Pod| -> Result<_> {
            let policy = engine
                .resolved(p.name)
                .with_context(|| format!("{} has no resolved policy", p.name))?;
            Ok((membrane_policy::Identity(p.identity), policy))
        };
        let (deathstar_id, deathstar_policy) = end(&deathstars[0])?;
        let ipcache: Vec<(IpNet, u32)> = deathstars
            .iter()
            .map(|d| Ok((IpNet::from(d.ip.parse::<std::net::IpAddr>()?), d.identity)))
            .collect::<Result<_>>()?;
        for s in &ships {
            let (ship_id, ship_policy) = end(s)?;
            let rule = |policy, direction, remote| {
                policy_map::l4_rule(policy, direction, remote, Proto::Tcp, 80)
                    .context("TCP is a protocol the policy map decides")
            };
            let egress = rule(&ship_policy, Direction::Egress, deathstar_id)?;
            let ingress = rule(&deathstar_policy, Direction::Ingress, ship_id)?;
            // Only the ships' datapaths enforce here, so the ship's egress rule carries
            // both ends' verdicts: allowed when its egress and the deathstar's ingress
            // both allow at L3/L4.
            let allow = egress.verdict != MapVerdict::Deny && ingress.verdict != MapVerdict::Deny;
            let entry = PolicyRule {
                verdict: if allow {
                    MapVerdict::Allow
                } else {
                    MapVerdict::Deny
                },
                ..egress
            };
            let dp = c.attach(
                s,
                &DatapathSettings {
                    policy_enforce: true,
                    pod_identity: s.identity,
                    policy_revision: 1,
                    ..DatapathSettings::default()
                },
            )?;
            dp.sync_ipcache(&ipcache)?;
            dp.sync_policy(&[entry])?;
            dp.set_service(service, &backends)?;
            println!(
                "  datapath of {:<11} connect to deathstar:80/TCP: {} (revision 1)",
                s.name,
                if allow { "ALLOW" } else { "DENY" }
            );
        }
        // The deathstars: inbound connections to their ports go to the sidecar.
        let policy = c.dir.join(L7.0);
        std::fs::write(&policy, L7.1).with_context(|| format!("write {}", policy.display()))?;
        let me = std::env::current_exe()?;
        let me = me.to_str().context("this binary's path is not UTF-8")?;
        let peers: Vec<String> = ships
            .iter()
            .map(|s| format!("{}/32={}", s.ip, s.labels))
            .collect();
        for d in &deathstars {
            // The sidecar delivers to the pod's own address; its connect there is
            // neither captured again nor an egress flow (mb_pod_addr).
            let dp = c.attach(
                d,
                &DatapathSettings {
                    capture_inbound: true,
                    pod_addrs: vec![d.ip.parse()?],
                    ..DatapathSettings::default()
                },
            )?;
            dp.attach_netns(&PathBuf::from("/run/netns").join(c.ns(d.name)))?;
            c.spawn(
                d.name,
                &[me, "demo", "--serve-deathstar", "0.0.0.0:80"],
                None,
            )?;
            let log = c.dir.join(format!("{}.log", d.name));
            let mut sidecar = vec![
                proxy.to_str().context("proxy path is not UTF-8")?,
                "standalone",
                "--listen",
                "127.0.0.1:8080",
                "--upstream",
                "127.0.0.1:80",
                "--capture-inbound",
                "0.0.0.0:15006",
                "--policy",
                policy.to_str().context("temp path is not UTF-8")?,
                "--endpoint-labels",
                DEATHSTAR,
            ];
            for p in &peers {
                sidecar.extend(["--peer", p.as_str()]);
            }
            c.spawn(d.name, &sidecar, Some(&log))?;
        }
        for d in &deathstars {
            c.wait_ready(d.name)?;
        }

        println!();
        let url = |path| format!("http://{service}{path}");
        for (ship, method, path) in [
            (&ships[0], "POST", "/v1/request-landing"),
            (&ships[0], "PUT", "/v1/exhaust-port"),
            (&ships[1], "POST", "/v1/request-landing"),
        ] {
            let label = format!("{} {method} {path}", ship.name);
            println!(
                "  {label:<40} {}",
                c.request(ship.name, method, &url(path))?
            );
        }
        for _ in 1..LANDINGS {
            c.request(ships[0].name, "POST", &url("/v1/request-landing"))?;
        }
        // Which replica served each landing, from the sidecars' access logs
        // (a response's log line may come a moment after the response).
        let landed = |d: &Pod| {
            std::fs::read_to_string(c.dir.join(format!("{}.log", d.name)))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains(r#""type":"Response""#) && l.contains(r#""status":200"#))
                .count()
        };
        let deadline = Instant::now() + Duration::from_secs(3);
        while deathstars.iter().map(landed).sum::<usize>() < LANDINGS && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let per: Vec<String> = deathstars
            .iter()
            .map(|d| format!("{} {}", d.name, landed(d)))
            .collect();
        println!(
            "  {LANDINGS} tiefighter landings through the service: {}",
            per.join(", ")
        );
        println!();
        for (dp, cg) in &c.undo().attached {
            let name = cg.file_name().unwrap_or_default().to_string_lossy();
            let connect = dp.counters_of("mb_connect4")?;
            let lookup = dp.counters_of("mb_sk_lookup")?;
            println!(
                "  datapath of {name:<11} connects refused {}, inbound connections handed to the sidecar {}",
                connect.refused, lookup.redirected
            );
        }
        println!(
            "\n  verdicts in the access logs of the deathstars' sidecars (first of each kind):"
        );
        let mut shown = Vec::new();
        for d in &deathstars {
            let text =
                std::fs::read_to_string(c.dir.join(format!("{}.log", d.name))).unwrap_or_default();
            for l in text.lines() {
                for kind in [r#""type":"Response""#, r#""type":"Denied""#] {
                    if l.contains(kind) && !shown.contains(&kind) {
                        shown.push(kind);
                        println!("    {l}");
                    }
                }
            }
        }
        Ok(())
    }
}
