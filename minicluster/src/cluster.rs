//! Step 6's mini-cluster: its pods, what it made (to undo once), and how it is set up.

use super::control::CniCall;
use super::pods::is_root;
use super::*;

/// A pod of the mini-cluster: its labels, address and node (an index into
/// [`source::NODES`]).
pub struct Pod {
    pub name: &'static str,
    pub labels: &'static str,
    pub ip: &'static str,
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
    pub tag: String,
    pub cgroups: PathBuf,
    pub dir: PathBuf,
    pub state: Arc<Mutex<Teardown>>,
    /// How pod traffic crosses between the nodes (`--overlay`).
    pub overlay: Overlay,
}

/// What the mini-cluster made, in the order it was made, to be undone once.
#[derive(Default)]
pub struct Teardown {
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
    pub fn run(&mut self) {
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

/// The binaries the live step runs, found beside this one (where `cargo build`
/// and a release install leave them all).
pub struct Bins {
    pub proxy: PathBuf,
    pub xds: PathBuf,
    pub cni: PathBuf,
    pub agent: PathBuf,
}

impl Cluster {
    /// The binaries the live step runs, or why it cannot run here.
    pub fn prerequisites() -> std::result::Result<Bins, String> {
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
            agent: beside("membrane-agent")?,
        };
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

    pub fn run(bins: &Bins, overlay: Overlay) -> Result<()> {
        let tag = format!("membrane-demo-{}", std::process::id());
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
        let c = Cluster {
            cgroups: cg2.join(&tag),
            dir: std::env::temp_dir().join(&tag),
            tag,
            state,
            overlay,
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

        let pod = |name, labels, ip, node| Pod {
            name,
            labels,
            ip,
            node,
        };
        let deathstars = [
            pod("deathstar-1", DEATHSTAR, "10.200.0.10", 0),
            pod("deathstar-2", DEATHSTAR, "10.201.0.11", 1),
        ];
        let ships = [
            pod("tiefighter", TIEFIGHTER, "10.200.0.2", 0),
            pod("xwing", XWING, "10.200.0.3", 0),
        ];
        let service: SocketAddr = SERVICE.parse()?;

        // The control plane on node-1, fed as a cluster's is: the objects
        // `kubectl get -o yaml` would show, in a watched directory.
        c.nodes()?;
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

        let me = std::env::current_exe()?;
        let me = me.to_str().context("this binary's path is not UTF-8")?;
        for d in &deathstars {
            c.spawn(
                d.name,
                &[me, "demo", "--serve-deathstar", "0.0.0.0:80"],
                None,
            )?;
            // Every sidecar dials the control plane on node-1's address, node-2's
            // through the tunnel both ways (node-1 answers a remote pod through it).
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
        c.across_nodes(&deathstars[1], &ships[1])?;
        c.edit_policy(&deathstars, &ships, &source)?;
        let on_node_1 = deathstars.iter().chain(&ships).filter(|p| p.node == 0);
        c.restart_agent(bins, &xds, &ships[0], on_node_1.count())
    }
}
