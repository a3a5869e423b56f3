//! What the mini-cluster does to and in its pods: the node and pod network namespaces,
//! processes inside a pod, readiness and requests, and teardown on
//! drop.

use super::cluster::{Cluster, Pod, Teardown, NODE_BRIDGE};
use super::*;

impl Cluster {
    /// What to undo; a poisoned lock (a panic elsewhere) still gives it.
    pub(super) fn undo(&self) -> std::sync::MutexGuard<'_, Teardown> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn ns(&self, pod: &str) -> String {
        format!("{}-{pod}", self.tag)
    }

    pub(super) fn ip(&self, args: &[&str]) -> Result<()> {
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

    pub(super) fn add_netns(&self, name: String) -> Result<()> {
        self.ip(&["netns", "add", &name])?;
        self.undo().netns.push(name.clone());
        self.ip(&["-n", &name, "link", "set", "lo", "up"])
    }

    /// The node: a namespace holding the bridge every pod is plugged into.
    pub(super) fn node(&self) -> Result<()> {
        let node = self.ns("node");
        self.add_netns(node.clone())?;
        self.ip(&["-n", &node, "link", "add", "br0", "type", "bridge"])?;
        self.ip(&["-n", &node, "addr", "add", NODE_BRIDGE, "dev", "br0"])?;
        self.ip(&["-n", &node, "link", "set", "br0", "up"])
    }

    /// A pod's namespace, with `eth0` on the node's bridge.
    pub(super) fn pod_network(&self, p: &Pod) -> Result<()> {
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

    /// `cmd` started in pod `pod` (its cgroup and namespace); `sh` and `ip
    /// netns exec` exec it, so the child is the process itself.
    pub(super) fn in_pod(&self, pod: &str, cmd: &[&str]) -> Command {
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
    pub(super) fn spawn(&self, pod: &str, cmd: &[&str], log: Option<&Path>) -> Result<()> {
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

    pub(super) fn curl(&self, pod: &str, args: &[&str]) -> Result<std::process::Output> {
        let mut cmd = vec!["curl", "-sS", "--max-time", "5"];
        cmd.extend_from_slice(args);
        self.in_pod(pod, &cmd).output().context("run curl")
    }

    /// The deathstar and its sidecar answer, or an error after 10 s.
    pub(super) fn wait_ready(&self, pod: &str) -> Result<()> {
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
    pub(super) fn log_tails(&self) -> String {
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
    pub(super) fn request(&self, pod: &str, method: &str, url: &str) -> Result<String> {
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

pub(super) fn is_root() -> bool {
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
