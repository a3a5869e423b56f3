//! The parts of the mini-cluster a cluster runs for it: the control plane
//! (membrane-xds on the node, reading the source directory), the CNI plugin
//! the container runtime calls for each pod (the node agent is `agent.rs`, the
//! sidecars `kubelet.rs`).

use super::cluster::{Bins, Cluster, Pod};
use super::pods::GATEWAY;
use super::source::NODE_IP;
use super::*;
use serde_json::{json, Value};
use std::sync::mpsc;

/// Where membrane-xds serves plaintext xDS to the node agents: on node-1's underlay
/// address ([`NODE_IP`]), which node-2's agent reaches too.
pub(crate) const XDS_PORT: u16 = 15010;

/// A `membrane-cni` call the teardown repeats as DEL.
#[derive(Debug, Clone)]
pub(crate) struct CniCall {
    pub bin: PathBuf,
    pub env: Vec<(&'static str, String)>,
    pub config: String,
}

impl CniCall {
    /// Runs the plugin with `command`: its stdout, or its error result as an error.
    pub(crate) fn run(&self, command: &str) -> Result<String> {
        let mut child = Command::new(&self.bin)
            .env_clear()
            .env("CNI_COMMAND", command)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("run {}", self.bin.display()))?;
        child
            .stdin
            .take()
            .context("membrane-cni stdin")?
            .write_all(self.config.as_bytes())?;
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            // The spec's error result: {"code", "msg", "details"}.
            let why = serde_json::from_str::<Value>(&text)
                .ok()
                .map(|v| format!("code {}: {}: {}", v["code"], v["msg"], v["details"]))
                .unwrap_or(text);
            bail!("membrane-cni {command}: {why}");
        }
        Ok(text)
    }
}

impl Cluster {
    /// The control plane, in the node's namespace, reading `source`; its URL
    /// for the sidecars and the agent.
    pub(crate) fn start_xds(&self, bins: &Bins, source: &Path) -> Result<String> {
        let grpc = format!("{NODE_IP}:{XDS_PORT}");
        let tls = format!("{NODE_IP}:{}", super::kubelet::XDS_TLS_PORT);
        let pki = self.pki();
        let log = self.dir.join("membrane-xds.log");
        let err =
            std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.node_ns(0)])
            .arg(&bins.xds)
            .arg("--source-dir")
            .arg(source)
            .args(["--plaintext-xds", "--grpc-addr", &grpc])
            // The sidecars' port: mTLS with the workload certificates (`kubelet.rs`).
            .args(["--tls-addr", &tls])
            .arg("--tls-cert")
            .arg(pki.join("xds/cert-chain.pem"))
            .arg("--tls-key")
            .arg(pki.join("xds/key.pem"))
            .arg("--ca-cert")
            .arg(pki.join("ca/ca-cert.pem"))
            .args(["--debug-addr", "127.0.0.1:15014"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("start {}", bins.xds.display()))?;
        let stdout = child.stdout.take().context("membrane-xds stdout")?;
        self.undo().children.push(child);
        // It prints one line when its listeners are bound; a thread reads it so
        // that a control plane that never gets there is an error, not a hang.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line)
                if line.contains(&format!("grpc={grpc}"))
                    && line.contains(&format!("tls={tls}")) => {}
            Ok(line) => bail!(
                "membrane-xds did not start (it printed {:?}){}",
                line.trim(),
                self.log_tails()
            ),
            Err(_) => bail!("membrane-xds did not start in 20 s{}", self.log_tails()),
        }
        Ok(format!("http://{grpc}"))
    }

    /// Pod `p` wired in as a container runtime does it: its network exists (the
    /// interface plugin's part, [`Cluster::pod_network`]), then the chained
    /// `membrane-cni ADD` registers it with its node's agent (namespace, name,
    /// network namespace, addresses, the host veth the interface plugin made,
    /// where the agent attaches its tc programs, and the cgroup the runtime
    /// passes through the `cgroupPath` capability). Undone by DEL in the
    /// teardown.
    pub(crate) fn cni_add(&self, bins: &Bins, p: &Pod) -> Result<()> {
        let netns = PathBuf::from("/run/netns").join(self.ns(p.name));
        let netns = netns.to_str().context("netns path is not UTF-8")?;
        // The pod interface's MAC: the agent addresses the frames its tc programs
        // redirect into the pod (those decapsulated from another node) to it.
        let mac = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(p.name),
                "cat",
                "/sys/class/net/eth0/address",
            ])
            .output()
            .context("read the pod's MAC")?;
        let mac = String::from_utf8_lossy(&mac.stdout).trim().to_owned();
        if mac.is_empty() {
            bail!("{} has no eth0 MAC address", p.name);
        }
        let config = json!({
            "cniVersion": "1.0.0",
            "name": "membrane-demo",
            "type": "membrane-cni",
            "agentSocket": self.agent_socket(p.node),
            "capabilities": {"cgroupPath": true},
            "runtimeConfig": {"cgroupPath": self.cgroups.join(p.name)},
            "stateDir": self.dir.join(format!("cni-{}", source::NODES[p.node].name)),
            // As a veth plugin reports it: the host end without a sandbox, the pod's with.
            "prevResult": {
                "cniVersion": "1.0.0",
                "interfaces": [
                    {"name": self.host_veth(p)},
                    {"name": "eth0", "mac": mac, "sandbox": netns},
                ],
                "ips": [{"address": format!("{}/32", p.ip), "gateway": GATEWAY, "interface": 1}],
            },
        });
        let call = CniCall {
            bin: bins.cni.clone(),
            env: vec![
                ("CNI_CONTAINERID", format!("{}-{}", self.tag, p.name)),
                ("CNI_NETNS", netns.to_owned()),
                ("CNI_IFNAME", "eth0".to_owned()),
                (
                    "CNI_ARGS",
                    format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={}", p.name),
                ),
                (
                    "CNI_PATH",
                    bins.cni
                        .parent()
                        .unwrap_or(Path::new("/"))
                        .display()
                        .to_string(),
                ),
            ],
            config: config.to_string(),
        };
        // Recorded first: a failed ADD is undone by DEL as a runtime would.
        self.undo().cni.push(call.clone());
        let out = call.run("ADD")?;
        let result: Value = serde_json::from_str(&out)
            .with_context(|| format!("membrane-cni ADD printed no result: {out:?}"))?;
        if result["ips"] != config["prevResult"]["ips"] {
            bail!("membrane-cni ADD changed the pod's addresses: {out}");
        }
        Ok(())
    }

    /// Pod `d`'s sidecar's run directory (its handover socket).
    pub(crate) fn sidecar_run_dir(&self, d: &Pod) -> PathBuf {
        self.dir.join(format!("{}-run", d.name))
    }
}
