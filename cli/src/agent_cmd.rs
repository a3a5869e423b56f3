//! `membrane status|endpoint|identity|service` and `membrane bpf policy get|ct list|tc
//! stats`: what the node
//! daemon (`membrane-agent run --xds-address`) enforces, asked over its socket. Tables by
//! default, the daemon's JSON with `-o json`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use membrane_datapath::api::{self, Request};
use serde_json::Value;

use crate::policy_cmd::Output;

/// Where the agent is and how to print its answer.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The node agent's API socket.
    #[arg(long, env = "MEMBRANE_AGENT_SOCKET", default_value = api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    output: Output,
}

/// `membrane endpoint ...`.
#[derive(Debug, Subcommand)]
pub enum EndpointCommand {
    /// The node's endpoints: identity, addresses, policy revision in force.
    List(AgentArgs),
    /// One endpoint in full.
    Get {
        /// `NAMESPACE/POD`.
        endpoint: String,
        #[command(flatten)]
        args: AgentArgs,
    },
}

/// `membrane identity ...`.
#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// The ipcache: address or prefix → security identity, as the kernel holds it.
    List(AgentArgs),
}

/// `membrane service ...`.
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// The service frontends and their backends, as the control plane sent them.
    List(AgentArgs),
}

/// `membrane bpf policy ...`.
#[derive(Debug, Subcommand)]
pub enum PolicyMapCommand {
    /// One endpoint's policy map, read back from the kernel.
    Get {
        /// `NAMESPACE/POD`.
        endpoint: String,
        #[command(flatten)]
        args: AgentArgs,
    },
}

/// `membrane bpf ct ...`.
#[derive(Debug, Subcommand)]
pub enum CtCommand {
    /// The tracked flows: endpoint, direction, tuple, state, remote identity, counters.
    List(AgentArgs),
}

/// `membrane bpf tc ...`.
#[derive(Debug, Subcommand)]
pub enum TcCommand {
    /// Packets and bytes forwarded and dropped, by reason, summed over CPUs.
    Stats(AgentArgs),
}

/// `req` to the agent `args` names; its error as an error.
pub(crate) fn ask_agent(args: &AgentArgs, req: &Request) -> Result<Value> {
    ask(&args.socket, req)
}

/// The reply as `args` asks: JSON, or `table`.
pub(crate) fn print_reply(
    args: &AgentArgs,
    v: &Value,
    table: impl FnOnce(&Value),
) -> Result<ExitCode> {
    print(args.output, v, table)
}

fn ask(socket: &Path, req: &Request) -> Result<Value> {
    let reply = api::request(socket, req, Duration::from_secs(10)).with_context(|| {
        format!(
            "--socket {}: is the node agent (membrane-agent run --xds-address) running?",
            socket.display()
        )
    })?;
    if let Some(e) = reply.get("error") {
        bail!("the agent says: {}", e.as_str().unwrap_or_default());
    }
    Ok(reply)
}

/// A JSON value as a table cell: strings bare, lists comma-separated, null as `-`.
pub(crate) fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => {
            if a.is_empty() {
                "-".into()
            } else {
                a.iter().map(cell).collect::<Vec<_>>().join(",")
            }
        }
        other => other.to_string(),
    }
}

fn print(output: Output, v: &Value, table: impl FnOnce(&Value)) -> Result<ExitCode> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(v)?),
        Output::Text => table(v),
    }
    Ok(ExitCode::SUCCESS)
}

/// `key: value` lines of an object, nested objects flattened with dots.
fn key_values(prefix: &str, v: &Value) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                let k = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                key_values(&k, v);
            }
        }
        other => println!("{prefix:<32} {}", cell(other)),
    }
}

/// `membrane status`.
pub fn status(a: AgentArgs) -> Result<ExitCode> {
    let v = ask(&a.socket, &Request::Status)?;
    print(a.output, &v, |v| key_values("", v))
}

/// `membrane endpoint ...`.
pub fn endpoint(cmd: EndpointCommand) -> Result<ExitCode> {
    match cmd {
        EndpointCommand::List(a) => {
            let v = ask(&a.socket, &Request::EndpointList)?;
            print(a.output, &v, |v| {
                println!(
                    "{:<32} {:>9} {:<28} {:>9} {:<8} STATE",
                    "ENDPOINT", "IDENTITY", "IPS", "REVISION", "SIDECAR"
                );
                for e in v.as_array().into_iter().flatten() {
                    let state = match &e["state"]["error"] {
                        Value::String(err) => format!("error: {err}"),
                        _ if e["state"]["applied_revision"].is_null() => {
                            "no policy yet: denied".into()
                        }
                        _ => "enforcing".into(),
                    };
                    println!(
                        "{:<32} {:>9} {:<28} {:>9} {:<8} {state}",
                        cell(&e["endpoint"]),
                        cell(&e["identity"]),
                        cell(&e["ips"]),
                        cell(&e["state"]["applied_revision"]),
                        cell(&e["sidecar"]),
                    );
                }
            })
        }
        EndpointCommand::Get { endpoint, args } => {
            let v = ask(&args.socket, &Request::EndpointGet { endpoint })?;
            print(args.output, &v, |v| key_values("", v))
        }
    }
}

/// `membrane identity list`.
pub fn identity(cmd: IdentityCommand) -> Result<ExitCode> {
    let IdentityCommand::List(a) = cmd;
    let v = ask(&a.socket, &Request::IdentityList)?;
    print(a.output, &v, |v| {
        println!("{:<44} {:<10} TUNNEL", "PREFIX", "IDENTITY");
        for e in v["entries"].as_array().into_iter().flatten() {
            println!(
                "{:<44} {:<10} {}",
                cell(&e["prefix"]),
                cell(&e["identity"]),
                cell(&e["tunnel"])
            );
        }
    })
}

/// `membrane service list`.
pub fn service(cmd: ServiceCommand) -> Result<ExitCode> {
    let ServiceCommand::List(a) = cmd;
    let v = ask(&a.socket, &Request::ServiceList)?;
    print(a.output, &v, |v| {
        println!(
            "{:<40} {:<24} {:>5} BACKENDS",
            "SERVICE", "FRONTEND", "PROTO"
        );
        for s in v.as_array().into_iter().flatten() {
            println!(
                "{:<40} {:<24} {:>5} {}",
                cell(&s["name"]),
                cell(&s["frontend"]),
                cell(&s["protocol"]),
                cell(&s["backends"])
            );
        }
    })
}

/// `membrane bpf policy get NS/POD`.
pub fn policy_map(cmd: PolicyMapCommand) -> Result<ExitCode> {
    let PolicyMapCommand::Get { endpoint, args } = cmd;
    let v = ask(&args.socket, &Request::PolicyGet { endpoint })?;
    print(args.output, &v, |v| {
        println!(
            "endpoint {} (identity {}, enforcing: {})",
            cell(&v["endpoint"]),
            cell(&v["identity"]),
            cell(&v["policy_enforce"])
        );
        println!(
            "{:<10} {:>10} {:>6} {:<13} VERDICT",
            "DIRECTION", "IDENTITY", "PROTO", "PORTS"
        );
        for r in v["rules"].as_array().into_iter().flatten() {
            let ports = match (&r["ports"][0], &r["ports"][1]) {
                (a, b) if a == b => cell(a),
                (a, b) => format!("{}-{}", cell(a), cell(b)),
            };
            let id = match r["remote_identity"].as_u64() {
                Some(0) => "any".to_owned(),
                _ => cell(&r["remote_identity"]),
            };
            println!(
                "{:<10} {:>10} {:>6} {:<13} {}",
                cell(&r["direction"]),
                id,
                cell(&r["proto"]),
                ports,
                cell(&r["verdict"])
            );
        }
    })
}

/// `membrane bpf ct list`.
pub fn ct(cmd: CtCommand) -> Result<ExitCode> {
    let CtCommand::List(a) = cmd;
    let v = ask(&a.socket, &Request::CtList)?;
    print(a.output, &v, |v| {
        println!(
            "{:>4} {:<8} {:>5} {:<44} {:<12} {:>9} {:>8} {:>10}",
            "EP", "DIR", "PROTO", "FLOW", "STATE", "REMOTE-ID", "PACKETS", "BYTES"
        );
        for e in v["entries"].as_array().into_iter().flatten() {
            println!(
                "{:>4} {:<8} {:>5} {:<44} {:<12} {:>9} {:>8} {:>10}",
                cell(&e["endpoint_id"]),
                cell(&e["direction"]).to_ascii_lowercase(),
                cell(&e["proto"]),
                format!("{} -> {}", cell(&e["src"]), cell(&e["dst"])),
                cell(&e["state"]),
                cell(&e["remote_identity"]),
                cell(&e["packets"]),
                cell(&e["bytes"])
            );
        }
    })
}

/// `membrane bpf tc stats`.
pub fn tc(cmd: TcCommand) -> Result<ExitCode> {
    let TcCommand::Stats(a) = cmd;
    let v = ask(&a.socket, &Request::TcStats)?;
    print(a.output, &v, |v| {
        println!(
            "{:>6} {:<32} {:>12} {:>14}",
            "REASON", "NAME", "PACKETS", "BYTES"
        );
        for r in v["stats"].as_array().into_iter().flatten() {
            println!(
                "{:>6} {:<32} {:>12} {:>14}",
                cell(&r["reason"]),
                cell(&r["name"]),
                cell(&r["packets"]),
                cell(&r["bytes"])
            );
        }
    })
}
