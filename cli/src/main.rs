//! `membrane`: the operator CLI.
//!
//! Verbs: `policy validate` and `policy trace` (the policy engine, offline),
//! `policy import|get|delete` and `etcd apply|delete|identities` (the
//! cluster-wide store, etcd), `bpf sockmap list` (the node's pinned
//! datapath), `monitor` (the agents' event streams), and `status`, `endpoint`,
//! `identity`, `service` and `bpf policy get` (the node agent, over its socket),
//! `proxy-status` and `proxy-config` (istioctl's views, over membrane-xds's
//! debug endpoint, a proxy's admin port or a config dump file). It owns argument
//! parsing, file reading and output formatting; all policy semantics live in
//! `membrane-policy`.

mod agent_cmd;
mod bpf_cmd;
mod cert_cmd;
mod demo_cmd;
mod etcd_cmd;
mod monitor_cmd;
mod policy_cmd;
mod prefilter_cmd;
mod views;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// membrane: Cilium-compatible L7 sidecar acceleration for service meshes.
#[derive(Debug, Parser)]
#[command(name = "membrane", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate and trace CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy objects.
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCommand),
    /// Objects, identities and registrations in etcd (the cluster-wide store).
    #[command(subcommand)]
    Etcd(etcd_cmd::EtcdCommand),
    /// Workload certificates for the control plane's mTLS port (Istio's
    /// legacy Secret layout).
    #[command(subcommand)]
    Cert(cert_cmd::CertCommand),
    /// Inspect the node's eBPF datapath.
    #[command(subcommand)]
    Bpf(bpf_cmd::BpfCommand),
    /// Stream datapath events (policy verdicts, drops, capture, splice
    /// traces) from one or more agents.
    Monitor(monitor_cmd::MonitorArgs),
    /// The node agent: control plane connection, versions in force, endpoints.
    Status(agent_cmd::AgentArgs),
    /// The node's endpoints, as the node agent enforces them.
    #[command(subcommand)]
    Endpoint(agent_cmd::EndpointCommand),
    /// Security identities of addresses and prefixes (the node's ipcache).
    #[command(subcommand)]
    Identity(agent_cmd::IdentityCommand),
    /// Services the node agent balances at connect.
    #[command(subcommand)]
    Service(agent_cmd::ServiceCommand),
    /// The XDP prefilter: source CIDRs dropped on the node's underlay device.
    #[command(subcommand)]
    Prefilter(prefilter_cmd::PrefilterCommand),
    /// The sync state of every proxy connected to membrane-xds, as
    /// `istioctl proxy-status` prints it.
    #[command(name = "proxy-status", visible_alias = "ps")]
    ProxyStatus(views::status::ProxyStatusArgs),
    /// A proxy's clusters, listeners, routes, endpoints, secrets and
    /// bootstrap, as `istioctl proxy-config` prints them (a pod's via
    /// membrane-xds or its admin port, or any Envoy config dump file).
    #[command(name = "proxy-config", visible_alias = "pc", subcommand)]
    ProxyConfig(views::ProxyConfigCommand),
    /// The embedded default: Cilium's Star Wars scenario, step by step, with
    /// the L7 step enforced live by membrane-proxy (as root).
    Demo(demo_cmd::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Policy(cmd) => policy_cmd::run(cmd),
        Command::Bpf(cmd) => bpf_cmd::run(cmd),
        Command::Cert(cmd) => cert_cmd::run(cmd),
        Command::Monitor(args) => monitor_cmd::run(args),
        Command::Etcd(cmd) => etcd_cmd::run(cmd),
        Command::Demo(args) => demo_cmd::run(args),
        Command::Status(a) => agent_cmd::status(a),
        Command::Endpoint(c) => agent_cmd::endpoint(c),
        Command::Identity(c) => agent_cmd::identity(c),
        Command::Service(c) => agent_cmd::service(c),
        Command::Prefilter(c) => prefilter_cmd::run(c),
        Command::ProxyStatus(a) => views::status::run(a),
        Command::ProxyConfig(c) => views::run(c),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("membrane: {e:#}");
            ExitCode::from(2)
        }
    }
}
