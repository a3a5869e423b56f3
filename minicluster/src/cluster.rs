//! The mini-cluster: its pods, what it made (to undo once), and how it is set up.

use super::control::CniCall;
use super::kubelet;
use super::pods::is_root;
use super::*;

/// A pod of the mini-cluster: its labels, address and node (an index into
/// the nodes, node-1 first).
#[derive(Debug, Clone, Copy)]
pub struct Pod {
    /// Its name, in namespace `default`.
    pub name: &'static str,
    /// Its labels, `k8s:KEY=VALUE,...`.
    pub labels: &'static str,
    /// Its address.
    pub ip: &'static str,
    /// Its node: 0 for node-1, 1 for node-2.
    pub node: usize,
}

/// Step 6: a two-node mini-cluster on this machine, run as a cluster runs
/// it. Each "node" is a network namespace with an underlay device (`ul0`,
/// the two ends of one veth pair) and its own node agent (fed by the control
/// plane, with `--overlay` and `--underlay-device`); node-1 also runs the
/// control plane (membrane-xds, fed by a source directory of Kubernetes
/// YAML). Every pod is a network namespace on a routed veth into its node and
/// a cgroup, registered with its node's agent by `membrane-cni ADD`. The
/// agents attach the eBPF datapath to each pod (tc on the host veth, the
/// socket programs on the cgroup) and program its maps from the control
/// plane's resources: the ships' connects to the deathstar service go to a
/// replica chosen per connection, on either node; what crosses the nodes is
/// encapsulated with the sender's identity (or routed natively); the
/// deathstars' inbound connections are decided by tc on the receiving node
/// and at sk_lookup, and the allowed ones handed to their membrane-proxy
/// sidecar, which enforces the L7 rules it gets over xDS. The demo writes no
/// map entry. Everything it starts is DEL'd, stopped and removed when it is
/// dropped (failures included) or when SIGINT/SIGTERM arrives first.
pub struct Cluster {
    /// What names everything it makes (namespaces, cgroups, pins, its temp directory).
    pub tag: String,
    pub(crate) cgroups: PathBuf,
    /// Its temp directory: the control plane's source, the logs, the agents' sockets.
    pub dir: PathBuf,
    pub(crate) state: Arc<Mutex<Teardown>>,
    /// How pod traffic crosses between the nodes (`--overlay`).
    pub overlay: Overlay,
    pub(crate) bins: Bins,
    /// The control plane's xDS URL (on node-1's underlay address).
    pub(crate) xds: String,
    /// The deathstar replicas (deathstar-1 on node-1, deathstar-2 on node-2), each with
    /// its sidecar.
    pub deathstars: [Pod; 2],
    /// The tiefighter and the xwing, both on node-1.
    pub ships: [Pod; 2],
    /// membrane-relay, in-process, once the agents run.
    pub(crate) relay: Option<crate::relay::ClusterRelay>,
}

/// What the mini-cluster made, in the order it was made, to be undone once.
#[derive(Default)]
pub(crate) struct Teardown {
    /// Pods registered by `membrane-cni ADD`, to DEL while the agent still
    /// runs (it detaches and unpins them).
    pub cni: Vec<CniCall>,
    /// The node agents, one per node (step 8 replaces node-1's).
    pub agents: [Option<Child>; 2],
    pub children: Vec<Child>,
    pub netns: Vec<String>,
    pub dirs: Vec<PathBuf>,
}

impl Teardown {
    pub(crate) fn run(&mut self) {
        for call in self.cni.drain(..).rev() {
            let _ = call.run("DEL");
        }
        for c in self.agents.iter_mut().flatten().chain(&mut self.children) {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.agents = [None, None];
        self.children.clear();
        for ns in self.netns.drain(..).rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", &ns])
                .stderr(Stdio::null())
                .status();
        }
        // Innermost first: the cgroups, the bpffs root (what an endpoint the
        // agent could not DEL left pinned goes with it), the temp directory.
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

/// The binaries the mini-cluster runs, all in one directory (where `cargo build`
/// and a release install leave them).
#[derive(Debug, Clone)]
pub struct Bins {
    /// `membrane`: the deathstar's server (`membrane demo --serve-deathstar`), and the
    /// operator's views of an agent (`endpoint list`, `monitor`).
    pub membrane: PathBuf,
    /// `membrane-proxy`, the deathstars' sidecar.
    pub proxy: PathBuf,
    /// `membrane-xds`, the control plane.
    pub xds: PathBuf,
    /// `membrane-cni`, what registers a pod with its node's agent.
    pub cni: PathBuf,
    /// `membrane-agent`, each node's daemon.
    pub agent: PathBuf,
}

impl Bins {
    /// The binaries in `dir`, or which one is missing.
    pub fn in_dir(dir: &Path) -> std::result::Result<Bins, String> {
        let beside = |name: &str| {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(format!("the mini-cluster needs {}", p.display()))
            }
        };
        Ok(Bins {
            membrane: beside("membrane")?,
            proxy: beside("membrane-proxy")?,
            xds: beside("membrane-xds")?,
            cni: beside("membrane-cni")?,
            agent: beside("membrane-agent")?,
        })
    }
}

impl Cluster {
    /// The binaries in `dir`, or why the mini-cluster cannot run here (a binary,
    /// root, a tool or cgroup v2 missing).
    pub fn prerequisites(dir: &Path) -> std::result::Result<Bins, String> {
        let bins = Bins::in_dir(dir)?;
        if !is_root() {
            return Err("the live step needs root (network namespaces, cgroups, eBPF)".into());
        }
        for tool in ["ip", "curl", "nsenter", "setpriv"] {
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

    /// The demo's step 6 to 8 on a new mini-cluster: set up, the Star Wars
    /// scenario, live edits, an agent restart. Undone when it returns.
    pub fn run(bins: &Bins, overlay: Overlay) -> Result<()> {
        Cluster::start(bins, overlay)?.scenario()
    }

    /// Steps 6 to 8 on this mini-cluster, once it is up: the Star Wars scenario, the live
    /// policy edits, the agent restart under load.
    pub fn scenario(&self) -> Result<()> {
        self.star_wars()?;
        let c = self;
        c.edit_policy(&c.deathstars, &c.ships, &c.source())?;
        let r = c.restart_agent(&c.ships[0])?;
        println!(
            "  membrane-agent pid {} killed (SIGKILL) after landing {}; \
             pid {} answering after landing {}",
            r.old_pid, r.killed_at, r.new_pid, r.up_at
        );
        println!(
            "  the new agent adopted {} endpoints from its state directory and the pins",
            r.adopted
        );
        println!(
            "  {} tiefighter landings across the restart: {} landed, {} failed",
            r.codes.len(),
            r.landed(),
            r.codes.len() - r.landed()
        );
        Ok(())
    }

    /// The in-process relay (its merged stream, its address, its runtime), once started.
    pub fn relay(&self) -> Option<&crate::relay::ClusterRelay> {
        self.relay.as_ref()
    }

    /// Step 6's scenario on this mini-cluster, once it is up: the ships through the
    /// deathstar service, then the xwing across the nodes. The policy stays the Star Wars
    /// one (`membrane demo --stay` shows the mesh as it leaves it).
    pub fn star_wars(&self) -> Result<()> {
        self.play(&self.deathstars, &self.ships, self.service())?;
        self.across_nodes(&self.deathstars[1], &self.ships[1])?;
        self.l7_beside(&self.deathstars[1], &self.ships[0])?;
        self.show_merged(&self.ships[0])?;
        Ok(())
    }

    /// The deathstar service's address.
    pub fn service(&self) -> SocketAddr {
        SERVICE.parse().expect("SERVICE is an address")
    }

    /// The control plane's source directory (`cluster.yaml`, `policy.yaml`).
    pub fn source(&self) -> PathBuf {
        self.dir.join("source")
    }

    /// A new mini-cluster, up (step 6's set-up, printed as it goes): the nodes, the
    /// control plane with the L7 policy, the agents, the pods registered through
    /// membrane-cni and programmed, the deathstars serving behind their ready sidecars.
    /// Everything it makes is undone when it is dropped, also when setting up fails.
    pub fn start(bins: &Bins, overlay: Overlay) -> Result<Cluster> {
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The pid names it; a second one in the same process gets a suffix.
        let tag = match n {
            0 => format!("membrane-demo-{}", std::process::id()),
            n => format!("membrane-demo-{}-{n}", std::process::id()),
        };
        step(&format!(
            "6. Live: a mini-cluster ({tag}: two nodes joined by an underlay, {overlay} between \
             them, membrane-xds on node-1 fed by a directory of Kubernetes YAML, an agent per \
             node fed by membrane-xds programming the eBPF datapath, a network namespace and a \
             cgroup per pod registered by membrane-cni, two deathstar replicas with sidecars fed \
             over xDS behind a service, one per node)"
        ));
        let cg2 = membrane_datapath::cgroup2_mount().context("no cgroup v2 mount")?;
        let state = Arc::new(Mutex::new(Teardown::default()));
        teardown_on_signal(state.clone())?;
        let pod = |name, labels, ip, node| Pod {
            name,
            labels,
            ip,
            node,
        };
        let mut c = Cluster {
            cgroups: cg2.join(&tag),
            dir: std::env::temp_dir().join(&tag),
            tag,
            state,
            overlay,
            bins: bins.clone(),
            xds: String::new(),
            deathstars: [
                pod("deathstar-1", DEATHSTAR, "10.200.0.10", 0),
                pod("deathstar-2", DEATHSTAR, "10.201.0.11", 1),
            ],
            ships: [
                pod("tiefighter", TIEFIGHTER, "10.200.0.2", 0),
                pod("xwing", XWING, "10.200.0.3", 0),
            ],
            relay: None,
        };
        membrane_datapath::ensure_bpffs(&c.bpffs())?;
        let source = c.dir.join("source");
        for d in [&c.dir, &source, &c.cgroups, &c.bpffs()] {
            std::fs::create_dir(d).with_context(|| format!("create {}", d.display()))?;
            c.undo().dirs.push(d.clone());
        }
        for n in 0..source::NODES.len() {
            let d = c.bpffs_of(n);
            std::fs::create_dir(&d).with_context(|| format!("create {}", d.display()))?;
            c.undo().dirs.push(d);
        }

        let (deathstars, ships) = (c.deathstars, c.ships);
        let service = c.service();

        // The control plane on node-1, fed as a cluster's is: the objects
        // `kubectl get -o yaml` would show, in a watched directory.
        // The deathstars as admission leaves them: patched by the sidecar injector.
        c.nodes()?;
        let mut pods = Vec::new();
        for d in &deathstars {
            pods.push(c.injected_pod(d)?);
        }
        pods.extend(ships.iter().map(source::ship_object));
        source::write_source(
            &source,
            &source::cluster_yaml(&pods, &deathstars, service)?,
            L7.1,
        )?;
        c.issue_certs(bins)?;
        c.xds = c.start_xds(bins, &source)?;
        let xds = c.xds.clone();
        println!(
            "  membrane-xds on {} serving xDS at {xds} (node agents) and mTLS at {} \
             (sidecars), watching {}:",
            source::NODE,
            kubelet::injector().xds_address,
            source.display()
        );
        println!(
            "    {}: Pods {}, Service deathstar {service}, its EndpointSlice, Nodes {}",
            source::CLUSTER_FILE,
            deathstars
                .iter()
                .chain(&ships)
                .map(|p| format!("{} ({})", p.name, source::NODES[p.node].name))
                .collect::<Vec<_>>()
                .join(", "),
            source::NODES.map(|n| n.name).join(", ")
        );
        println!("    {}: {}", source::POLICY_FILE, L7.0);
        for n in 0..source::NODES.len() {
            let pid = c.start_agent(bins, &xds, n)?;
            println!(
                "  membrane-agent run --node {} --xds-address {xds} --overlay {overlay} \
                 --underlay-device {} (pid {pid}), pins under {}",
                source::NODES[n].name,
                source::UNDERLAY,
                c.bpffs_of(n).display()
            );
        }
        let relay = c.start_relay()?;
        println!(
            "  membrane-relay in this process (node-1's namespace): nodes from membrane-xds's \
             registry, each agent's observer at NODE_IP:4244, the merged stream on {}",
            relay.addr
        );
        c.relay = Some(relay);

        // Every pod as the container runtime brings it up: its network (the
        // interface plugin's part), then the chained membrane-cni ADD, which
        // registers it with its node's agent; the agent attaches the datapath and
        // programs it before answering.
        for p in deathstars.iter().chain(&ships) {
            c.pod_network(p)?;
            let cg = c.cgroups.join(p.name);
            std::fs::create_dir(&cg).with_context(|| format!("create {}", cg.display()))?;
            c.undo().dirs.push(cg);
            c.cni_add(bins, p)?;
            println!(
                "  pod {:<11} {:<12} on {} ({}): membrane-cni ADD registered it with the agent",
                p.name,
                p.ip,
                source::NODES[p.node].name,
                p.labels
            );
        }
        for n in 0..source::NODES.len() {
            let on = deathstars.iter().chain(&ships).filter(|p| p.node == n);
            c.wait_programmed(n, on.count())?;
        }
        for n in 0..source::NODES.len() {
            println!("\n  $ membrane endpoint list   # {}", source::NODES[n].name);
            c.show(n, &["endpoint", "list"])?;
        }
        println!("  $ membrane service list");
        c.show(0, &["service", "list"])?;

        let me = bins
            .membrane
            .to_str()
            .context("membrane's path is not UTF-8")?;
        // Each deathstar as a kubelet runs the injected pod: `membrane-proxy sidecar`
        // from the istio-proxy container (its environment, its certificate), the app
        // once the sidecar's startup probe passed, then the readiness probes, the
        // app's through the sidecar's status port. Every sidecar dials the control
        // plane on node-1's address, node-2's through the tunnel both ways (node-1
        // answers a remote pod through it). Ready means it has its first policy.
        for d in &deathstars {
            c.start_injected_pod(bins, d, &[me, "demo", "--serve-deathstar", "0.0.0.0:80"])?;
        }
        println!(
            "  sidecars of {} injected (istio-proxy: membrane-proxy sidecar) and ready: \
             policy and peer identities from membrane-xds over mTLS",
            deathstars
                .iter()
                .map(|d| d.name)
                .collect::<Vec<_>>()
                .join(", ")
        );

        Ok(c)
    }
}
