//! The node agent of the mini-cluster: started on the node, fed by the
//! control plane, asked what it enforces, and restarted (step 8) while the
//! tiefighter keeps landing.

use super::cluster::{Bins, Cluster, Pod};
use super::*;

/// What an agent restart under load saw ([`Cluster::restart_agent`]).
#[derive(Debug)]
pub struct AgentRestart {
    /// The killed agent's pid.
    pub old_pid: u32,
    /// The new agent's pid.
    pub new_pid: u32,
    /// Landings made when the old agent was killed.
    pub killed_at: usize,
    /// Landings made when the new one answered on its socket.
    pub up_at: usize,
    /// The endpoints the new agent adopted (its `status`).
    pub adopted: Value,
    /// Every landing's HTTP status code, in order ("000": no response).
    pub codes: Vec<String>,
}

impl AgentRestart {
    /// The landings that landed (200).
    pub fn landed(&self) -> usize {
        self.codes.iter().filter(|c| *c == "200").count()
    }
}
use membrane_datapath::api::{self, Request};
use serde_json::Value;

/// Landings the step-8 loop makes at most (it stops earlier when told).
const MAX_LANDINGS: usize = 3000;
/// Landings before the agent is killed, and after the new one answers, before
/// the loop is told to stop.
const LANDINGS_AROUND: usize = 15;

impl Cluster {
    /// The mini-cluster's bpffs directory, holding one per node.
    pub(crate) fn bpffs(&self) -> PathBuf {
        PathBuf::from("/sys/fs/bpf").join(&self.tag)
    }

    /// Node `n`'s bpffs directory: its agent pins the node's programs under
    /// `node/` and each endpoint under `endpoints/` in it.
    pub(crate) fn bpffs_of(&self, n: usize) -> PathBuf {
        self.bpffs().join(source::NODES[n].name)
    }

    /// Node `n`'s agent's records socket, in the directory a cluster mounts into the
    /// node's injected pods (`/var/run/membrane/sidecar` there; a directory per node here,
    /// the nodes sharing the host's file system).
    pub(crate) fn records_socket(&self, n: usize) -> PathBuf {
        self.dir
            .join(format!("sidecar-{}", source::NODES[n].name))
            .join(membrane_xds::inject::RECORDS_SOCKET_FILE)
    }

    /// Node `n`'s agent's API socket.
    pub(crate) fn agent_socket(&self, n: usize) -> PathBuf {
        self.dir
            .join(format!("agent-{}.sock", source::NODES[n].name))
    }

    /// Node `n`'s agent, `membrane-agent run --node NODE --xds-address URL
    /// --overlay MODE --underlay-device ul0`, in the node's network namespace (where the control plane is reachable)
    /// and the host's mount namespace: `nsenter --net` only, since `ip netns
    /// exec` mounts a sysfs of its own over bpffs and the cgroup tree. Its
    /// pid, once its socket answers.
    pub(crate) fn start_agent(&self, bins: &Bins, xds: &str, n: usize) -> Result<u32> {
        let node = source::NODES[n].name;
        let log = self.dir.join(format!("membrane-agent-{node}.log"));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("open {}", log.display()))?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.node_ns(n)))
            .arg(&bins.agent)
            .arg("--bpffs")
            .arg(self.bpffs_of(n))
            .arg("--socket")
            .arg(self.agent_socket(n))
            .args(["--node", node])
            .arg("run")
            .args(["--xds-address", xds])
            .args(["--overlay", &self.overlay.to_string()])
            .args(["--underlay-device", source::UNDERLAY])
            .args(super::relay::agent_args(n))
            .arg("--state-dir")
            .arg(self.dir.join(format!("agent-{node}")))
            .arg("--records-socket")
            .arg(self.records_socket(n))
            .stdin(Stdio::null())
            .stdout(Stdio::from(f.try_clone()?))
            .stderr(Stdio::from(f))
            .spawn()
            .with_context(|| format!("start {}", bins.agent.display()))?;
        let pid = child.id();
        self.undo().agents[n] = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.agent(n, &Request::Status).is_err() {
            if let Some(c) = self.undo().agents[n].as_mut() {
                if let Some(status) = c.try_wait()? {
                    bail!("membrane-agent exited early ({status}){}", self.log_tails());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "membrane-agent did not answer on its socket in 20 s{}",
                    self.log_tails()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(pid)
    }

    /// One request to node `n`'s agent: its reply, or its error as one.
    pub fn agent(&self, n: usize, req: &Request) -> Result<Value> {
        let socket = self.agent_socket(n);
        let v = api::request(&socket, req, Duration::from_secs(10))
            .with_context(|| format!("ask the agent at {}", socket.display()))?;
        if let Some(e) = v.get("error") {
            bail!("the agent refused {req:?}: {e}");
        }
        Ok(v)
    }

    /// Waits (at most 20 s) until node `node`'s agent enforces the control
    /// plane's policy on `n` endpoints: each has its identity and an applied
    /// revision.
    pub fn wait_programmed(&self, node: usize, n: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let list = self.agent(node, &Request::EndpointList)?;
            let done = list
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| {
                    !e["identity"].is_null()
                        && !e["state"]["applied_revision"].is_null()
                        && e["state"]["error"].is_null()
                })
                .count();
            if done == n {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent enforces the control plane's policy on {done} of {n} endpoints after 20 s: {list}{}",
                    self.log_tails()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `membrane ARGS --socket AGENT_SOCKET` of node `n`, as an operator would
    /// run it, its output indented.
    pub(crate) fn show(&self, n: usize, args: &[&str]) -> Result<()> {
        let out = Command::new(&self.bins.membrane)
            .args(args)
            .arg("--socket")
            .arg(self.agent_socket(n))
            .output()
            .context("run membrane")?;
        if !out.status.success() {
            bail!(
                "membrane {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            println!("    {l}");
        }
        Ok(())
    }

    /// The pin directory of pod `p`'s endpoint, as the agent reports it.
    pub(crate) fn pins_of(&self, p: &Pod) -> Result<PathBuf> {
        let e = self.agent(
            p.node,
            &Request::EndpointGet {
                endpoint: format!("default/{}", p.name),
            },
        )?;
        e["pins"]
            .as_str()
            .map(PathBuf::from)
            .with_context(|| format!("the agent names no pins for {}: {e}", p.name))
    }

    /// Step 8: node-1's agent killed and started again while the tiefighter
    /// lands through the service in a loop, one connection per landing (on
    /// both nodes' deathstars). The new agent adopts the pinned programs and
    /// maps of the node's endpoints, and enforces the control plane's policy on
    /// all of them before this returns.
    pub fn restart_agent(&self, tiefighter: &Pod) -> Result<AgentRestart> {
        let (bins, xds) = (&self.bins, self.xds.as_str());
        let endpoints = self.pods().filter(|p| p.node == 0).count();
        step("8. node-1's agent restarted while the tiefighter keeps landing");
        let results = self.dir.join("landings.txt");
        let stop = self.dir.join("landings.stop");
        let url = format!("http://{SERVICE}/v1/request-landing");
        // Each landing a curl of its own, so each is a new connect the
        // datapath decides and balances; "000" is a landing that got no
        // response. Bounded: it stops when told or after MAX_LANDINGS.
        let script = r#"i=0; while [ ! -e "$1" ] && [ $i -lt "$2" ]; do curl -s -o /dev/null -w '%{http_code}\n' --max-time 5 -X POST "$3" >> "$4"; i=$((i+1)); done"#;
        let max = MAX_LANDINGS.to_string();
        let path = |p: &Path| -> Result<String> {
            Ok(p.to_str().context("temp path is not UTF-8")?.to_owned())
        };
        let (stop_s, results_s) = (path(&stop)?, path(&results)?);
        std::fs::write(&results, "")?;
        let mut lander = self
            .in_pod(
                tiefighter.name,
                &["sh", "-c", script, "sh", &stop_s, &max, &url, &results_s],
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start the landing loop")?;
        let landings = || -> Vec<String> {
            std::fs::read_to_string(&results)
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect()
        };
        let wait_for = |n: usize, when: &str| -> Result<()> {
            let deadline = Instant::now() + Duration::from_secs(60);
            while landings().len() < n {
                if Instant::now() > deadline {
                    bail!("{} landings {when} in 60 s, expected {n}", landings().len());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        };
        let restart = || -> Result<(usize, usize, u32, u32)> {
            wait_for(LANDINGS_AROUND, "before the restart")?;
            let old = {
                let mut t = self.undo();
                let agent = t.agents[0].as_mut().context("no agent is running")?;
                let pid = agent.id();
                agent.kill()?;
                agent.wait()?;
                t.agents[0] = None;
                pid
            };
            let killed_at = landings().len();
            let new = self.start_agent(bins, xds, 0)?;
            let up_at = landings().len();
            wait_for(up_at + LANDINGS_AROUND, "after the restart")?;
            Ok((killed_at, up_at, old, new))
        };
        let outcome = restart();
        std::fs::write(&stop, "")?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while lander.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = lander.kill();
                let _ = lander.wait();
                bail!("the landing loop did not stop");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let (killed_at, up_at, old_pid, new_pid) = outcome?;
        let adopted = self.agent(0, &Request::Status)?["endpoints"].clone();
        self.wait_programmed(0, endpoints)?;
        Ok(AgentRestart {
            old_pid,
            new_pid,
            killed_at,
            up_at,
            adopted,
            codes: landings(),
        })
    }
}
