//! What the mini-cluster shows: the scenario's requests through the service
//! (step 6) and a policy edited live in the control plane's source (step 7).

use super::cluster::{Cluster, Pod};
use super::*;

impl Cluster {
    /// Step 6's requests: each request and what it got, where the landings
    /// landed, the datapaths' counters and the sidecars' verdicts.
    pub fn play(&self, deathstars: &[Pod], ships: &[Pod], service: SocketAddr) -> Result<()> {
        println!();
        let url = |path| format!("http://{service}{path}");
        for (ship, method, path) in [
            (&ships[0], "POST", "/v1/request-landing"),
            (&ships[0], "PUT", "/v1/exhaust-port"),
            (&ships[1], "POST", "/v1/request-landing"),
        ] {
            let label = format!("{} {method} {path}", ship.name);
            println!(
                "  {label:<40} {}",
                self.request(ship.name, method, &url(path))?
            );
        }
        // Which replica served each landing, from the sidecars' access logs
        // (a response's log line may come a moment after the response).
        let landed = |d: &Pod| {
            std::fs::read_to_string(self.dir.join(format!("{}.log", d.name)))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains(r#""type":"Response""#) && l.contains(r#""status":200"#))
                .count()
        };
        let settled = |n: usize| {
            let deadline = Instant::now() + Duration::from_secs(3);
            while deathstars.iter().map(landed).sum::<usize>() < n && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        // At least LANDINGS, and on until every replica (one per node) has had
        // one: the service picks per connection, so the tiefighter on node-1
        // lands on node-2's deathstar too (bounded: MAX_SERVICE_LANDINGS).
        let mut made = 1;
        while made < LANDINGS
            || (made < MAX_SERVICE_LANDINGS && {
                settled(made);
                deathstars.iter().any(|d| landed(d) == 0)
            })
        {
            self.request(ships[0].name, "POST", &url("/v1/request-landing"))?;
            made += 1;
        }
        settled(made);
        let per: Vec<String> = deathstars
            .iter()
            .map(|d| format!("{} {}", d.name, landed(d)))
            .collect();
        println!(
            "  {made} tiefighter landings through the service: {}",
            per.join(", ")
        );
        for d in deathstars.iter().filter(|d| d.node != ships[0].node) {
            println!(
                "  tiefighter ({}) landed on {} ({}) through the service {service}: {} landings",
                source::NODES[ships[0].node].name,
                d.name,
                source::NODES[d.node].name,
                landed(d)
            );
        }
        println!();
        // The counters of each pod's datapath, read from the pins the agent
        // made: the xwing's connect is not refused at its own egress (no
        // policy selects it) but at the deathstar's ingress, where sk_lookup
        // drops it.
        for p in ships.iter().chain(deathstars) {
            let dp = Datapath::open(self.pins_of(p)?)?;
            let connect = dp.counters_of("mb_connect4")?;
            let lookup = dp.counters_of("mb_sk_lookup")?;
            println!(
                "  datapath of {:<11} connects refused {}, inbound connections refused {}, handed to the sidecar {}",
                p.name, connect.refused, lookup.refused, lookup.redirected
            );
        }
        println!(
            "\n  verdicts in the access logs of the deathstars' sidecars (first of each kind):"
        );
        let mut shown = Vec::new();
        for d in deathstars {
            let text = std::fs::read_to_string(self.dir.join(format!("{}.log", d.name)))
                .unwrap_or_default();
            for l in text.lines() {
                for kind in [r#""type":"Response""#, r#""type":"Denied""#] {
                    if l.contains(kind) && !shown.contains(&kind) {
                        shown.push(kind);
                        println!("    {l}");
                    }
                }
            }
        }
        Ok(())
    }

    /// Step 7: the policy edited live where the control plane reads it,
    /// twice: first the sidecars' L7 rules (the tiefighter's PUT is allowed),
    /// then who may connect at all (the Alliance too: the agent's kernel maps
    /// and the sidecars). Each edit is timed until every deathstar enforces it.
    pub fn edit_policy(&self, deathstars: &[Pod], ships: &[Pod], source: &Path) -> Result<()> {
        step(&format!(
            "7. Live policy edits: {} in membrane-xds's source rewritten, timed until enforced",
            source::POLICY_FILE
        ));
        let put = source::l7_allowing_exhaust_port()?;
        self.timed_edit(
            "edit 1: also allow PUT /v1/exhaust-port (the sidecars' L7 rules)",
            source,
            &put,
            deathstars,
            (&ships[0], "PUT", "/v1/exhaust-port"),
        )?;
        self.timed_edit(
            "edit 2: admit the Alliance too (the agent's kernel maps, then the sidecars)",
            source,
            &source::admitting_the_alliance(&put)?,
            deathstars,
            (&ships[1], "POST", "/v1/request-landing"),
        )
    }

    /// One live edit: `text` replaces the policy file, and `request` is
    /// polled at each deathstar until its answer changes; the time from the
    /// edit to that answer is printed, then the request through the service.
    fn timed_edit(
        &self,
        title: &str,
        source: &Path,
        text: &str,
        deathstars: &[Pod],
        (ship, method, path): (&Pod, &str, &str),
    ) -> Result<()> {
        println!("  {title}");
        let ask = |ip: &str| self.request(ship.name, method, &format!("http://{ip}{path}"));
        // What an answer is, for "did it change": the status code, or "no"
        // for no response (whose text carries a varying time).
        let kind = |a: &str| a.split_whitespace().next().unwrap_or("").to_owned();
        // The answer before the edit is the one two requests in a row agree on (at most
        // five asked): one request that got no response must not pass for the old
        // policy's verdict. Seen once in a test run: a single request from the
        // tiefighter straight to deathstar-1 got none right after step 6, then 403.
        let mut before = Vec::new();
        for d in deathstars {
            let mut last = ask(d.ip)?;
            for _ in 0..4 {
                let next = ask(d.ip)?;
                let agreed = kind(&next) == kind(&last);
                last = next;
                if agreed {
                    break;
                }
            }
            before.push(last);
        }
        source::replace_file(source, source::POLICY_FILE, text)?;
        let edit = Instant::now();
        println!(
            "    rewrote {} (one rename, as kubectl apply changes an object)",
            source.join(source::POLICY_FILE).display()
        );
        // Each replica polled on its own thread, so neither's requests delay
        // the other's measurement. The time is that of the first response
        // with the new verdict (an upper bound); that of the last response
        // still with the old one, if any came after the edit, bounds it from
        // below.
        let limit = Duration::from_secs(15);
        let watch = |d: &Pod, before: &str| -> Result<(Option<u128>, u128, String)> {
            let mut last_old = None;
            loop {
                let got = ask(d.ip)?;
                let at = edit.elapsed();
                if kind(&got) != kind(before) {
                    return Ok((last_old, at.as_millis(), got));
                }
                if at > limit {
                    bail!(
                        "{} still enforced the old policy {} s after the edit{}",
                        d.name,
                        limit.as_secs(),
                        self.log_tails()
                    );
                }
                last_old = Some(at.as_millis());
            }
        };
        let seen: Vec<Result<(Option<u128>, u128, String)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = deathstars
                .iter()
                .zip(&before)
                .map(|(d, b)| scope.spawn(move || watch(d, b)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("a poller panicked")))
                })
                .collect()
        });
        for ((d, before), seen) in deathstars.iter().zip(&before).zip(seen) {
            let (last_old, new, got) = seen?;
            let before = if kind(before) == "no" {
                "no response"
            } else {
                before
            };
            let old = match last_old {
                Some(t) => format!("{before} until a response at {t} ms"),
                None => format!("{before} before the edit, not after"),
            };
            println!(
                "    {:<11} enforces it {new:>4} ms after the edit ({old}; now {got})",
                d.name
            );
        }
        let url = format!("http://{SERVICE}{path}");
        println!(
            "    {:<38} {}",
            format!("{} {method} {path}", ship.name),
            self.request(ship.name, method, &url)?
        );
        Ok(())
    }
}
