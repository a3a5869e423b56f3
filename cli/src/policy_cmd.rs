//! `membrane policy validate|trace` (offline) and `import|get|delete` (etcd).

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use membrane_policy::labels::LabelSet;
use membrane_policy::load::{parse_file, LoadedObject};
use membrane_policy::rule::{CompiledPolicy, Proto};
use membrane_policy::trace::{trace, TraceHttp, TraceRequest};
use membrane_policy::{AllowLocalhost, UnenforcedL7Mode};
use serde::Serialize;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable text.
    Text,
    /// JSON.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check policy files; exit 0 when every policy object is valid.
    Validate(ValidateArgs),
    /// Show whether a flow is allowed, and which rule decided.
    Trace(Box<TraceArgs>),
    /// Validate policy files and store them in etcd (all or nothing).
    Import(crate::etcd_cmd::ImportArgs),
    /// Print policies stored in etcd.
    Get(crate::etcd_cmd::GetArgs),
    /// Remove a policy from etcd: `NAMESPACE/NAME`, or `NAME` for a
    /// CiliumClusterwideNetworkPolicy.
    Delete(crate::etcd_cmd::DeleteArgs),
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Policy files or directories (YAML or JSON; directories are searched recursively).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    output: Output,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Policy files or directories.
    #[arg(long = "policy", required = true, num_args = 1..)]
    policy: Vec<PathBuf>,
    /// Source labels, e.g. `k8s:org=empire,k8s:class=tiefighter` (pods default to namespace `default`).
    #[arg(
        short = 's',
        long = "src",
        allow_hyphen_values = true,
        default_value = ""
    )]
    src: String,
    /// Destination labels.
    #[arg(
        short = 'd',
        long = "dst",
        allow_hyphen_values = true,
        default_value = ""
    )]
    dst: String,
    /// Source address (a world peer's address selects CIDR rules).
    #[arg(long = "src-ip")]
    src_ip: Option<IpAddr>,
    /// Destination address.
    #[arg(long = "dst-ip")]
    dst_ip: Option<IpAddr>,
    /// Destination port and protocol: `80`, `80/TCP`, `53/UDP`, `8/ICMP` (ICMP type).
    #[arg(long = "dport")]
    dport: String,
    /// HTTP method of the request.
    #[arg(long = "http-method")]
    http_method: Option<String>,
    /// HTTP path (with query) of the request.
    #[arg(long = "http-path")]
    http_path: Option<String>,
    /// HTTP host of the request.
    #[arg(long = "http-host")]
    http_host: Option<String>,
    /// HTTP header `Name: value`; repeatable.
    #[arg(long = "http-header")]
    http_header: Vec<String>,
    /// Server name the flow's TLS ClientHello indicates (rules with serverNames apply only
    /// to TLS flows with one of their names).
    #[arg(long = "tls-sni")]
    tls_sni: Option<String>,
    /// A named port of the destination, `NAME=PORT`; repeatable.
    #[arg(long = "named-port")]
    named_port: Vec<String>,
    /// What Kafka, DNS and generic L7 rules (which membrane does not enforce) do:
    /// `fail-closed` denies what only they would allow; `l4-only` allows it at L4 without
    /// them. Trace with the setting the proxies and membrane-xds run with.
    #[arg(
        long = "unenforced-l7",
        env = "MEMBRANE_UNENFORCED_L7",
        default_value = "fail-closed"
    )]
    unenforced_l7: UnenforcedL7Mode,
    /// Cilium's allow-localhost: `auto` (the default) and `always` let the node's own
    /// traffic (reserved:host) reach an endpoint on any port no rule naming the host
    /// covers; `policy` requires a rule. Trace with the setting membrane-xds runs with.
    #[arg(
        long = "allow-localhost",
        env = "MEMBRANE_ALLOW_LOCALHOST",
        default_value = "auto"
    )]
    allow_localhost: AllowLocalhost,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    output: Output,
}

pub fn run(cmd: PolicyCommand) -> Result<ExitCode> {
    match cmd {
        PolicyCommand::Validate(a) => validate(a),
        PolicyCommand::Trace(a) => trace_cmd(*a),
        PolicyCommand::Import(a) => crate::etcd_cmd::import(a),
        PolicyCommand::Get(a) => crate::etcd_cmd::get(a),
        PolicyCommand::Delete(a) => crate::etcd_cmd::delete(a),
    }
}

/// Every policy file under the given paths, in a stable order.
fn policy_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).with_context(|| format!("{}", p.display()))?;
        if meta.is_dir() {
            walk(p, &mut out).with_context(|| format!("{}", p.display()))?;
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let p = e.path();
        if e.file_type()?.is_dir() {
            walk(&p, out)?;
        } else if matches!(
            p.extension().and_then(|x| x.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(p);
        }
    }
    Ok(())
}

/// One `-o json` entry of `validate`.
#[derive(Debug, Serialize)]
struct ValidateEntry {
    file: String,
    kind: String,
    namespace: Option<String>,
    name: String,
    valid: bool,
    error: Option<String>,
    /// Accepted, but worth knowing: legacy fields, L7 rules membrane does not enforce.
    warnings: Vec<String>,
}

enum FileResult {
    Objects(Vec<LoadedObject>),
    Unreadable(String),
}

fn load_all(paths: &[PathBuf]) -> Result<Vec<(String, FileResult)>> {
    let mut out = Vec::new();
    for f in policy_files(paths)? {
        let name = f.display().to_string();
        let r = match std::fs::read_to_string(&f) {
            Err(e) => FileResult::Unreadable(format!("{name}: {e}")),
            Ok(text) => match parse_file(&name, &text) {
                Ok(objs) => FileResult::Objects(objs),
                Err(e) => FileResult::Unreadable(e.to_string()),
            },
        };
        out.push((name, r));
    }
    Ok(out)
}

fn validate(a: ValidateArgs) -> Result<ExitCode> {
    let files = load_all(&a.paths)?;
    let mut entries = Vec::new();
    let mut ok = true;
    let mut lines = Vec::new();
    for (name, r) in &files {
        match r {
            FileResult::Unreadable(e) => {
                ok = false;
                lines.push(e.clone());
                entries.push(ValidateEntry {
                    file: name.clone(),
                    kind: String::new(),
                    namespace: None,
                    name: String::new(),
                    valid: false,
                    error: Some(e.clone()),
                    warnings: vec![],
                });
            }
            FileResult::Objects(objs) => {
                if objs.is_empty() {
                    lines.push(format!("{name}: warning: no CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy objects"));
                }
                for o in objs {
                    let errs = o.error_lines();
                    ok &= errs.is_empty();
                    lines.extend(o.warning_lines());
                    if errs.is_empty() {
                        lines.push(format!("{name}: {}: valid", o.describe()));
                    } else {
                        lines.extend(errs.iter().cloned());
                    }
                    entries.push(ValidateEntry {
                        file: name.clone(),
                        kind: o.kind.as_str().to_owned(),
                        namespace: o.namespace.clone(),
                        name: o.name.clone(),
                        valid: errs.is_empty(),
                        error: if errs.is_empty() {
                            None
                        } else {
                            Some(match &o.result {
                                Err(fe) => fe
                                    .iter()
                                    .map(|e| e.to_string())
                                    .collect::<Vec<_>>()
                                    .join("; "),
                                Ok(_) => String::new(),
                            })
                        },
                        warnings: match &o.result {
                            Ok(p) => p.warnings.iter().map(|w| w.to_string()).collect(),
                            Err(_) => vec![],
                        },
                    });
                }
            }
        }
    }
    match a.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&entries)?),
        Output::Text => {
            for l in &lines {
                if l.ends_with(": valid") {
                    println!("{l}");
                } else {
                    eprintln!("{l}");
                }
            }
            let invalid = entries.iter().filter(|e| !e.valid).count();
            println!(
                "{} policy objects, {} valid, {} invalid",
                entries.len(),
                entries.len() - invalid,
                invalid
            );
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn trace_cmd(a: TraceArgs) -> Result<ExitCode> {
    let files = load_all(&a.policy)?;
    let mut policies: Vec<Arc<CompiledPolicy>> = Vec::new();
    let mut problems = Vec::new();
    for (_, r) in files {
        match r {
            FileResult::Unreadable(e) => problems.push(e),
            FileResult::Objects(objs) => {
                for o in objs {
                    match &o.result {
                        Ok(p) => policies.push(p.clone()),
                        Err(_) => problems.extend(o.error_lines()),
                    }
                }
            }
        }
    }
    if !problems.is_empty() {
        // Tracing against a policy set with holes in it would answer a different question.
        bail!(
            "the policy set is not valid; fix it before tracing:\n{}",
            problems.join("\n")
        );
    }
    let src = LabelSet::parse(&a.src).context("-s")?;
    let dst = LabelSet::parse(&a.dst).context("-d")?;
    if src.is_empty() && a.src_ip.is_none() {
        bail!(
            "-s: give the source's labels (e.g. k8s:app=client, or reserved:world with --src-ip)"
        );
    }
    if dst.is_empty() && a.dst_ip.is_none() {
        bail!("-d: give the destination's labels (e.g. k8s:app=server)");
    }
    let src = if src.is_empty() {
        LabelSet::parse("reserved:world")?
    } else {
        src
    };
    let dst = if dst.is_empty() {
        LabelSet::parse("reserved:world")?
    } else {
        dst
    };
    let (port, proto) = match a.dport.split_once('/') {
        Some((p, pr)) => (
            p,
            Proto::parse_flow(pr).with_context(|| {
                format!("--dport: {pr:?} is not TCP, UDP, SCTP, ICMP or ICMPv6")
            })?,
        ),
        None => (a.dport.as_str(), Proto::Tcp),
    };
    let port: u16 = port
        .parse()
        .with_context(|| format!("--dport: {port:?} is not a port number"))?;
    let mut named_ports = membrane_policy::resolve::NamedPorts::new();
    for np in &a.named_port {
        let (n, p) = np
            .split_once('=')
            .with_context(|| format!("--named-port {np:?}: expected NAME=PORT"))?;
        let p: u16 = p
            .parse()
            .with_context(|| format!("--named-port {np:?}: {p:?} is not a port number"))?;
        named_ports
            .entry(n.to_ascii_lowercase())
            .or_default()
            .insert(p);
    }
    let http = if a.http_method.is_some()
        || a.http_path.is_some()
        || a.http_host.is_some()
        || !a.http_header.is_empty()
    {
        let mut headers = Vec::new();
        for h in &a.http_header {
            let (n, v) = h
                .split_once(':')
                .with_context(|| format!("--http-header {h:?}: expected 'Name: value'"))?;
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
        Some(TraceHttp {
            method: a.http_method.clone().unwrap_or_else(|| "GET".into()),
            path: a.http_path.clone().unwrap_or_else(|| "/".into()),
            host: a.http_host.clone(),
            headers,
        })
    } else {
        None
    };
    let req = TraceRequest {
        src,
        dst,
        src_ip: a.src_ip,
        dst_ip: a.dst_ip,
        dport: port,
        proto,
        named_ports,
        http,
        sni: a.tls_sni.clone(),
        unenforced_l7: a.unenforced_l7,
        allow_localhost: a.allow_localhost,
    };
    let result = trace(&policies, &req)?;
    match a.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&result)?),
        Output::Text => {
            println!("{}", result.explanation);
            if let Some(d) = &result.decided_by {
                println!(
                    "decided by: {} {} {} ({})",
                    d.kind, d.policy, d.rule, d.direction
                );
            }
        }
    }
    // A verdict is an answer, not an error: exit 0 either way (errors exit non-zero).
    Ok(ExitCode::SUCCESS)
}
