//! What the e2e tests drive on the mini-cluster beyond the demo's steps: the policy in
//! the control plane's source applied, changed and deleted, and a deathstar's sidecar
//! upgraded in place (hot restart).

use super::cluster::{Cluster, Pod};
use super::*;

/// How long a sidecar upgrade may take to hand its listeners over.
const UPGRADE_WAIT: Duration = Duration::from_secs(30);

impl Cluster {
    /// The control plane's policy file replaced with `text` (one rename, as `kubectl
    /// apply` changes an object): applied when there was none, changed when there was.
    pub fn set_policy(&self, text: &str) -> Result<()> {
        source::replace_file(&self.source(), source::POLICY_FILE, text)
    }

    /// The control plane's policy file removed (`kubectl delete`): no policy selects
    /// the deathstars any more.
    pub fn delete_policy(&self) -> Result<()> {
        let p = self.source().join(source::POLICY_FILE);
        std::fs::remove_file(&p).with_context(|| format!("remove {}", p.display()))
    }

    /// The restart epoch deathstar `d`'s serving sidecar reports (its admin
    /// `/server_info`, in the pod): 0 for the first, one more per upgrade.
    pub fn sidecar_epoch(&self, d: &Pod) -> Result<u64> {
        let out = self.curl(d.name, &["http://127.0.0.1:15000/server_info"])?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "{}'s sidecar's /server_info: {:?}",
                d.name,
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        v["command_line_options"]["restart_epoch"]
            .as_u64()
            .with_context(|| format!("no restart_epoch in {}'s /server_info: {v}", d.name))
    }

    /// Deathstar `d`'s sidecar upgraded: a successor with the same flags takes the
    /// listening sockets over through the handover socket (once it has its policy
    /// from the control plane), and the old one drains and exits. Returns once the
    /// successor serves (the epoch went up by one).
    pub fn upgrade_sidecar(&self, d: &Pod) -> Result<u64> {
        let before = self.sidecar_epoch(d)?;
        let log = self.dir.join(format!("{}-epoch{}.log", d.name, before + 1));
        self.run_proxy_container(&self.bins, d, &log)?;
        let deadline = Instant::now() + UPGRADE_WAIT;
        loop {
            if self.sidecar_epoch(d).is_ok_and(|e| e == before + 1) {
                return Ok(before + 1);
            }
            if Instant::now() > deadline {
                bail!(
                    "{}'s sidecar was not taken over by its successor in {} s{}",
                    d.name,
                    UPGRADE_WAIT.as_secs(),
                    self.log_tails()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The L7 policy with a second HTTP rule allowing `PUT /v1/exhaust-port` (the
/// demo's first live edit).
pub fn l7_allowing_exhaust_port() -> Result<String> {
    source::l7_allowing_exhaust_port()
}

/// `policy` (one of the L7 policies) admitting the Alliance too (the demo's second
/// live edit).
pub fn admitting_the_alliance(policy: &str) -> Result<String> {
    source::admitting_the_alliance(policy)
}
