//! The verbs that read and write etcd: `membrane policy import|get|delete`
//! and `membrane etcd apply|delete|identities`. Objects are validated here
//! exactly as the control plane will read them (`membrane_xds::kvstore`);
//! the key layout is documented there.

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use membrane_xds::kvstore::{self, StoredObject};
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;

const CNP: &str = "CiliumNetworkPolicy";
const CCNP: &str = "CiliumClusterwideNetworkPolicy";

/// Where etcd is, and how to reach it.
#[derive(Debug, Args)]
pub struct EtcdArgs {
    /// etcd endpoints, comma-separated (`http://host:port` or `host:port`;
    /// `https://host:port` with --etcd-ca).
    #[arg(long, env = "MEMBRANE_ETCD", value_delimiter = ',', required = true)]
    etcd: Vec<String>,
    /// PEM CA bundle etcd's server certificate must chain to; turns on TLS.
    #[arg(long, env = "MEMBRANE_ETCD_CA")]
    etcd_ca: Option<PathBuf>,
    /// PEM client certificate for an etcd started with --client-cert-auth.
    #[arg(long, env = "MEMBRANE_ETCD_CERT", requires_all = ["etcd_key", "etcd_ca"])]
    etcd_cert: Option<PathBuf>,
    /// PEM private key for --etcd-cert.
    #[arg(long, env = "MEMBRANE_ETCD_KEY", requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
}

impl EtcdArgs {
    /// A client for these endpoints, over TLS when --etcd-ca is given.
    async fn connect(&self) -> Result<kvstore::EtcdClient, kvstore::KvError> {
        let tls = kvstore::EtcdTls::from_flags(
            self.etcd_ca.as_deref(),
            self.etcd_cert.as_deref(),
            self.etcd_key.as_deref(),
        )?;
        kvstore::connect_tls(&self.etcd, tls.as_ref()).await
    }
}

/// `policy import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Policy files (YAML or JSON): CiliumNetworkPolicy and
    /// CiliumClusterwideNetworkPolicy objects.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    etcd: EtcdArgs,
}

/// Output formats of `get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GetOutput {
    /// YAML documents.
    Yaml,
    /// JSON.
    Json,
}

/// `policy get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// `NAMESPACE/NAME` of a CiliumNetworkPolicy, or with --cluster-wide
    /// the `NAME` of a CiliumClusterwideNetworkPolicy; none: every policy.
    target: Option<String>,
    /// CiliumClusterwideNetworkPolicy objects only.
    #[arg(long)]
    cluster_wide: bool,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "yaml")]
    output: GetOutput,
    #[command(flatten)]
    etcd: EtcdArgs,
}

/// `policy delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// `NAMESPACE/NAME` of a CiliumNetworkPolicy, or `NAME` of a
    /// CiliumClusterwideNetworkPolicy.
    target: String,
    #[command(flatten)]
    etcd: EtcdArgs,
}

/// `membrane etcd ...`: the cluster state the control plane reads from etcd.
#[derive(Debug, Subcommand)]
pub enum EtcdCommand {
    /// Store objects of any kind the control plane reads (CiliumNetworkPolicy,
    /// CiliumClusterwideNetworkPolicy, Pod, Service, EndpointSlice, Namespace,
    /// Node); every object is validated first, and nothing is written if any
    /// is invalid.
    Apply {
        /// YAML or JSON files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// Remove one object: `KIND NAMESPACE/NAME` (namespaced kinds) or `KIND NAME`.
    Delete {
        /// Object kind, e.g. `Pod`.
        kind: String,
        /// `NAMESPACE/NAME` or `NAME`.
        target: String,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// List the cluster-wide identities: number and labels.
    Identities {
        #[command(flatten)]
        etcd: EtcdArgs,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Validates every file; prints every error and returns `None` if any.
fn validated(files: &[PathBuf], allowed: &[&str]) -> Result<Option<Vec<StoredObject>>> {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        let name = f.display().to_string();
        let text = std::fs::read_to_string(f).with_context(|| name.clone())?;
        match kvstore::objects_from_file(&name, &text, allowed) {
            Ok(o) => objects.extend(o),
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() {
        Ok(Some(objects))
    } else {
        for e in &errors {
            eprintln!("{e}");
        }
        eprintln!(
            "membrane: {} error(s); nothing was written to etcd",
            errors.len()
        );
        Ok(None)
    }
}

fn store(files: &[PathBuf], allowed: &[&str], etcd: &EtcdArgs) -> Result<ExitCode> {
    let Some(objects) = validated(files, allowed)? else {
        return Ok(ExitCode::from(1));
    };
    runtime()?.block_on(async {
        let mut c = etcd.connect().await?;
        kvstore::put_objects(&mut c, &objects).await
    })?;
    for o in &objects {
        println!("stored {}", o.describe);
    }
    Ok(ExitCode::SUCCESS)
}

/// `membrane policy import`.
pub fn import(a: ImportArgs) -> Result<ExitCode> {
    store(&a.files, &[CNP, CCNP], &a.etcd)
}

/// The key a policy target names: `NS/NAME` a CNP, `NAME` a CCNP.
fn policy_key(target: &str, cluster_wide: bool) -> Result<String> {
    match target.split_once('/') {
        Some((ns, name)) if !cluster_wide && !ns.is_empty() && !name.is_empty() => {
            Ok(kvstore::object_key(CNP, Some(ns), name))
        }
        None if !target.is_empty() => Ok(kvstore::object_key(CCNP, None, target)),
        _ => anyhow::bail!(
            "{target:?}: expected NAMESPACE/NAME (CiliumNetworkPolicy) or NAME (CiliumClusterwideNetworkPolicy)"
        ),
    }
}

/// `membrane policy get`.
pub fn get(a: GetArgs) -> Result<ExitCode> {
    let rt = runtime()?;
    let values: Vec<Value> = rt.block_on(async {
        let mut c = a.etcd.connect().await?;
        let mut kvs = Vec::new();
        match &a.target {
            Some(t) => {
                let key = policy_key(t, a.cluster_wide)?;
                kvs.extend(
                    kvstore::list(&mut c, &key)
                        .await?
                        .into_iter()
                        .filter(|(k, _)| *k == key),
                );
                if kvs.is_empty() {
                    anyhow::bail!("{t}: no such policy in etcd ({key})");
                }
            }
            None => {
                if !a.cluster_wide {
                    let p = format!("{}{CNP}/", kvstore::OBJECTS);
                    kvs.extend(kvstore::list(&mut c, &p).await?);
                }
                let p = format!("{}{CCNP}/", kvstore::OBJECTS);
                kvs.extend(kvstore::list(&mut c, &p).await?);
            }
        }
        kvs.into_iter()
            .map(|(k, v)| {
                serde_json::from_str(&v).with_context(|| format!("{k}: value is not JSON"))
            })
            .collect::<Result<Vec<Value>>>()
    })?;
    match (a.output, a.target.is_some()) {
        (GetOutput::Json, true) => println!("{}", serde_json::to_string_pretty(&values[0])?),
        (GetOutput::Json, false) => println!("{}", serde_json::to_string_pretty(&values)?),
        (GetOutput::Yaml, _) => {
            let docs: Vec<String> = values
                .iter()
                .map(serde_yaml_ng::to_string)
                .collect::<Result<_, _>>()?;
            print!("{}", docs.join("---\n"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn delete_key(key: &str, what: &str, etcd: &EtcdArgs) -> Result<ExitCode> {
    let found = runtime()?.block_on(async {
        let mut c = etcd.connect().await?;
        kvstore::delete(&mut c, key).await
    })?;
    if found {
        println!("deleted {what}");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("membrane: {what}: not found in etcd ({key})");
        Ok(ExitCode::from(1))
    }
}

/// `membrane policy delete`.
pub fn delete(a: DeleteArgs) -> Result<ExitCode> {
    let key = policy_key(&a.target, false)?;
    delete_key(&key, &a.target, &a.etcd)
}

/// `membrane etcd ...`.
pub fn run(cmd: EtcdCommand) -> Result<ExitCode> {
    match cmd {
        EtcdCommand::Apply { files, etcd } => store(&files, &[], &etcd),
        EtcdCommand::Delete { kind, target, etcd } => {
            let Some(namespaced) = kvstore::kind_scope(&kind) else {
                anyhow::bail!(
                    "{kind:?} is not a stored kind; expected one of {}",
                    kvstore::KINDS
                        .iter()
                        .map(|k| k.0)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            };
            let key = match (namespaced, target.split_once('/')) {
                (true, Some((ns, name))) => kvstore::object_key(&kind, Some(ns), name),
                (false, None) => kvstore::object_key(&kind, None, &target),
                (true, None) => anyhow::bail!("{kind} {target}: expected NAMESPACE/NAME"),
                (false, Some(_)) => {
                    anyhow::bail!("{kind} {target}: expected NAME (cluster-scoped)")
                }
            };
            delete_key(&key, &format!("{kind} {target}"), &etcd)
        }
        EtcdCommand::Identities { etcd } => {
            let ids = runtime()?.block_on(async {
                let mut c = etcd.connect().await?;
                kvstore::list_identities(&mut c).await
            })?;
            for (n, labels) in ids {
                println!("{n}\t{labels}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
