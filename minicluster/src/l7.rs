//! Step 6's sidecar verdict in the node's event stream: the tiefighter's `PUT
//! /v1/exhaust-port` to a deathstar passes L3/L4 and is denied by the deathstar's
//! sidecar, which reports it to its node's agent (the records socket); that node's
//! `membrane monitor` shows it beside the packet path's drops, with the rule that
//! decided and both pods.

use super::cluster::{Cluster, Pod};
use super::*;

/// How long the demo waits for the sidecar's record.
const WAIT: Duration = Duration::from_secs(20);

impl Cluster {
    /// The tiefighter's denied request to `deathstar`, as `deathstar`'s node's monitor
    /// shows it (an `l7` event from the sidecar), or an error when it never comes.
    pub fn l7_beside(&self, deathstar: &Pod, tiefighter: &Pod) -> Result<serde_json::Value> {
        let to = source::NODES[deathstar.node];
        let url = format!("http://{}/v1/exhaust-port", deathstar.ip);
        let (mut monitor, rx) = self.follow_drops(deathstar.node)?;
        let wanted = |line: &str| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .filter(|ev| {
                    ev["type"] == "l7"
                        && ev["verdict"] == "denied"
                        && ev["l7"]["path"] == "/v1/exhaust-port"
                        && ev["dst_pod"] == format!("default/{}", deathstar.name)
                })
        };
        let mut found = None;
        let mut answer = String::new();
        let deadline = Instant::now() + WAIT;
        // Again until seen: the monitor subscribes and the sidecar connects meanwhile.
        while found.is_none() && Instant::now() < deadline {
            answer = self.request_within(tiefighter.name, "PUT", &url, 2)?;
            while let Ok(line) = rx.recv_timeout(Duration::from_millis(300)) {
                if let Some(ev) = wanted(&line) {
                    found = Some((line, ev));
                    break;
                }
            }
        }
        let _ = monitor.kill();
        let _ = monitor.wait();
        let (line, ev) = found.with_context(|| {
            format!(
                "{}'s monitor showed no sidecar record of {} PUT {url} in {} s{}",
                to.name,
                tiefighter.name,
                WAIT.as_secs(),
                self.log_tails()
            )
        })?;
        println!(
            "\n  the sidecar's verdict in the same stream: {} PUT {url}   {answer}",
            tiefighter.name
        );
        println!(
            "  $ membrane monitor --type drop -o json --socket {}   # {}",
            self.agent_socket(deathstar.node).display(),
            to.name
        );
        println!("    {line}");
        println!(
            "  rule: {}",
            ev["l7"]["rule"].as_str().unwrap_or("(none: default deny)")
        );
        Ok(ev)
    }
}
