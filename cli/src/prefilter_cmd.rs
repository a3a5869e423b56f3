//! `membrane prefilter add|delete|list`: the node's XDP prefilter (source prefixes dropped
//! on the underlay device before the stack), asked of and changed through the node agent's
//! socket. A request with one bad CIDR is refused whole by the agent; the deny set stays.
//! The node denies the union of these entries and the control plane's cluster-wide
//! `PrefilterDenyList` objects; `list` shows each prefix's source (`cli`, `control-plane`
//! with the lists, or both), and `delete` refuses a prefix only a deny list holds.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use membrane_datapath::api::Request;
use serde_json::Value;

use crate::agent_cmd::{ask_agent, cell, print_reply, AgentArgs};

/// `membrane prefilter ...`.
#[derive(Debug, Subcommand)]
pub enum PrefilterCommand {
    /// Deny packets from these CIDRs (or addresses) on the node's underlay device.
    Add(Cidrs),
    /// Stop denying CIDRs added with `add` (a control-plane deny list's are deleted there).
    Delete(Cidrs),
    /// The denied prefixes, where each comes from, the device, the XDP mode and the
    /// counters.
    List(AgentArgs),
}

/// CIDRs and where the agent is.
#[derive(Debug, Args)]
pub struct Cidrs {
    /// `10.0.0.0/8`, `2001:db8::/32`, or an address (its host prefix).
    #[arg(required = true)]
    cidrs: Vec<String>,
    #[command(flatten)]
    args: AgentArgs,
}

pub fn run(cmd: PrefilterCommand) -> Result<ExitCode> {
    let (req, args) = match cmd {
        PrefilterCommand::Add(c) => (Request::PrefilterAdd { cidrs: c.cidrs }, c.args),
        PrefilterCommand::Delete(c) => (Request::PrefilterDelete { cidrs: c.cidrs }, c.args),
        PrefilterCommand::List(a) => (Request::PrefilterList, a),
    };
    let v = ask_agent(&args, &req)?;
    print_reply(&args, &v, table)
}

fn table(v: &Value) {
    println!("device {}  mode {}", cell(&v["device"]), cell(&v["mode"]));
    println!("{:<44} SOURCE", "CIDR");
    for e in v["entries"].as_array().into_iter().flatten() {
        let lists: Vec<&str> = e["lists"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if lists.is_empty() {
            println!("{:<44} {}", cell(&e["cidr"]), cell(&e["source"]));
        } else {
            println!(
                "{:<44} {} ({})",
                cell(&e["cidr"]),
                cell(&e["source"]),
                lists.join(", ")
            );
        }
    }
    let s = &v["stats"];
    println!(
        "passed {}  denied IPv4 {}  denied IPv6 {}  malformed {}  dropped bytes {}",
        cell(&s["passed"]),
        cell(&s["denied_v4"]),
        cell(&s["denied_v6"]),
        cell(&s["malformed"]),
        cell(&s["dropped_bytes"])
    );
}
