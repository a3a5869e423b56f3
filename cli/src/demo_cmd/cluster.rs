//! Step 6's mini-cluster: its pods, what it made (to undo once), and how it is set up.

use super::control::CniCall;
use super::pods::is_root;
use super::*;

/// A pod of the mini-cluster: its labels, address and identity.
pub(super) struct Pod {
    pub(super) name: &'static str,
    pub(super) labels: &'static str,
    pub(super) ip: &'static str,
    pub(super) identity: u32,
}

/// Step 6: a mini-cluster on this machine. The "node" is a network namespace
/// holding a bridge and the control plane (membrane-xds, fed by a source
/// directory); every pod is a network namespace on that bridge and a cgroup
/// with the eBPF datapath attached, wired in by `membrane-cni ADD`: the
/// ships' connects to the deathstar service go to a replica chosen per
/// connection and are decided at L3/L4 on it (maps written from the policy
/// engine's verdicts); each deathstar's inbound connections are handed by
/// sk_lookup to its membrane-proxy sidecar, which enforces the L7 rules it
/// gets over xDS. Everything it starts is stopped, DEL'd, detached and
/// removed when it is dropped (failures included) or when SIGINT/SIGTERM
/// arrives first.
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
    /// Pods wired in by `membrane-cni ADD`, to DEL (before their datapath goes).
    pub(super) cni: Vec<CniCall>,
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
        for call in self.cni.drain(..).rev() {
            let _ = call.run("DEL");
        }
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

/// The binaries the live step runs, found beside this one (where `cargo build`
/// and a release install leave them all).
pub(super) struct Bins {
    pub(super) proxy: PathBuf,
    pub(super) xds: PathBuf,
    pub(super) cni: PathBuf,
}

impl Cluster {
    /// The binaries the live step runs, or why it cannot run here.
    pub(super) fn prerequisites() -> std::result::Result<Bins, String> {
        let me = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
        let beside = |name: &str| {
            let p = me.with_file_name(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(format!(
                    "the live step needs {name} beside this binary ({})",
                    p.display()
                ))
            }
        };
        let bins = Bins {
            proxy: beside("membrane-proxy")?,
            xds: beside("membrane-xds")?,
            cni: beside("membrane-cni")?,
        };
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
        Ok(bins)
    }

    pub(super) fn run(bins: &Bins) -> Result<()> {
        let tag = format!("membrane-demo-{}", std::process::id());
        step(&format!(
            "6. Live: a mini-cluster ({tag}: membrane-xds fed by a directory of Kubernetes \
             YAML, a network namespace and a cgroup per pod wired in by membrane-cni, the \
             eBPF datapath, two deathstar replicas with sidecars fed over xDS behind a service)"
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
        let source = c.dir.join("source");
        for d in [&c.dir, &source, &c.cgroups, &bpf] {
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
        let service: SocketAddr = SERVICE.parse()?;

        // The control plane on the node, fed as a cluster's is: the objects
        // `kubectl get -o yaml` would show, in a watched directory.
        c.node()?;
        source::write_source(
            &source,
            &source::cluster_yaml(&deathstars, &ships, service)?,
            L7.1,
        )?;
        let xds = c.start_xds(bins, &source)?;
        println!(
            "  membrane-xds on {} serving xDS at {xds}, watching {}:",
            source::NODE,
            source.display()
        );
        println!(
            "    {}: Pods {}, Service deathstar {service}, its EndpointSlice, Node {}",
            source::CLUSTER_FILE,
            deathstars
                .iter()
                .chain(&ships)
                .map(|p| p.name)
                .collect::<Vec<_>>()
                .join(", "),
            source::NODE
        );
        println!("    {}: {}", source::POLICY_FILE, L7.0);

        for p in deathstars.iter().chain(&ships) {
            c.pod_network(p)?;
            let cg = c.cgroups.join(p.name);
            std::fs::create_dir(&cg).with_context(|| format!("create {}", cg.display()))?;
            c.undo().dirs.push(cg);
        }
        let backends: Vec<SocketAddr> = deathstars
            .iter()
            .map(|d| Ok(SocketAddr::new(d.ip.parse()?, 80)))
            .collect::<Result<_>>()?;

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
        let mut verdicts = Vec::new();
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
            verdicts.push(allow);
        }
        // The deathstars: inbound connections to their ports go to the sidecar.
        for d in &deathstars {
            // The sidecar delivers to the pod's own address; its connect there is
            // neither captured again nor an egress flow (mb_pod_addr).
            c.attach(
                d,
                &DatapathSettings {
                    capture_inbound: true,
                    pod_addrs: vec![d.ip.parse()?],
                    ..DatapathSettings::default()
                },
            )?;
        }
        // Every pod as the container runtime brings it up: network, then the
        // chained membrane-cni ADD.
        for p in deathstars.iter().chain(&ships) {
            c.cni_add(bins, p)?;
            println!(
                "  pod {:<11} {:<12} identity {} ({}), membrane-cni ADD done",
                p.name, p.ip, p.identity, p.labels
            );
        }
        println!(
            "  service deathstar {service} -> {}",
            backends
                .iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        for (s, allow) in ships.iter().zip(&verdicts) {
            println!(
                "  datapath of {:<11} connect to deathstar:80/TCP: {} (revision 1)",
                s.name,
                if *allow { "ALLOW" } else { "DENY" }
            );
        }
        let me = std::env::current_exe()?;
        let me = me.to_str().context("this binary's path is not UTF-8")?;
        for d in &deathstars {
            c.spawn(
                d.name,
                &[me, "demo", "--serve-deathstar", "0.0.0.0:80"],
                None,
            )?;
            c.start_sidecar(bins, d, &xds)?;
        }
        // Ready means the sidecar has its first policy from the control plane.
        for d in &deathstars {
            c.wait_ready(d.name)?;
        }
        println!(
            "  sidecars of {} ready: policy and peer identities from membrane-xds",
            deathstars
                .iter()
                .map(|d| d.name)
                .collect::<Vec<_>>()
                .join(", ")
        );

        c.play(&deathstars, &ships, service)?;
        c.edit_policy(&deathstars, &ships[0], &source)
    }
}
