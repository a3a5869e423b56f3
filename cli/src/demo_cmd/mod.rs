//! `membrane demo`: the embedded default, Cilium's Star Wars scenario step by step.
//!
//! Steps 1-5 ask the policy engine about every request of the scenario (the
//! policies are compiled into this binary, so the verb works from anywhere).
//! Step 6 plays the L7 policy live on a mini-cluster of network namespaces
//! and cgroups (see [`Cluster`]): two deathstar replicas behind a service
//! address that each ship's datapath balances; the datapath refuses the
//! xwing's connect, the deathstars' membrane-proxy sidecars (found next to
//! this binary) land the tiefighter and answer its PUT with 403. It needs root, `ip`
//! and `curl`, and says so and skips itself without them.
//!
//! Not yet the whole mini-cluster the design names: the datapath's maps
//! (identities, L3/L4 decisions, the service) are written here from the
//! policy engine's resolved policies (through `membrane_datapath::policy_map`)
//! rather than by the agent from the control plane.

use anyhow::{bail, Context, Result};
use clap::Args;
use membrane_datapath::policy_map::{self, PolicyEnd};
use membrane_datapath::{Datapath, Settings};
use membrane_policy::labels::LabelSet;
use membrane_policy::load::parse_file;
use membrane_policy::resolve::NamedPorts;
use membrane_policy::rule::{CompiledPolicy, Proto};
use membrane_policy::trace::{pod_labels, trace, TraceHttp, TraceRequest, TraceResult};
use membrane_policy::{Endpoint, Engine};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const L3_L4: (&str, &str) = (
    "sw_l3_l4_policy.yaml",
    include_str!("../../../manifests/examples/starwars/sw_l3_l4_policy.yaml"),
);
const L7: (&str, &str) = (
    "sw_l3_l4_l7_policy.yaml",
    include_str!("../../../manifests/examples/starwars/sw_l3_l4_l7_policy.yaml"),
);

const DEATHSTAR: &str = "k8s:org=empire,k8s:class=deathstar";
const TIEFIGHTER: &str = "k8s:org=empire,k8s:class=tiefighter";
const XWING: &str = "k8s:org=alliance,k8s:class=xwing";
/// The deathstar service's address (a ClusterIP), balanced over its replicas.
const SERVICE: &str = "10.96.0.10:80";
/// Landing requests the tiefighter makes through the service in step 6.
const LANDINGS: usize = 8;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Only ask the policy engine (steps 1-5); no network namespace, no sidecar.
    #[arg(long)]
    no_live: bool,
    /// Serve the deathstar's API on this address and nothing else (what step 6
    /// runs inside its namespace).
    #[arg(long, hide = true)]
    serve_deathstar: Option<SocketAddr>,
}

pub fn run(a: DemoArgs) -> Result<ExitCode> {
    if let Some(addr) = a.serve_deathstar {
        serve_deathstar(addr)?;
        return Ok(ExitCode::SUCCESS);
    }
    step("1. The policies validate");
    let l3 = compile(L3_L4)?;
    let l7 = compile(L7)?;

    step("2. No policy: everyone lands");
    ask("tiefighter -> deathstar:80", &[], TIEFIGHTER, None)?;
    ask("xwing      -> deathstar:80", &[], XWING, None)?;

    step(&format!(
        "3. L3/L4 policy ({}): only the Empire on 80/TCP",
        L3_L4.0
    ));
    ask("tiefighter -> deathstar:80", &l3, TIEFIGHTER, None)?;
    ask("xwing      -> deathstar:80 (dropped)", &l3, XWING, None)?;

    step(&format!("4. L7 policy ({}): landing only", L7.0));
    let landing = Some(("POST", "/v1/request-landing"));
    let exhaust = Some(("PUT", "/v1/exhaust-port"));
    ask(
        "tiefighter POST /v1/request-landing",
        &l7,
        TIEFIGHTER,
        landing,
    )?;
    ask(
        "tiefighter PUT /v1/exhaust-port (403 Access denied)",
        &l7,
        TIEFIGHTER,
        exhaust,
    )?;
    ask(
        "xwing POST /v1/request-landing (dropped at L3)",
        &l7,
        XWING,
        landing,
    )?;

    step("5. Why: the full trace of the denied PUT");
    let r = trace_for(&l7, TIEFIGHTER, exhaust)?;
    println!("{}", r.explanation);

    if a.no_live {
        return Ok(ExitCode::SUCCESS);
    }
    match Cluster::prerequisites() {
        Err(why) => step(&format!("6. (skipped: {why})")),
        Ok(proxy) => Cluster::run(&proxy)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn step(title: &str) {
    println!("\n== {title}");
}

/// Every object of an embedded policy file, compiled, each said valid; an
/// invalid one is an error.
fn compile(file: (&str, &str)) -> Result<Vec<Arc<CompiledPolicy>>> {
    let out = compile_quietly(file)?;
    for p in &out {
        println!("  {}: {} {} valid", file.0, p.key.kind.as_str(), p.key);
    }
    Ok(out)
}

fn compile_quietly((file, text): (&str, &str)) -> Result<Vec<Arc<CompiledPolicy>>> {
    let mut out = Vec::new();
    for o in parse_file(file, text)? {
        match &o.result {
            Ok(p) => out.push(p.clone()),
            Err(_) => bail!("{}", o.error_lines().join("\n")),
        }
    }
    Ok(out)
}

/// What the policy engine says about one request of a ship to the deathstar,
/// with its explanation.
fn trace_for(
    policies: &[Arc<CompiledPolicy>],
    src: &str,
    http: Option<(&str, &str)>,
) -> Result<TraceResult> {
    let req = TraceRequest {
        src: LabelSet::parse(src)?,
        dst: LabelSet::parse(DEATHSTAR)?,
        src_ip: None,
        dst_ip: None,
        dport: 80,
        proto: Proto::Tcp,
        named_ports: NamedPorts::new(),
        http: http.map(|(method, path)| TraceHttp {
            method: method.into(),
            path: path.into(),
            host: None,
            headers: Vec::new(),
        }),
        sni: None,
        // The Star Wars policies carry HTTP rules only.
        unenforced_l7: Default::default(),
    };
    Ok(trace(policies, &req)?)
}

/// One request of the scenario: one line with the verdict and what decided it.
fn ask(
    label: &str,
    policies: &[Arc<CompiledPolicy>],
    src: &str,
    http: Option<(&str, &str)>,
) -> Result<()> {
    let r = trace_for(policies, src, http)?;
    let why = match (&r.decided_by, r.verdict) {
        (Some(d), _) => format!("{} {}", d.policy, d.rule),
        (None, "denied") => "default deny".into(),
        (None, _) => "no policy selects the deathstar".into(),
    };
    println!("  {label:<52} {:<8} ({why})", r.verdict);
    Ok(())
}

/// A pod of the mini-cluster: its labels, address and identity.
struct Pod {
    name: &'static str,
    labels: &'static str,
    ip: &'static str,
    identity: u32,
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
struct Cluster {
    tag: String,
    cgroups: PathBuf,
    dir: PathBuf,
    state: Arc<Mutex<Teardown>>,
}

/// What the mini-cluster made, in the order it was made, to be undone once.
#[derive(Default)]
struct Teardown {
    children: Vec<Child>,
    attached: Vec<(Datapath, PathBuf)>,
    netns: Vec<String>,
    dirs: Vec<PathBuf>,
}

impl Teardown {
    fn run(&mut self) {
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

const NODE_BRIDGE: &str = "10.200.0.1/24";

impl Cluster {
    /// The sidecar binary, or why step 6 cannot run here.
    fn prerequisites() -> std::result::Result<PathBuf, String> {
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

    fn run(proxy: &Path) -> Result<()> {
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
        for s in &ships {
            let (ship_id, ship_policy) = end(s)?;
            let entry = policy_map::tcp_entry(
                PolicyEnd {
                    identity: ship_id,
                    policy: &ship_policy,
                },
                PolicyEnd {
                    identity: deathstar_id,
                    policy: &deathstar_policy,
                },
                80,
            );
            let allow = entry.allow;
            let dp = c.attach(
                s,
                &Settings {
                    policy_enforce: true,
                    pod_identity: s.identity,
                    policy_revision: 1,
                    ..Settings::default()
                },
            )?;
            for d in &deathstars {
                dp.set_identity(d.ip.parse()?, d.identity)?;
            }
            dp.set_policy_entry(&entry, 1)?;
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
                &Settings {
                    capture_inbound: true,
                    pod_addrs: vec![d.ip.parse()?],
                    ..Settings::default()
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

    /// What to undo; a poisoned lock (a panic elsewhere) still gives it.
    fn undo(&self) -> std::sync::MutexGuard<'_, Teardown> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ns(&self, pod: &str) -> String {
        format!("{}-{pod}", self.tag)
    }

    fn ip(&self, args: &[&str]) -> Result<()> {
        let out = Command::new("ip").args(args).output().context("run ip")?;
        if !out.status.success() {
            bail!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    fn add_netns(&self, name: String) -> Result<()> {
        self.ip(&["netns", "add", &name])?;
        self.undo().netns.push(name.clone());
        self.ip(&["-n", &name, "link", "set", "lo", "up"])
    }

    /// The node: a namespace holding the bridge every pod is plugged into.
    fn node(&self) -> Result<()> {
        let node = self.ns("node");
        self.add_netns(node.clone())?;
        self.ip(&["-n", &node, "link", "add", "br0", "type", "bridge"])?;
        self.ip(&["-n", &node, "addr", "add", NODE_BRIDGE, "dev", "br0"])?;
        self.ip(&["-n", &node, "link", "set", "br0", "up"])
    }

    /// A pod's namespace, with `eth0` on the node's bridge.
    fn pod_network(&self, p: &Pod) -> Result<()> {
        let (ns, node) = (self.ns(p.name), self.ns("node"));
        self.add_netns(ns.clone())?;
        let port = format!("v-{}", p.name);
        self.ip(&[
            "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port, "netns",
            &node,
        ])?;
        self.ip(&["-n", &node, "link", "set", &port, "master", "br0", "up"])?;
        let addr = format!("{}/24", p.ip);
        self.ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
        self.ip(&["-n", &ns, "link", "set", "eth0", "up"])
    }

    /// The datapath of pod `p`, attached to its cgroup (pins of its own).
    fn attach(&self, p: &Pod, settings: &Settings) -> Result<Datapath> {
        let cg = self.cgroups.join(p.name);
        let pins = PathBuf::from("/sys/fs/bpf").join(&self.tag).join(p.name);
        let dp = Datapath::attach(pins, &cg, settings)
            .with_context(|| format!("attach the datapath to {}", cg.display()))?;
        self.undo().attached.push((dp.clone(), cg));
        Ok(dp)
    }

    /// `cmd` started in pod `pod` (its cgroup and namespace); `sh` and `ip
    /// netns exec` exec it, so the child is the process itself.
    fn in_pod(&self, pod: &str, cmd: &[&str]) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(r#"echo $$ > "$1/cgroup.procs" && ns="$2" && shift 2 && exec ip netns exec "$ns" "$@""#)
            .arg("sh")
            .arg(self.cgroups.join(pod))
            .arg(self.ns(pod))
            .args(cmd);
        c
    }

    /// Start `cmd` in `pod`; its output goes to `log` or nowhere.
    fn spawn(&self, pod: &str, cmd: &[&str], log: Option<&Path>) -> Result<()> {
        let (out, err) = match log {
            Some(p) => {
                let f =
                    std::fs::File::create(p).with_context(|| format!("create {}", p.display()))?;
                (Stdio::from(f.try_clone()?), Stdio::from(f))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let child = self
            .in_pod(pod, cmd)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("start {}", cmd[0]))?;
        self.undo().children.push(child);
        Ok(())
    }

    fn curl(&self, pod: &str, args: &[&str]) -> Result<std::process::Output> {
        let mut cmd = vec!["curl", "-sS", "--max-time", "5"];
        cmd.extend_from_slice(args);
        self.in_pod(pod, &cmd).output().context("run curl")
    }

    /// The deathstar and its sidecar answer, or an error after 10 s.
    fn wait_ready(&self, pod: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ready = [
                "http://127.0.0.1:15021/healthz/ready",
                "http://127.0.0.1:80/",
            ]
            .iter()
            .all(|u| {
                self.curl(pod, &["-f", "-o", "/dev/null", u])
                    .is_ok_and(|o| o.status.success())
            });
            if ready {
                return Ok(());
            }
            for c in &mut self.undo().children {
                if let Some(status) = c.try_wait()? {
                    bail!(
                        "a process of the live step exited early ({status}){}",
                        self.log_tails()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{pod} or its sidecar did not become ready in 10 s{}",
                    self.log_tails()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines of every sidecar log, for an error (the logs go with
    /// the teardown).
    fn log_tails(&self) -> String {
        let mut out = String::new();
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let path = e.path();
            if path.extension().is_some_and(|x| x == "log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                out.push_str(&format!("\n{}:", path.display()));
                for l in &lines[lines.len().saturating_sub(5)..] {
                    out.push_str(&format!("\n  {l}"));
                }
            }
        }
        out
    }

    /// One request from `pod`: the status code and the first line of the
    /// body, or, when no response came, curl's account of why.
    fn request(&self, pod: &str, method: &str, url: &str) -> Result<String> {
        let out = self.curl(pod, &["-X", method, "-w", "\n%{http_code}", url])?;
        let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
        if code.trim() == "000" || !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Ok(format!("no response ({})", err.trim()));
        }
        Ok(format!(
            "{} {}",
            code.trim(),
            body.lines().next().unwrap_or("")
        ))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.undo().run();
    }
}

fn is_root() -> bool {
    // The effective uid, from the kernel's own account of this process.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// The deathstar's API as the scenario's service answers it: POST
/// /v1/request-landing lands, PUT /v1/exhaust-port explodes, GET says it is
/// alive, anything else is 404. One thread per connection, HTTP/1.1 keep-alive.
fn serve_deathstar(addr: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        std::thread::spawn(move || {
            let _ = deathstar_conn(conn);
        });
    }
    Ok(())
}

fn deathstar_conn(conn: TcpStream) -> std::io::Result<()> {
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let (method, path) = (method.to_owned(), path.to_owned());
        let mut length = 0usize;
        let mut close = false;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "content-length" {
                    length = v.parse().unwrap_or(0);
                } else if k == "connection" && v.eq_ignore_ascii_case("close") {
                    close = true;
                }
            }
        }
        std::io::copy(&mut (&mut r).take(length as u64), &mut std::io::sink())?;
        let (code, body) = match (method.as_str(), path.as_str()) {
            ("POST", "/v1/request-landing") => ("200 OK", "Ship landed\n"),
            ("PUT", "/v1/exhaust-port") => {
                ("503 Service Unavailable", "Panic: deathstar exploded\n")
            }
            ("GET", _) => ("200 OK", "Deathstar: alive\n"),
            _ => ("404 Not Found", "Not found\n"),
        };
        write!(
            w,
            "HTTP/1.1 {code}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        w.flush()?;
        if close {
            return Ok(());
        }
    }
}
