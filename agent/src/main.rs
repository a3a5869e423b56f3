//! `membrane-agent`: the node daemon. `run --node NAME --xds-address URL` is the daemon
//! fed by membrane-xds ([`membrane_agent::daemon`]). Without `--xds-address` it serves one
//! cgroup a person names, as before: loads the embedded eBPF programs, attaches them to
//! the cgroup, pins them under a bpffs directory (so a restart keeps established
//! splices), prints counters and spliced pairs, and detaches; `run --cgroup` also reads
//! the monitor events ring buffer and serves the unix-socket API (status, event stream).

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use membrane_agent::daemon::{self, DaemonConfig};
use membrane_agent::xds::{XdsConfig, XdsTls};
use membrane_datapath::{
    api, ensure_bpffs, istio, Capture, Datapath, DatapathSettings, InboundPorts, DEFAULT_BPFFS_DIR,
};

/// Agent configuration: flags, with `MEMBRANE_*` environment fallbacks.
#[derive(Parser, Debug)]
#[command(name = "membrane-agent", about = "membrane eBPF datapath agent")]
struct Config {
    /// bpffs directory for pinned programs, maps and links.
    #[arg(long, env = "MEMBRANE_BPFFS", default_value = DEFAULT_BPFFS_DIR, global = true)]
    bpffs: PathBuf,
    /// Unix socket for the agent API and monitor events (`run` serves it).
    #[arg(
        long,
        env = "MEMBRANE_AGENT_SOCKET",
        default_value = api::DEFAULT_SOCKET,
        global = true
    )]
    socket: PathBuf,
    /// Node name carried by every monitor event (default: the host name).
    #[arg(long, env = "MEMBRANE_NODE_NAME", global = true)]
    node: Option<String>,
    /// Longest request line the API socket accepts, in bytes; a longer one
    /// gets an error line and the connection is closed.
    #[arg(long, env = "MEMBRANE_AGENT_MAX_REQUEST_BYTES", default_value_t = 4096,
          value_parser = clap::value_parser!(u64).range(64..), global = true)]
    api_max_request_bytes: u64,
    /// Clients the API socket serves at once (monitor streams included);
    /// more get an error line and are closed.
    #[arg(long, env = "MEMBRANE_AGENT_MAX_CLIENTS", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..), global = true)]
    api_max_clients: u64,
    /// Time a client has to send its whole request line, in milliseconds.
    #[arg(long, env = "MEMBRANE_AGENT_REQUEST_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..), global = true)]
    api_request_timeout_ms: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Per-cgroup attach options.
#[derive(clap::Args, Debug)]
struct AttachArgs {
    /// The pod's cgroup v2 directory (never a hierarchy root); required except for the
    /// node daemon (`run --xds-address`).
    #[arg(long, env = "MEMBRANE_CGROUP")]
    cgroup: Option<PathBuf>,
    /// Steer outbound connects to the proxy (iptables-free capture).
    #[arg(long, env = "MEMBRANE_CAPTURE")]
    capture: bool,
    /// The pod's network namespace (`/run/netns/NAME`, `/proc/PID/ns/net`):
    /// hand inbound connections to the proxy's inbound port (sk_lookup).
    #[arg(long, env = "MEMBRANE_INBOUND_NETNS")]
    inbound_netns: Option<PathBuf>,
    /// The proxy's inbound capture port.
    #[arg(long, env = "MEMBRANE_INBOUND_PORT", default_value_t = 15006)]
    inbound_port: u16,
    /// The proxy's outbound capture address.
    #[arg(long, env = "MEMBRANE_PROXY_IP4", default_value = "127.0.0.1")]
    proxy_ip4: Ipv4Addr,
    /// The proxy's outbound capture port.
    #[arg(long, env = "MEMBRANE_OUTBOUND_PORT", default_value_t = 15001)]
    outbound_port: u16,
    /// The proxy's uid: its connects are never steered.
    #[arg(long, env = "MEMBRANE_PROXY_UID", default_value_t = 1337)]
    proxy_uid: u32,
    /// The SO_MARK the proxy sets on upstream sockets: never steered.
    #[arg(long, env = "MEMBRANE_PROXY_MARK", default_value_t = 1337)]
    proxy_mark: u32,
    /// Destination ports never captured, comma-separated
    /// (as `traffic.sidecar.istio.io/excludeOutboundPorts`).
    #[arg(long, env = "MEMBRANE_EXCLUDE_OUTBOUND_PORTS")]
    exclude_outbound_ports: Option<String>,
    /// Destination CIDRs never captured (as `excludeOutboundIPRanges`).
    #[arg(long, env = "MEMBRANE_EXCLUDE_OUTBOUND_CIDRS")]
    exclude_outbound_cidrs: Option<String>,
    /// Destination CIDRs captured, `*` = all (as `includeOutboundIPRanges`).
    #[arg(long, env = "MEMBRANE_INCLUDE_OUTBOUND_CIDRS")]
    include_outbound_cidrs: Option<String>,
    /// Inbound ports never captured when all are (as `excludeInboundPorts`;
    /// 15020, 15021 and 15090 always are).
    #[arg(long, env = "MEMBRANE_EXCLUDE_INBOUND_PORTS")]
    exclude_inbound_ports: Option<String>,
    /// Inbound ports captured, `*` = all (as `includeInboundPorts`).
    #[arg(long, env = "MEMBRANE_INCLUDE_INBOUND_PORTS")]
    include_inbound_ports: Option<String>,
    /// The pod's annotations in the downward API file format
    /// (`key="value"` lines); its `traffic.sidecar.istio.io/*` capture
    /// annotations override the flags above.
    #[arg(long, env = "MEMBRANE_POD_ANNOTATIONS")]
    pod_annotations: Option<PathBuf>,
    /// Enforce the policy map: refuse connects (EPERM) and splice no pair
    /// without a current ALLOW.
    #[arg(long, env = "MEMBRANE_POLICY_ENFORCE")]
    policy_enforce: bool,
    /// Security identity of the pod owning the cgroup (source of its connects).
    #[arg(long, env = "MEMBRANE_POD_IDENTITY", default_value_t = 0)]
    pod_identity: u32,
    /// Seconds a learned "splicing loses for this service" hint holds.
    #[arg(long, env = "MEMBRANE_HINT_TTL_SECS", default_value_t = 600)]
    hint_ttl_secs: u32,
    /// Splice no new connection (kill switch; benchmarks' "off").
    #[arg(long, env = "MEMBRANE_NO_SPLICE")]
    no_splice: bool,
    /// The pod's own addresses, comma-separated: the proxy's connects to them
    /// deliver inbound connections inside the pod and are not decided at
    /// L3/L4 as egress (needed with --policy-enforce and inbound capture).
    #[arg(long = "pod-ip", env = "MEMBRANE_POD_IPS", value_delimiter = ',')]
    pod_ips: Vec<std::net::IpAddr>,
    /// The sidecar's own ports, comma-separated: inbound capture never hands
    /// a connection to one of them to the proxy.
    #[arg(
        long,
        env = "MEMBRANE_PROXY_PORTS",
        value_delimiter = ',',
        default_value = "15000,15001,15006,15007,15020,15021,15090"
    )]
    proxy_ports: Vec<u16>,
}

/// The node daemon's options (`run --xds-address`).
#[derive(clap::Args, Debug)]
struct DaemonArgs {
    /// membrane-xds (`http://HOST:PORT`, or `https://` with --xds-ca): run as the node
    /// daemon, fed by the control plane, instead of serving one --cgroup.
    #[arg(long, env = "MEMBRANE_XDS_ADDRESS")]
    xds_address: Option<String>,
    /// PEM CA bundle the control plane's certificate must chain to (https).
    #[arg(long, env = "MEMBRANE_XDS_CA")]
    xds_ca: Option<PathBuf>,
    /// PEM certificate chain presented to the control plane (with --xds-key).
    #[arg(long, env = "MEMBRANE_XDS_CERT", requires = "xds_key")]
    xds_cert: Option<PathBuf>,
    /// PEM private key of --xds-cert.
    #[arg(long, env = "MEMBRANE_XDS_KEY", requires = "xds_cert")]
    xds_key: Option<PathBuf>,
    /// How often the TLS files are checked for new content, in milliseconds.
    #[arg(long, env = "MEMBRANE_XDS_CERT_POLL_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    xds_cert_poll_ms: u64,
    /// First reconnect delay, in milliseconds (doubles per failed attempt, jittered).
    #[arg(long, env = "MEMBRANE_XDS_BACKOFF_MS", default_value_t = 200,
          value_parser = clap::value_parser!(u64).range(1..))]
    xds_backoff_ms: u64,
    /// Reconnect delay ceiling, in milliseconds.
    #[arg(long, env = "MEMBRANE_XDS_BACKOFF_MAX_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    xds_backoff_max_ms: u64,
    /// The packet path (tc).
    #[command(flatten)]
    packet: membrane_agent::tc::PacketArgs,
    /// The event stream on gRPC (4244) and the metrics (9962).
    #[command(flatten)]
    observer: membrane_agent::observer::ObserverArgs,
    /// The sidecars' request records.
    #[command(flatten)]
    records: membrane_agent::records::RecordArgs,
    /// The daemon's state directory: registrations and the resources in force, adopted
    /// by the next agent.
    #[arg(
        long,
        env = "MEMBRANE_AGENT_STATE_DIR",
        default_value = "/var/run/membrane/agent"
    )]
    state_dir: PathBuf,
}

// Parsed once at start: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Cmd {
    /// Load (if needed), attach to the cgroup, pin, and exit.
    Attach(AttachArgs),
    /// The node daemon fed by membrane-xds (with --xds-address); else attach to one
    /// cgroup, then print counters every interval until killed (pins stay).
    Run {
        #[command(flatten)]
        attach: AttachArgs,
        #[command(flatten)]
        daemon: Box<DaemonArgs>,
        /// Seconds between counter prints.
        #[arg(long, env = "MEMBRANE_INTERVAL", default_value_t = 5)]
        interval: u64,
    },
    /// Detach from the cgroup; unpin everything when it was the last one.
    Detach {
        /// The pod's cgroup v2 directory.
        #[arg(long, env = "MEMBRANE_CGROUP")]
        cgroup: PathBuf,
    },
    /// Print per-program counters.
    Counters,
    /// List spliced socket pairs.
    Pairs,
    /// Services balanced at connect (socket-level load balancing).
    #[command(subcommand)]
    Service(ServiceCmd),
}

#[derive(Debug, Subcommand)]
enum ServiceCmd {
    /// Route new connects to FRONTEND to one of the backends (replaces the
    /// service's backends; none: connects to it are refused).
    Set {
        /// The service's address and port, e.g. 10.96.0.10:80 or [fd00::10]:80.
        frontend: SocketAddr,
        /// A backend address and port; repeatable.
        #[arg(long = "backend")]
        backends: Vec<SocketAddr>,
    },
    /// Stop balancing FRONTEND.
    Delete {
        /// The service's address and port.
        frontend: SocketAddr,
    },
    /// List the services and their backends.
    List,
}

impl AttachArgs {
    fn cgroup(&self) -> Result<&Path> {
        self.cgroup
            .as_deref()
            .context("--cgroup is required (the pod's cgroup v2 directory), unless `run` is given --xds-address")
    }

    /// Attach; re-attaching an attached cgroup keeps it attached and says
    /// which settings it changed, if any.
    fn attach(&self, bpffs: &Path) -> Result<Datapath> {
        let settings = self.settings()?;
        let cgroup = self.cgroup()?;
        let before = Datapath::open(bpffs).ok().map(|dp| {
            let ino = std::fs::metadata(cgroup).map(|m| m.ino()).ok();
            let attached = dp
                .attachments()
                .map(|a| ino.is_some_and(|i| a.contains(&i.to_string())))
                .unwrap_or(false);
            (attached, dp.settings().ok())
        });
        let dp = Datapath::attach(bpffs, cgroup, &settings)
            .with_context(|| format!("attach to {}", cgroup.display()))?;
        if let Some((attached, old)) = before {
            if attached {
                println!("{}: already attached", cgroup.display());
            }
            if let Some(old) = old {
                for line in settings_diff(&old, &settings) {
                    println!("settings changed: {line}");
                }
            }
        }
        if let Some(ns) = &self.inbound_netns {
            dp.attach_netns(ns)
                .with_context(|| format!("inbound capture in {}", ns.display()))?;
        }
        Ok(dp)
    }

    /// The settings from the flags and the annotations file; every value
    /// is checked before any is used.
    fn settings(&self) -> Result<DatapathSettings> {
        let mut annotations = BTreeMap::new();
        for (key, flag) in [
            (istio::EXCLUDE_OUTBOUND_PORTS, &self.exclude_outbound_ports),
            (istio::EXCLUDE_OUTBOUND_RANGES, &self.exclude_outbound_cidrs),
            (istio::INCLUDE_OUTBOUND_RANGES, &self.include_outbound_cidrs),
            (istio::EXCLUDE_INBOUND_PORTS, &self.exclude_inbound_ports),
            (istio::INCLUDE_INBOUND_PORTS, &self.include_inbound_ports),
        ] {
            if let Some(v) = flag {
                annotations.insert(key.to_owned(), v.clone());
            }
        }
        if let Some(file) = &self.pod_annotations {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("--pod-annotations {}", file.display()))?;
            let parsed = istio::parse_downward_api(&text)
                .with_context(|| format!("--pod-annotations {}", file.display()))?;
            annotations.extend(parsed);
        }
        let capture_annotations = istio::CaptureAnnotations::parse(&annotations)?;
        let mut s = DatapathSettings {
            capture: self.capture.then(|| Capture {
                proxy_ip4: self.proxy_ip4,
                outbound_port: self.outbound_port,
                proxy_uid: Some(self.proxy_uid),
                proxy_mark: Some(self.proxy_mark),
                exclude_ports: Vec::new(),
                exclude_cidrs: Vec::new(),
                include_cidrs: None,
            }),
            policy_enforce: self.policy_enforce,
            pod_identity: self.pod_identity,
            capture_inbound: self.inbound_netns.is_some(),
            inbound_port: self.inbound_port,
            no_splice: self.no_splice,
            hint_ttl_secs: self.hint_ttl_secs,
            policy_revision: 0,
            inbound_ports: InboundPorts::default(),
            proxy_ports: self.proxy_ports.clone(),
            pod_addrs: self.pod_ips.clone(),
        };
        capture_annotations.apply(&mut s);
        Ok(s)
    }
}

/// `field: old -> new` for each top-level setting that differs.
fn settings_diff(old: &DatapathSettings, new: &DatapathSettings) -> Vec<String> {
    let (Ok(serde_json::Value::Object(o)), Ok(serde_json::Value::Object(n))) =
        (serde_json::to_value(old), serde_json::to_value(new))
    else {
        return Vec::new();
    };
    n.iter()
        .filter(|(k, v)| o.get(*k) != Some(v))
        .map(|(k, v)| {
            let was = o.get(k).cloned().unwrap_or(serde_json::Value::Null);
            format!("{k}: {was} -> {v}")
        })
        .collect()
}

fn node_name(flag: &Option<String>) -> String {
    flag.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "localhost".to_owned())
    })
}

/// Serve the API socket and fan the ring buffer out to its subscribers;
/// print counters every `interval`. Runs until killed.
fn run(
    dp: &Datapath,
    attach: &AttachArgs,
    socket: &Path,
    limits: api::Limits,
    node: &str,
    interval: Duration,
) -> Result<()> {
    let mut reader = dp.events().context("open the monitor events ring buffer")?;
    let listener = api::bind(socket).with_context(|| format!("--socket {}", socket.display()))?;
    let hub = Arc::new(api::Hub::new(node, api::SUBSCRIBER_QUEUE));
    let stats = Arc::new(api::ServeStats::default());
    let status = {
        let dp = dp.clone();
        let hub = hub.clone();
        let stats = stats.clone();
        let cgroup = attach.cgroup.clone();
        let netns = attach.inbound_netns.clone();
        move || {
            let mut v = serde_json::json!({
                "node": hub.node(),
                "bpffs": dp.dir(),
                "cgroup": cgroup,
                "inbound_netns": netns,
                "subscribers": hub.subscribers(),
                "api": stats.json(),
                "events_lost_in_kernel": dp.events_lost().ok(),
            });
            let fields = [
                (
                    "attachments",
                    dp.attachments().map(|a| serde_json::json!(a)),
                ),
                ("settings", dp.settings().map(|s| serde_json::json!(s))),
                ("counters", dp.counters().map(|c| serde_json::json!(c))),
            ];
            for (k, r) in fields {
                v[k] = r.unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }));
            }
            v
        }
    };
    {
        let hub = hub.clone();
        thread::spawn(move || api::serve_with(listener, hub, status, limits, stats));
    }
    println!("serving {} as node {node}", socket.display());
    let mut next_print = Instant::now();
    let mut kernel_lost = dp.events_lost().unwrap_or(0);
    loop {
        if reader.wait(Duration::from_millis(200))? {
            for ev in reader.drain(node, 4096)? {
                hub.publish(&ev);
            }
        }
        // Records the kernel dropped for want of room: every subscriber
        // missed them, so every subscriber is told.
        if let Ok(n) = dp.events_lost() {
            if n > kernel_lost {
                hub.publish(&membrane_datapath::events::Event::lost(
                    node,
                    n - kernel_lost,
                    "ring-buffer-full",
                ));
                kernel_lost = n;
            }
        }
        if Instant::now() >= next_print {
            print_counters(dp)?;
            next_print = Instant::now() + interval;
        }
    }
}

fn print_counters(dp: &Datapath) -> Result<()> {
    println!(
        "{:<14} {:>12} {:>16} {:>10} {:>10} {:>10}",
        "program", "redirected", "redirected_bytes", "fallbacks", "misses", "refused"
    );
    for c in dp.counters()? {
        println!(
            "{:<14} {:>12} {:>16} {:>10} {:>10} {:>10}",
            c.program, c.redirected, c.redirected_bytes, c.fallbacks, c.misses, c.refused
        );
    }
    let s = dp.splice_stats()?;
    println!(
        "sockets switched to plain TCP: {} (left the sockhash: {}, waited in it for spliced bytes: {})",
        s.switched_to_tcp, s.unspliced, s.kept
    );
    Ok(())
}

fn limits(cfg: &Config) -> api::Limits {
    api::Limits {
        max_request_bytes: cfg.api_max_request_bytes as usize,
        max_clients: cfg.api_max_clients as usize,
        request_timeout: Duration::from_millis(cfg.api_request_timeout_ms),
    }
}

fn main() -> Result<()> {
    let cfg = Config::parse();
    match &cfg.cmd {
        Cmd::Attach(a) => {
            ensure_bpffs(&cfg.bpffs)?;
            a.attach(&cfg.bpffs)?;
            println!(
                "attached to {} (pinned under {})",
                a.cgroup()?.display(),
                cfg.bpffs.display()
            );
        }
        Cmd::Run {
            daemon: d,
            attach: _,
            interval: _,
        } if d.xds_address.is_some() => {
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_env("MEMBRANE_LOG")
                        .unwrap_or_else(|_| "info".into()),
                )
                .init();
            let xds = XdsConfig {
                address: d.xds_address.clone().unwrap_or_default(),
                node: node_name(&cfg.node),
                backoff_initial: Duration::from_millis(d.xds_backoff_ms),
                backoff_max: Duration::from_millis(d.xds_backoff_max_ms.max(d.xds_backoff_ms)),
                tls: d.xds_ca.clone().map(|ca| XdsTls {
                    ca,
                    identity: d.xds_cert.clone().zip(d.xds_key.clone()),
                    poll: Duration::from_millis(d.xds_cert_poll_ms),
                    memory: None,
                }),
            };
            daemon::run(DaemonConfig {
                bpffs: cfg.bpffs.clone(),
                state_dir: d.state_dir.clone(),
                socket: cfg.socket.clone(),
                limits: limits(&cfg),
                observer: membrane_agent::observer::ObserverConfig {
                    addr: d.observer.observer_addr,
                    tls: d.observer.tls(
                        d.xds_ca.as_ref(),
                        d.xds_cert.as_ref().zip(d.xds_key.as_ref()),
                    )?,
                    ring: d.observer.observer_ring,
                    metrics: d.observer.metrics_addr,
                },
                xds,
                packet: d.packet.clone(),
                records: d.records.clone(),
            })?;
        }
        Cmd::Run {
            attach, interval, ..
        } => {
            ensure_bpffs(&cfg.bpffs)?;
            let dp = attach.attach(&cfg.bpffs)?;
            run(
                &dp,
                attach,
                &cfg.socket,
                limits(&cfg),
                &node_name(&cfg.node),
                Duration::from_secs((*interval).max(1)),
            )?;
        }
        Cmd::Detach { cgroup } => {
            Datapath::open(&cfg.bpffs)?.detach(cgroup)?;
            println!("detached from {}", cgroup.display());
        }
        Cmd::Counters => {
            let dp = Datapath::open(&cfg.bpffs)?;
            print_counters(&dp)?;
            for (port, _) in dp.plain_hints()? {
                println!("plain path learned for service port {port}");
            }
        }
        Cmd::Service(ServiceCmd::Set { frontend, backends }) => {
            let dp = Datapath::open(&cfg.bpffs)?;
            dp.set_service(*frontend, backends)
                .with_context(|| format!("service {frontend}"))?;
        }
        Cmd::Service(ServiceCmd::Delete { frontend }) => {
            Datapath::open(&cfg.bpffs)?
                .delete_service(*frontend)
                .with_context(|| format!("service {frontend}"))?;
        }
        Cmd::Service(ServiceCmd::List) => {
            for (frontend, backends) in Datapath::open(&cfg.bpffs)?.services()? {
                let list: Vec<String> = backends.iter().map(|b| b.to_string()).collect();
                println!(
                    "{frontend} -> {}",
                    if list.is_empty() {
                        "(no backend: refused)".into()
                    } else {
                        list.join(", ")
                    }
                );
            }
        }
        Cmd::Pairs => {
            for (a, b) in Datapath::open(&cfg.bpffs)?.spliced_pairs()? {
                println!(
                    "{} -> {}  <=>  {} -> {}",
                    a.local, a.remote, b.local, b.remote
                );
            }
        }
    }
    Ok(())
}
