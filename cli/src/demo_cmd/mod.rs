//! `membrane demo`: the embedded default, Cilium's Star Wars scenario step by step.
//!
//! Steps 1-5 ask the policy engine about every request of the scenario (the
//! policies are compiled into this binary, so the verb works from anywhere).
//! Step 6 plays the L7 policy live on a two-node mini-cluster run as a
//! cluster runs it (see [`Cluster`]; `--overlay vxlan|geneve|native` picks
//! how the nodes' pods reach each other): membrane-xds on node-1 reading a
//! directory of Kubernetes YAML (the pods, the deathstar service, the nodes,
//! the policy), an agent per node (`membrane-agent run --xds-address`) fed by
//! it, the pods brought up through `membrane-cni ADD`, which registers them
//! with their node's agent, two deathstar replicas (one per node) behind a
//! service address, and the deathstars' membrane-proxy sidecars fed over xDS
//! under Istio node ids. The agents program every map from the control
//! plane's resources; the demo writes none. The tiefighter on node-1 lands on
//! node-2's deathstar through the service; the xwing is dropped by the
//! receiving node's tc program (its monitor line and the underlay's tunnel
//! header shown); the sidecars land the tiefighter and answer its PUT with
//! 403. Step 7 edits the policy file live and times its arrival at each
//! sidecar; step 8 kills and restarts node-1's agent while the tiefighter
//! keeps landing. The binaries are
//! found next to this one. It needs root, `ip`, `nsenter` and `curl`, and
//! says so and skips itself without them.

use anyhow::{Context, Result};
use clap::Args;
use membrane_datapath::node::Overlay;
use membrane_minicluster::{
    compile_quietly, step, trace_for, Bins, Cluster, L3_L4, L7, TIEFIGHTER, XWING,
};
use membrane_policy::rule::CompiledPolicy;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

mod web;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Only ask the policy engine (steps 1-5); no network namespace, no sidecar.
    #[arg(long)]
    no_live: bool,
    /// How pod traffic crosses between the live step's two nodes: vxlan, geneve
    /// or native (routes, no tunnel).
    #[arg(long, default_value = "vxlan")]
    overlay: Overlay,
    /// After the live Star Wars scenario (step 6), keep the mini-cluster up and its web
    /// page (the relay's service map and live flows) served until Ctrl-C.
    #[arg(long, conflicts_with = "no_live")]
    stay: bool,
    /// Where `--stay` serves the web page (port 0: any free port; the address is printed).
    #[arg(long, default_value = membrane_relay::web::DEFAULT_ADDRESS, requires = "stay")]
    web_address: SocketAddr,
    /// Serve the deathstar's API on this address and nothing else (what step 6
    /// runs inside its namespace).
    #[arg(long, hide = true)]
    serve_deathstar: Option<SocketAddr>,
}

pub fn run(a: DemoArgs) -> Result<ExitCode> {
    if let Some(addr) = a.serve_deathstar {
        serve_deathstar(addr)?;
        return Ok(ExitCode::SUCCESS);
    }
    step("1. The policies validate");
    let l3 = compile(L3_L4)?;
    let l7 = compile(L7)?;

    step("2. No policy: everyone lands");
    ask("tiefighter -> deathstar:80", &[], TIEFIGHTER, None)?;
    ask("xwing      -> deathstar:80", &[], XWING, None)?;

    step(&format!(
        "3. L3/L4 policy ({}): only the Empire on 80/TCP",
        L3_L4.0
    ));
    ask("tiefighter -> deathstar:80", &l3, TIEFIGHTER, None)?;
    ask("xwing      -> deathstar:80 (dropped)", &l3, XWING, None)?;

    step(&format!("4. L7 policy ({}): landing only", L7.0));
    let landing = Some(("POST", "/v1/request-landing"));
    let exhaust = Some(("PUT", "/v1/exhaust-port"));
    ask(
        "tiefighter POST /v1/request-landing",
        &l7,
        TIEFIGHTER,
        landing,
    )?;
    ask(
        "tiefighter PUT /v1/exhaust-port (403 Access denied)",
        &l7,
        TIEFIGHTER,
        exhaust,
    )?;
    ask(
        "xwing POST /v1/request-landing (dropped at L3)",
        &l7,
        XWING,
        landing,
    )?;

    step("5. Why: the full trace of the denied PUT");
    let r = trace_for(&l7, TIEFIGHTER, exhaust)?;
    println!("{}", r.explanation);

    if a.no_live {
        return Ok(ExitCode::SUCCESS);
    }
    let me = std::env::current_exe().context("find this binary")?;
    // The mini-cluster's binaries are beside this one.
    match Cluster::prerequisites(me.parent().unwrap_or(Path::new("/"))) {
        Err(why) if a.stay => anyhow::bail!("--stay needs the live step, which cannot run: {why}"),
        Err(why) => step(&format!("6. (skipped: {why})")),
        Ok(bins) if a.stay => stay(&bins, a.overlay, a.web_address)?,
        Ok(bins) => Cluster::run(&bins, a.overlay)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Step 6 with the web page up from the start (it sees the scenario's traffic), then the
/// page's address, then nothing until SIGINT or SIGTERM, which the mini-cluster
/// answers by removing everything it made and exiting.
fn stay(bins: &Bins, overlay: Overlay, web_address: SocketAddr) -> Result<()> {
    let page = web::start(web_address)?;
    let c = Cluster::start(bins, overlay)?;
    web::follow_relay(&c, &page.feed)?;
    println!(
        "  the mesh's web page (service map, live flows): http://{}/",
        page.addr
    );
    c.star_wars()?;
    step("7. The mesh, live (membrane demo --stay)");
    println!(
        "  the policy stays the Star Wars one (the live edits and the agent restart of a \
         run without --stay are left out)"
    );
    println!("  service map and latest flows: http://{}/", page.addr);
    println!("  the mini-cluster stays up; Ctrl-C stops it and removes everything it made");
    std::io::stdout().flush()?;
    loop {
        // The signal handler the mini-cluster installed ends the process.
        std::thread::park();
    }
}

/// Every object of an embedded policy file, compiled, each said valid; an
/// invalid one is an error.
fn compile(file: (&str, &str)) -> Result<Vec<Arc<CompiledPolicy>>> {
    let out = compile_quietly(file)?;
    for p in &out {
        println!("  {}: {} {} valid", file.0, p.key.kind.as_str(), p.key);
    }
    Ok(out)
}

/// One request of the scenario: one line with the verdict and what decided it.
fn ask(
    label: &str,
    policies: &[Arc<CompiledPolicy>],
    src: &str,
    http: Option<(&str, &str)>,
) -> Result<()> {
    let r = trace_for(policies, src, http)?;
    let why = match (&r.decided_by, r.verdict) {
        (Some(d), _) => format!("{} {}", d.policy, d.rule),
        (None, "denied") => "default deny".into(),
        (None, _) => "no policy selects the deathstar".into(),
    };
    println!("  {label:<52} {:<8} ({why})", r.verdict);
    Ok(())
}

/// The deathstar's API as the scenario's service answers it: POST
/// /v1/request-landing lands, PUT /v1/exhaust-port explodes, GET says it is
/// alive, anything else is 404. One thread per connection, HTTP/1.1 keep-alive.
fn serve_deathstar(addr: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        std::thread::spawn(move || {
            let _ = deathstar_conn(conn);
        });
    }
    Ok(())
}

fn deathstar_conn(conn: TcpStream) -> std::io::Result<()> {
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let (method, path) = (method.to_owned(), path.to_owned());
        let mut length = 0usize;
        let mut close = false;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "content-length" {
                    length = v.parse().unwrap_or(0);
                } else if k == "connection" && v.eq_ignore_ascii_case("close") {
                    close = true;
                }
            }
        }
        std::io::copy(&mut (&mut r).take(length as u64), &mut std::io::sink())?;
        let (code, body) = match (method.as_str(), path.as_str()) {
            ("POST", "/v1/request-landing") => ("200 OK", "Ship landed\n"),
            ("PUT", "/v1/exhaust-port") => {
                ("503 Service Unavailable", "Panic: deathstar exploded\n")
            }
            ("GET", _) => ("200 OK", "Deathstar: alive\n"),
            _ => ("404 Not Found", "Not found\n"),
        };
        write!(
            w,
            "HTTP/1.1 {code}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        w.flush()?;
        if close {
            return Ok(());
        }
    }
}
