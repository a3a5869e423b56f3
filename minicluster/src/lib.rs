//! The netns mini-cluster: two nodes as network namespaces joined by an underlay, the
//! control plane (membrane-xds) fed by a directory of Kubernetes YAML, an agent per node,
//! pods with their cgroups registered by membrane-cni, and the deathstars' sidecars, with
//! Cilium's Star Wars scenario on it. `membrane demo` plays it; the top-level e2e tests
//! use it as their test bed.

use anyhow::{bail, Context, Result};
use membrane_datapath::node::Overlay;
use membrane_datapath::Datapath;
use membrane_policy::labels::LabelSet;
use membrane_policy::load::parse_file;
use membrane_policy::resolve::NamedPorts;
use membrane_policy::rule::{CompiledPolicy, Proto};
use membrane_policy::trace::{trace, TraceHttp, TraceRequest, TraceResult};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod agent;
mod bed;
mod cluster;
mod control;
mod crossing;
mod kubelet;
mod l7;
mod pods;
mod relay;
mod scenario;
mod source;

pub use agent::AgentRestart;
pub use bed::{admitting_the_alliance, l7_allowing_exhaust_port};
pub use cluster::{Bins, Cluster, Pod};
pub use relay::ClusterRelay;

/// The Star Wars L3/L4 policy: (file name, text).
pub const L3_L4: (&str, &str) = (
    "sw_l3_l4_policy.yaml",
    include_str!("../../manifests/examples/starwars/sw_l3_l4_policy.yaml"),
);
/// The Star Wars L3/L4/L7 policy (the mini-cluster starts with it): (file name, text).
pub const L7: (&str, &str) = (
    "sw_l3_l4_l7_policy.yaml",
    include_str!("../../manifests/examples/starwars/sw_l3_l4_l7_policy.yaml"),
);

/// The deathstars' labels.
pub const DEATHSTAR: &str = "k8s:org=empire,k8s:class=deathstar";
/// The tiefighter's labels.
pub const TIEFIGHTER: &str = "k8s:org=empire,k8s:class=tiefighter";
/// The xwing's labels.
pub const XWING: &str = "k8s:org=alliance,k8s:class=xwing";
/// The deathstar service's address (a ClusterIP), balanced over its replicas.
pub const SERVICE: &str = "10.96.0.10:80";
/// Landing requests the tiefighter makes through the service in step 6 (at
/// least; more until each node's deathstar has had one).
const LANDINGS: usize = 8;
/// The most landings step 6 makes looking for one on each node.
const MAX_SERVICE_LANDINGS: usize = 64;

/// A step's title, as the demo prints it.
pub fn step(title: &str) {
    println!("\n== {title}");
}

/// Every object of a policy file (name, text), compiled; an invalid one is an error.
pub fn compile_quietly((file, text): (&str, &str)) -> Result<Vec<Arc<CompiledPolicy>>> {
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
pub fn trace_for(
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
        // The demo's traces are between pods.
        allow_localhost: Default::default(),
    };
    Ok(trace(policies, &req)?)
}

#[cfg(test)]
mod tests {
    /// Issue 14's "done": no map entry is written from anything but the
    /// control plane's resources. The demo only reads the datapath (its
    /// counters, through the pins the agent made); the agent attaches and
    /// programs every pod.
    #[test]
    fn the_demo_writes_no_map_and_attaches_nothing() {
        let files = [
            ("lib.rs", include_str!("lib.rs")),
            ("agent.rs", include_str!("agent.rs")),
            ("bed.rs", include_str!("bed.rs")),
            ("cluster.rs", include_str!("cluster.rs")),
            ("control.rs", include_str!("control.rs")),
            ("crossing.rs", include_str!("crossing.rs")),
            ("kubelet.rs", include_str!("kubelet.rs")),
            ("pods.rs", include_str!("pods.rs")),
            ("scenario.rs", include_str!("scenario.rs")),
            ("source.rs", include_str!("source.rs")),
        ];
        let writes = [
            "sync_policy",
            "sync_ipcache",
            "set_service",
            "delete_service",
            "set_settings",
            "clear_plain_hint",
            "attach(",
            "attach_netns",
            "detach",
            "teardown(",
            "policy_map",
        ];
        // This test's own list would match itself: only code above it counts.
        let code = |text: &'static str| text.split("#[cfg(test)]").next().unwrap_or(text);
        for (file, text) in files {
            for w in writes {
                assert!(
                    !code(text).contains(&format!(".{w}"))
                        && !code(text).contains(&format!("::{w}")),
                    "minicluster/src/{file} calls {w}: the demo must leave the maps to the agent"
                );
            }
        }
    }
}
