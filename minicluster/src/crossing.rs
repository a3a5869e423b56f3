//! Step 6 across the nodes: what the receiving node's packet path does with a
//! connection that crossed the underlay. The xwing on node-1 tries the
//! deathstar on node-2 directly; node-2's to-container program drops it on the
//! source identity the tunnel carried (natively: node-2's ipcache), node-2's
//! `membrane monitor` shows the drop with both identities, and tshark on the
//! underlay decodes the tunnel header, its VNI the xwing's identity.

use super::cluster::{Cluster, Pod};
use super::*;
use membrane_datapath::api::Request;
use membrane_datapath::node::Overlay;
use std::sync::mpsc;

/// How long the demo waits for the monitor's drop line and for tshark.
const WAIT: Duration = Duration::from_secs(20);

impl Cluster {
    /// `membrane monitor --type drop -o json` on node `n`'s agent, its lines sent to the
    /// receiver as they come (a thread reads them); the caller kills the child.
    pub(crate) fn follow_drops(&self, n: usize) -> Result<(Child, mpsc::Receiver<String>)> {
        let mut monitor = Command::new(&self.bins.membrane)
            .args(["monitor", "--type", "drop", "-o", "json", "--socket"])
            .arg(self.agent_socket(n))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("start membrane monitor")?;
        let stdout = monitor.stdout.take().context("membrane monitor stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok((monitor, rx))
    }

    /// The xwing's connection to `deathstar` (on the other node) dropped by
    /// that node's tc program: the monitor line and the underlay's decode.
    pub fn across_nodes(&self, deathstar: &Pod, xwing: &Pod) -> Result<()> {
        let (from, to) = (source::NODES[xwing.node], source::NODES[deathstar.node]);
        println!(
            "\n  across the nodes ({}): {} ({}) -> {} ({}) directly, dropped by {}'s tc program",
            self.overlay, xwing.name, from.name, deathstar.name, to.name, to.name
        );
        let identity = |p: &Pod| -> Result<u64> {
            let e = self.agent(
                p.node,
                &Request::EndpointGet {
                    endpoint: format!("default/{}", p.name),
                },
            )?;
            e["identity"]
                .as_u64()
                .with_context(|| format!("the agent names no identity for {}: {e}", p.name))
        };
        let (src_id, dst_id) = (identity(xwing)?, identity(deathstar)?);
        let url = format!("http://{}/v1/request-landing", deathstar.ip);

        // `membrane monitor` on the receiving node's agent, started before the
        // connection is tried so that the drop cannot be missed.
        let (mut monitor, rx) = self.follow_drops(deathstar.node)?;
        let wanted = |line: &str| {
            serde_json::from_str::<serde_json::Value>(line).is_ok_and(|ev| {
                ev["program"] == "to-container"
                    && ev["src_identity"].as_u64() == Some(src_id)
                    && ev["dst_identity"].as_u64() == Some(dst_id)
            })
        };
        let mut drop_line = None;
        let deadline = Instant::now() + WAIT;
        let mut answer = String::new();
        while drop_line.is_none() && Instant::now() < deadline {
            answer = self.request_within(xwing.name, "POST", &url, 2)?;
            while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                if wanted(&line) {
                    drop_line = Some(line);
                    break;
                }
            }
        }
        let _ = monitor.kill();
        let _ = monitor.wait();
        let label = format!("{} POST {url}", xwing.name);
        println!("  {label:<40} {answer}");
        let line = drop_line.with_context(|| {
            format!(
                "{}'s monitor showed no drop of {} (identity {src_id}) to {} (identity {dst_id}) in {} s{}",
                to.name,
                xwing.name,
                deathstar.name,
                WAIT.as_secs(),
                self.log_tails()
            )
        })?;
        println!(
            "  $ membrane monitor --type drop -o json --socket {}   # {}",
            self.agent_socket(deathstar.node).display(),
            to.name
        );
        println!("    {line}");
        println!(
            "  identities: {} {src_id} -> {} {dst_id}",
            xwing.name, deathstar.name
        );
        self.decode_underlay(deathstar, xwing, &url, src_id)
    }

    /// tshark on the receiving node's underlay device while the xwing tries
    /// again: the tunnel's decode (VNI = the sender's identity), or why there is
    /// none to show.
    fn decode_underlay(&self, deathstar: &Pod, xwing: &Pod, url: &str, src_id: u64) -> Result<()> {
        let (filter, vni) = match self.overlay {
            Overlay::Vxlan => ("udp dst port 4789", "vxlan.vni"),
            Overlay::Geneve => ("udp dst port 6081", "geneve.vni"),
            Overlay::Native => {
                println!("  native routing: no tunnel header on the underlay to decode");
                return Ok(());
            }
        };
        let found = Command::new("tshark")
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            println!("  (no tshark here: scripts/install-deps.sh installs it)");
            return Ok(());
        }
        let node = self.node_ns(deathstar.node);
        let mut tshark = Command::new("ip")
            .args(["netns", "exec", &node, "tshark", "-n", "-l", "-i"])
            .arg(source::UNDERLAY)
            .args(["-f", filter, "-c", "1", "-a", "duration:20", "-T", "fields"])
            .args(["-e", vni, "-e", "ip.src", "-e", "ip.dst"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("start tshark")?;
        // Its "Capturing on" line says the capture runs; the pipe is drained
        // until it exits (a closed pipe would kill it).
        let stderr = tshark.stderr.take().context("tshark stderr")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                if line.contains("Capturing on") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(WAIT).is_err() {
            let _ = tshark.kill();
            let _ = tshark.wait();
            bail!("tshark did not start capturing in {} s", WAIT.as_secs());
        }
        self.request_within(xwing.name, "POST", url, 2)?;
        let mut out = String::new();
        tshark
            .stdout
            .take()
            .context("tshark stdout")?
            .read_to_string(&mut out)?;
        tshark.wait()?;
        let fields: Vec<&str> = out.lines().next().unwrap_or("").split('\t').collect();
        // tshark prints Geneve's VNI in hex, VXLAN's in decimal.
        let decoded = fields[0].strip_prefix("0x").map_or_else(
            || fields[0].parse::<u64>().ok(),
            |h| u64::from_str_radix(h, 16).ok(),
        );
        let (outer, inner) = match (fields.get(1), fields.get(2)) {
            (Some(s), Some(d)) => (s.replace(',', " / "), d.replace(',', " / ")),
            _ => bail!("tshark decoded nothing on {node}'s underlay: {out:?}"),
        };
        let tunnel = match self.overlay {
            Overlay::Geneve => "Geneve",
            _ => "VXLAN",
        };
        println!(
            "  $ tshark -i {} -f '{filter}' -T fields -e {vni} -e ip.src -e ip.dst   # {}",
            source::UNDERLAY,
            source::NODES[deathstar.node].name
        );
        println!("    {}", out.lines().next().unwrap_or(""));
        let vni = decoded.map_or_else(|| format!("{:?}", fields[0]), |v| v.to_string());
        let whose = if decoded == Some(src_id) {
            format!("= the {}'s identity", xwing.name)
        } else {
            format!("!= the {}'s identity {src_id}", xwing.name)
        };
        println!("  {tunnel} VNI {vni} {whose}; outer/inner sources {outer}; outer/inner destinations {inner}");
        Ok(())
    }
}
