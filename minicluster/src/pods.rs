//! What the mini-cluster does to and in its pods: the node and pod network namespaces,
//! processes inside a pod, readiness and requests, and teardown on
//! drop.

use super::cluster::{Cluster, Pod, Teardown};
use super::*;

/// The pods' gateway, on every host veth (link-local: no pod network holds it).
pub(crate) const GATEWAY: &str = "169.254.1.1";
/// The underlay veth's MTU (the kernel's default for a veth).
const UNDERLAY_MTU: u16 = 1500;

impl Cluster {
    /// Every pod: the deathstars, then the ships.
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.deathstars.iter().chain(&self.ships)
    }

    /// What to undo; a poisoned lock (a panic elsewhere) still gives it.
    pub(crate) fn undo(&self) -> std::sync::MutexGuard<'_, Teardown> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn ns(&self, pod: &str) -> String {
        format!("{}-{pod}", self.tag)
    }

    pub(crate) fn ip(&self, args: &[&str]) -> Result<()> {
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

    pub(crate) fn add_netns(&self, name: String) -> Result<()> {
        self.ip(&["netns", "add", &name])?;
        self.undo().netns.push(name.clone());
        self.ip(&["-n", &name, "link", "set", "lo", "up"])
    }

    /// Node `n`'s network namespace.
    pub(crate) fn node_ns(&self, n: usize) -> String {
        self.ns(source::NODES[n].name)
    }

    /// The nodes: a namespace each, IPv4 forwarding on, joined by the underlay
    /// (one veth pair, `ul0` at both ends, each holding its node's address).
    pub(crate) fn nodes(&self) -> Result<()> {
        for n in 0..source::NODES.len() {
            let ns = self.node_ns(n);
            self.add_netns(ns.clone())?;
            let out = Command::new("ip")
                .args(["netns", "exec", &ns, "sysctl", "-q", "-w"])
                .arg("net.ipv4.ip_forward=1")
                .output()
                .context("run sysctl")?;
            if !out.status.success() {
                bail!(
                    "enable forwarding in {ns}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        let (a, b) = (self.node_ns(0), self.node_ns(1));
        let ul = source::UNDERLAY;
        self.ip(&[
            "link", "add", ul, "netns", &a, "type", "veth", "peer", "name", ul, "netns", &b,
        ])?;
        for n in 0..source::NODES.len() {
            let ns = self.node_ns(n);
            let addr = format!("{}/24", source::NODES[n].ip);
            self.ip(&["-n", &ns, "addr", "add", &addr, "dev", ul])?;
            self.ip(&["-n", &ns, "link", "set", ul, "up"])?;
        }
        Ok(())
    }

    /// A pod's namespace on a routed veth, as a routed CNI interface plugin
    /// leaves it: `eth0` with the pod's /32 and the overlay's pod MTU, its
    /// default route via [`GATEWAY`] on-link; the host veth `lxc-NAME` in its
    /// node holding that gateway, and the node's route to the pod on it. The
    /// agent's tc programs sit on the host veth.
    pub(crate) fn pod_network(&self, p: &Pod) -> Result<()> {
        let (ns, node) = (self.ns(p.name), self.node_ns(p.node));
        self.add_netns(ns.clone())?;
        let host = self.host_veth(p);
        self.ip(&[
            "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &host, "netns",
            &node,
        ])?;
        let mtu = membrane_datapath::node::pod_mtu(self.overlay, UNDERLAY_MTU).to_string();
        self.ip(&[
            "-n",
            &node,
            "addr",
            "add",
            &format!("{GATEWAY}/32"),
            "dev",
            &host,
        ])?;
        self.ip(&["-n", &node, "link", "set", &host, "up"])?;
        self.ip(&[
            "-n",
            &node,
            "route",
            "add",
            &format!("{}/32", p.ip),
            "dev",
            &host,
        ])?;
        let addr = format!("{}/32", p.ip);
        self.ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
        self.ip(&["-n", &ns, "link", "set", "eth0", "mtu", &mtu, "up"])?;
        self.ip(&[
            "-n", &ns, "route", "add", "default", "via", GATEWAY, "dev", "eth0", "onlink",
        ])
    }

    /// Pod `p`'s host veth, in its node (at most 15 characters: the pods'
    /// names are short).
    pub(crate) fn host_veth(&self, p: &Pod) -> String {
        format!("lxc-{}", p.name)
    }

    /// `cmd` started in pod `pod` (its cgroup and namespace); `sh` and `ip
    /// netns exec` exec it, so the child is the process itself.
    pub(crate) fn in_pod(&self, pod: &str, cmd: &[&str]) -> Command {
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
    pub(crate) fn spawn(&self, pod: &str, cmd: &[&str], log: Option<&Path>) -> Result<()> {
        self.spawn_command(self.in_pod(pod, cmd), cmd, log)
    }

    /// Start `cmd` in `pod` with exactly the environment `env`, as a container
    /// runtime starts a container; its output goes to `log` or nowhere.
    pub(crate) fn spawn_with_env(
        &self,
        pod: &str,
        cmd: &[&str],
        env: &[(String, String)],
        log: Option<&Path>,
    ) -> Result<()> {
        let mut c = self.in_pod(pod, cmd);
        c.env_clear().envs(env.iter().map(|(k, v)| (k, v)));
        self.spawn_command(c, cmd, log)
    }

    fn spawn_command(&self, mut command: Command, cmd: &[&str], log: Option<&Path>) -> Result<()> {
        let (out, err) = match log {
            Some(p) => {
                let f =
                    std::fs::File::create(p).with_context(|| format!("create {}", p.display()))?;
                (Stdio::from(f.try_clone()?), Stdio::from(f))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("start {}", cmd[0]))?;
        self.undo().children.push(child);
        Ok(())
    }

    pub(crate) fn curl(&self, pod: &str, args: &[&str]) -> Result<std::process::Output> {
        self.curl_within(pod, 5, args)
    }

    /// `curl ARGS` in `pod`, giving up after `secs` seconds.
    fn curl_within(&self, pod: &str, secs: u32, args: &[&str]) -> Result<std::process::Output> {
        let secs = secs.to_string();
        let mut cmd = vec!["curl", "-sS", "--max-time", &secs];
        cmd.extend_from_slice(args);
        self.in_pod(pod, &cmd).output().context("run curl")
    }

    /// The last lines of every sidecar log, for an error (the logs go with
    /// the teardown).
    pub fn log_tails(&self) -> String {
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
    pub fn request(&self, pod: &str, method: &str, url: &str) -> Result<String> {
        self.request_within(pod, method, url, 5)
    }

    /// [`Cluster::request`], giving up after `secs` seconds.
    pub fn request_within(&self, pod: &str, method: &str, url: &str, secs: u32) -> Result<String> {
        let out = self.curl_within(pod, secs, &["-X", method, "-w", "\n%{http_code}", url])?;
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

pub(crate) fn is_root() -> bool {
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
