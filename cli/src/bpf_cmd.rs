//! `membrane bpf ...`: what the node's datapath holds, read from its pinned maps.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use membrane_datapath::{Datapath, DEFAULT_BPFFS_DIR};
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::policy_cmd::Output;

#[derive(Debug, Subcommand)]
pub enum BpfCommand {
    /// The sockmap: app ↔ sidecar socket pairs spliced by sk_msg.
    #[command(subcommand)]
    Sockmap(SockmapCommand),
    /// Services balanced at connect: frontends and their backends.
    #[command(subcommand)]
    Lb(LbCommand),
    /// An endpoint's L3/L4 policy map, read back from the kernel by the node agent.
    #[command(subcommand)]
    Policy(crate::agent_cmd::PolicyMapCommand),
    /// The packet path's conntrack table (tc), read by the node agent.
    #[command(subcommand)]
    Ct(crate::agent_cmd::CtCommand),
    /// The packet path's counters: forwards and drops by reason, read by the node agent.
    #[command(subcommand)]
    Tc(crate::agent_cmd::TcCommand),
}

#[derive(Debug, Subcommand)]
pub enum LbCommand {
    /// List the services and their backends.
    List(ListArgs),
}

#[derive(Debug, Serialize)]
struct Service {
    frontend: String,
    backends: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum SockmapCommand {
    /// List the spliced socket pairs.
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Where membrane-agent pinned the datapath.
    #[arg(long, env = "MEMBRANE_BPFFS", default_value = DEFAULT_BPFFS_DIR)]
    bpffs: PathBuf,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    output: Output,
}

#[derive(Debug, Serialize)]
struct Pair {
    a_local: String,
    a_remote: String,
    b_local: String,
    b_remote: String,
}

pub fn run(cmd: BpfCommand) -> Result<ExitCode> {
    match cmd {
        BpfCommand::Sockmap(SockmapCommand::List(a)) => sockmap_list(a),
        BpfCommand::Lb(LbCommand::List(a)) => lb_list(a),
        BpfCommand::Policy(c) => crate::agent_cmd::policy_map(c),
        BpfCommand::Ct(c) => crate::agent_cmd::ct(c),
        BpfCommand::Tc(c) => crate::agent_cmd::tc(c),
    }
}

fn lb_list(a: ListArgs) -> Result<ExitCode> {
    let dp = Datapath::open(&a.bpffs).with_context(|| format!("--bpffs {}", a.bpffs.display()))?;
    let services: Vec<Service> = dp
        .services()
        .context("reading the service maps")?
        .into_iter()
        .map(|(f, b)| Service {
            frontend: f.to_string(),
            backends: b.iter().map(|x| x.to_string()).collect(),
        })
        .collect();
    match a.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&services)?),
        Output::Text => {
            println!("{:<24} BACKEND", "SERVICE");
            for s in &services {
                if s.backends.is_empty() {
                    println!("{:<24} (none: connects refused)", s.frontend);
                }
                for b in &s.backends {
                    println!("{:<24} {b}", s.frontend);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn sockmap_list(a: ListArgs) -> Result<ExitCode> {
    let dp = Datapath::open(&a.bpffs).with_context(|| format!("--bpffs {}", a.bpffs.display()))?;
    let pairs: Vec<Pair> = dp
        .spliced_pairs()
        .context("reading the sockmap")?
        .into_iter()
        .map(|(x, y)| Pair {
            a_local: x.local.to_string(),
            a_remote: x.remote.to_string(),
            b_local: y.local.to_string(),
            b_remote: y.remote.to_string(),
        })
        .collect();
    match a.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&pairs)?),
        Output::Text => {
            for p in &pairs {
                println!(
                    "{} -> {}  <=>  {} -> {}",
                    p.a_local, p.a_remote, p.b_local, p.b_remote
                );
            }
            println!("{} spliced pairs", pairs.len());
        }
    }
    Ok(ExitCode::SUCCESS)
}
