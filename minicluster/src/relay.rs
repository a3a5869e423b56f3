//! The relay of the mini-cluster, in this process: membrane-relay's library on a tokio
//! runtime of its own whose threads live in node-1's network namespace (where the
//! control plane and both agents' observers are reachable over the underlay). It finds
//! the agents through membrane-xds's node registry as on a cluster, follows each node's
//! observer (`NODE_IP:4244`; plaintext here, as the mini-cluster's xDS is) and serves the
//! merged stream on node-1's `NODE_IP:4245` for `membrane monitor --all-nodes`. The web
//! page and `membrane demo` read the same stream in-process ([`Cluster::relay`]).

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use membrane_api::observer::{AGENT_PORT, RELAY_PORT};
use membrane_relay::discovery::XdsSource;
use membrane_relay::nodes::AgentAccess;
use membrane_relay::{Discovery, Relay, RelayConfig};

use super::cluster::{Cluster, Pod};
use super::*;

/// How long the demo waits for a sidecar's record to reach the relay.
const RELAY_WAIT: Duration = Duration::from_secs(20);

/// The relay of a mini-cluster and the runtime it runs on.
pub struct ClusterRelay {
    /// The merged stream.
    pub relay: Relay,
    /// Where it serves the merged stream (in node-1's namespace).
    pub addr: SocketAddr,
    /// The runtime its tasks run on; its threads are in node-1's network namespace, so
    /// a server spawned on it that should be reached from the host binds its listener
    /// before (a socket keeps the namespace it was made in).
    pub runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for ClusterRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterRelay")
            .field("addr", &self.addr)
            .finish()
    }
}

/// The agents' observer flags in the mini-cluster: plaintext on the node's underlay
/// address.
pub(crate) fn agent_args(n: usize) -> Vec<String> {
    vec![
        "--observer-addr".into(),
        format!("{}:{}", source::NODES[n].ip, AGENT_PORT),
        "--observer-plaintext".into(),
        "--metrics-addr".into(),
        format!("{}:9962", source::NODES[n].ip),
    ]
}

impl Cluster {
    /// Starts the relay (see the module's documentation).
    pub(crate) fn start_relay(&self) -> Result<ClusterRelay> {
        let ns = format!("/run/netns/{}", self.node_ns(0));
        let file = std::fs::File::open(&ns).with_context(|| format!("open {ns}"))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(move || {
                if let Err(e) =
                    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                {
                    eprintln!("membrane-relay: enter node-1's network namespace: {e}");
                }
            })
            .build()
            .context("start the relay's runtime")?;
        let backoff = Duration::from_millis(100);
        let mut cfg = RelayConfig::new(
            Discovery::Xds(XdsSource {
                address: self.xds.clone(),
                node_id: "membrane-relay~membrane-relay".into(),
                tls: None,
                backoff,
                backoff_max: Duration::from_secs(2),
            }),
            AgentAccess {
                port: AGENT_PORT,
                tls: None,
                server_name: None,
                backoff,
                backoff_max: Duration::from_secs(2),
            },
        );
        cfg.window = Duration::from_millis(500);
        let want: SocketAddr = format!("{}:{}", source::NODE_IP, RELAY_PORT)
            .parse()
            .context("the relay's address")?;
        // On a worker thread: `block_on` runs its future on this thread, which is not in
        // node-1's namespace, and the listener is made where the future runs.
        let (relay, addr) = runtime
            .block_on(runtime.spawn(async move {
                let relay = Relay::start(cfg);
                let addr = membrane_relay::server::serve(relay.clone(), want, None, vec![]).await?;
                anyhow::Ok((relay, addr))
            }))
            .context("the relay's start")??;
        Ok(ClusterRelay {
            relay,
            addr,
            runtime,
        })
    }

    /// The command that shows every node's events through the relay.
    pub fn monitor_line(&self, addr: SocketAddr, extra: &str) -> String {
        format!(
            "nsenter --net=/run/netns/{} membrane monitor --all-nodes --relay {addr}{extra}",
            self.node_ns(0)
        )
    }
}

impl Cluster {
    /// Every node's events in one stream: what the relay merged so far, per node, then
    /// `membrane monitor --all-nodes` run against it twice: the two latest sidecar records
    /// (the tiefighter's denied `PUT /v1/exhaust-port` to each deathstar, one per node,
    /// each sent until the relay has a new record of it) and the latest drops.
    pub(crate) fn show_merged(&self, tiefighter: &Pod) -> Result<()> {
        let Some(r) = &self.relay else {
            return Ok(());
        };
        for deathstar in &self.deathstars {
            self.l7_reaches_relay(r, deathstar, tiefighter)?;
        }
        let seen = r.relay.recent(4096);
        let mut per: std::collections::BTreeMap<&str, usize> = Default::default();
        for e in &seen {
            *per.entry(e.node.as_str()).or_default() += 1;
        }
        println!(
            "\n  the relay's merged stream so far: {}",
            per.iter()
                .map(|(n, c)| format!("{n} {c} events"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for filter in [
            ["--type", "l7", "--last", "2"],
            ["--type", "drop", "--last", "3"],
        ] {
            println!(
                "  $ {}",
                self.monitor_line(r.addr, &format!(" {}", filter.join(" ")))
            );
            let out = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", self.node_ns(0)))
                .arg(&self.bins.membrane)
                .args(["monitor", "--all-nodes", "--relay", &r.addr.to_string()])
                .args(filter)
                .output()
                .context("run membrane monitor --all-nodes")?;
            if !out.status.success() {
                bail!(
                    "membrane monitor --all-nodes failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            for l in String::from_utf8_lossy(&out.stdout).lines() {
                println!("    {l}");
            }
        }
        Ok(())
    }

    /// Sends the tiefighter's `PUT /v1/exhaust-port` to `deathstar` until the relay's
    /// stream holds a new record of that deathstar's sidecar denying it (its node's agent
    /// forwards it), or fails after [`RELAY_WAIT`].
    fn l7_reaches_relay(&self, r: &ClusterRelay, deathstar: &Pod, tiefighter: &Pod) -> Result<()> {
        let pod = format!("default/{}", deathstar.name);
        let records = || {
            r.relay
                .recent(4096)
                .iter()
                .filter(|e| {
                    e.kind == membrane_api::monitor::TYPE_L7
                        && e.verdict.as_deref() == Some("denied")
                        && e.dst_pod.as_deref() == Some(pod.as_str())
                })
                .count()
        };
        let before = records();
        let url = format!("http://{}/v1/exhaust-port", deathstar.ip);
        let deadline = Instant::now() + RELAY_WAIT;
        while records() == before {
            if Instant::now() > deadline {
                bail!(
                    "the relay's stream has no new sidecar record of {} PUT {url} after {} s{}",
                    tiefighter.name,
                    RELAY_WAIT.as_secs(),
                    self.log_tails()
                );
            }
            self.request_within(tiefighter.name, "PUT", &url, 2)?;
            // Longer than the relay's reorder window, so one request is usually enough.
            for _ in 0..30 {
                if records() > before {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }
}
