//! `membrane-cni`: the CNI plugin that wires a pod into the datapath, run by
//! the container runtime as a chained plugin after the one that made the
//! pod's interface (CNI spec 0.3.0 to 1.1.0; `CNI_COMMAND` ADD, DEL, CHECK,
//! VERSION, STATUS, GC).
//!
//! ADD attaches the datapath's inbound capture (sk_lookup) to the pod's
//! network namespace, so connections to the pod's ports reach its sidecar
//! with no netfilter rule, and passes the previous plugin's result through.
//! The cgroup programs are the agent's (the runtime tells a CNI plugin no
//! cgroup). The datapath must be loaded already (`membrane-agent`): if it is
//! not, ADD fails with "try again later" rather than start a pod uncaptured.
//! Each attachment is recorded in the state directory by container and
//! interface, so DEL and GC find it after the namespace is gone.
//!
//! `membrane-cni install` (run by the agent DaemonSet's init container)
//! copies this binary into the node's CNI binary directory and chains the
//! plugin into the node's primary network configuration list (the first
//! `.conflist` by name, as the runtime picks it); `membrane-cni uninstall`
//! takes both out again. Both are idempotent.
//!
//! Network configuration fields of this plugin (all optional):
//! `bpffs` (the agent's pin directory, default `/sys/fs/bpf/membrane`),
//! `stateDir` (default `/var/run/membrane/cni`), `excludeNamespaces`
//! (Kubernetes namespaces whose pods are left alone, as Istio's CNI plugin
//! has it; the namespace comes from `CNI_ARGS`' `K8S_POD_NAMESPACE`),
//! `agentSocket` and `cgroupRoot` (below).
//!
//! With `agentSocket` (the node daemon's socket, `membrane-agent run --xds-address`),
//! ADD registers the pod with the daemon instead of attaching anything itself: its
//! namespace and name (`CNI_ARGS`' `K8S_POD_NAMESPACE`/`K8S_POD_NAME`), its network
//! namespace, its addresses (the previous plugin's `ips`), its host-side interface (the
//! previous result's interface without `sandbox`: the daemon attaches the packet path's tc
//! programs to it) with the pod interface's MAC, and its cgroup. A runtime tells a
//! CNI plugin no cgroup unless asked: the plugin reads the CNI conventions' `cgroupPath`
//! capability (`runtimeConfig.cgroupPath`, declared with `"capabilities":
//! {"cgroupPath": true}`), a path under `cgroupRoot` (default: the cgroup2 mount); without
//! it ADD fails naming it (a pod is never started unenforced). The daemon attaches and
//! programs the pod's datapath before ADD returns. DEL unregisters it by container and
//! interface; DEL with no daemon listening succeeds (the daemon forgets, when it starts,
//! every recorded pod whose network namespace is gone).

use std::{
    env, fs,
    io::{self, Read},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::ExitCode,
};

use membrane_datapath::{api, Datapath, NetnsCookie, DEFAULT_BPFFS_DIR};

mod agent;
mod install;
use agent::{check_registered, register, unregister};
use install::{install, uninstall, Installer};
use serde_json::{json, Value};

/// The CNI spec versions this plugin speaks.
const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// What an error says for a configuration that could not be read.
const PREFERRED: &str = "1.1.0";
const DEFAULT_STATE_DIR: &str = "/var/run/membrane/cni";

/// The CNI spec's well-known error codes, and this plugin's own (100+).
mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    pub const NOT_ATTACHED: u32 = 100;
    pub const DATAPATH: u32 = 101;
}

/// A CNI error result: printed as JSON on stdout, exit status 1.
#[derive(Debug)]
struct CniError {
    code: u32,
    msg: String,
    details: String,
}

fn err(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
    CniError {
        code,
        msg: msg.into(),
        details: details.into(),
    }
}

/// The network configuration fields this plugin reads.
struct Config {
    version: String,
    bpffs: PathBuf,
    state_dir: PathBuf,
    exclude_namespaces: Vec<String>,
    agent_socket: Option<PathBuf>,
    cgroup_root: PathBuf,
    prev_result: Option<Value>,
    raw: Value,
}

impl Config {
    fn parse(input: &[u8]) -> Result<Config, CniError> {
        let raw: Value = serde_json::from_slice(input).map_err(|e| {
            err(
                code::DECODE,
                "network configuration is not JSON",
                e.to_string(),
            )
        })?;
        let obj = raw.as_object().ok_or_else(|| {
            err(
                code::DECODE,
                "network configuration is not a JSON object",
                "",
            )
        })?;
        let version = match obj.get("cniVersion") {
            None => "0.1.0".to_owned(),
            Some(Value::String(v)) => v.clone(),
            Some(other) => {
                return Err(err(
                    code::INVALID_CONFIG,
                    "cniVersion must be a string",
                    format!("cniVersion: {other}"),
                ))
            }
        };
        let path = |key: &str, default: &str| -> Result<PathBuf, CniError> {
            match obj.get(key) {
                None => Ok(PathBuf::from(default)),
                Some(Value::String(s)) if s.starts_with('/') => Ok(PathBuf::from(s)),
                Some(other) => Err(err(
                    code::INVALID_CONFIG,
                    format!("{key} must be an absolute path"),
                    format!("{key}: {other}"),
                )),
            }
        };
        let bpffs = path("bpffs", DEFAULT_BPFFS_DIR)?;
        let state_dir = path("stateDir", DEFAULT_STATE_DIR)?;
        let exclude_namespaces = match obj.get("excludeNamespaces") {
            None => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    err(
                        code::INVALID_CONFIG,
                        "excludeNamespaces must be a list of strings",
                        format!("excludeNamespaces: {}", Value::Array(a.clone())),
                    )
                })?,
            Some(other) => {
                return Err(err(
                    code::INVALID_CONFIG,
                    "excludeNamespaces must be a list of strings",
                    format!("excludeNamespaces: {other}"),
                ))
            }
        };
        let agent_socket = match obj.get("agentSocket") {
            None => None,
            Some(_) => Some(path("agentSocket", "")?),
        };
        let cg2 =
            membrane_datapath::cgroup2_mount().unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"));
        let cgroup_root = path("cgroupRoot", &cg2.to_string_lossy())?;
        Ok(Config {
            version,
            bpffs,
            state_dir,
            exclude_namespaces,
            agent_socket,
            cgroup_root,
            prev_result: obj.get("prevResult").cloned(),
            raw: raw.clone(),
        })
    }
}

fn env_var(name: &str) -> Result<String, CniError> {
    match env::var(name) {
        Ok(v) if !v.is_empty() => Ok(v),
        _ => Err(err(
            code::INVALID_ENV,
            format!("{name} is not set"),
            format!(
                "CNI_COMMAND {} needs {name}",
                env::var("CNI_COMMAND").unwrap_or_default()
            ),
        )),
    }
}

/// `KEY` from `CNI_ARGS` (`KEY=VALUE;KEY=VALUE`).
fn cni_arg(key: &str) -> Option<String> {
    env::var("CNI_ARGS").ok()?.split(';').find_map(|kv| {
        kv.split_once('=')
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v.to_owned())
    })
}

/// `K8S_POD_NAMESPACE` from `CNI_ARGS`.
fn pod_namespace() -> Option<String> {
    cni_arg("K8S_POD_NAMESPACE")
}

/// The file recording one attachment: `<state dir>/<container id>-<ifname>`,
/// holding `cookie=<the namespace's cookie>` (an earlier version wrote the
/// namespace's inode number alone).
fn record_path(cfg: &Config, container: &str, ifname: &str) -> Result<PathBuf, CniError> {
    let ok = |s: &str| !s.is_empty() && !s.contains('/') && s != "." && s != "..";
    if !ok(container) || !ok(ifname) {
        return Err(err(
            code::INVALID_ENV,
            "CNI_CONTAINERID and CNI_IFNAME must be plain names",
            format!("CNI_CONTAINERID={container:?} CNI_IFNAME={ifname:?}"),
        ));
    }
    Ok(cfg.state_dir.join(format!("{container}-{ifname}")))
}

fn open_datapath(cfg: &Config, unavailable: u32) -> Result<Datapath, CniError> {
    Datapath::open(&cfg.bpffs).map_err(|e| {
        err(
            unavailable,
            "the membrane datapath is not loaded (is membrane-agent running?)",
            format!("{}: {e}", cfg.bpffs.display()),
        )
    })
}

fn netns_cookie(netns: &str) -> Result<NetnsCookie, CniError> {
    membrane_datapath::netns_cookie(Path::new(netns)).map_err(|e| {
        err(
            code::UNKNOWN_CONTAINER,
            "the container's network namespace cannot be opened",
            format!("CNI_NETNS={netns}: {e}"),
        )
    })
}

/// What a record names: the namespace by cookie, or (an earlier version's
/// record) by inode number, which a later namespace may have been given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recorded {
    Cookie(NetnsCookie),
    Inode(u64),
}

impl Recorded {
    fn parse(text: &str) -> Option<Self> {
        let t = text.trim();
        match t.strip_prefix("cookie=") {
            Some(c) => c.parse().ok().map(|c| Self::Cookie(NetnsCookie(c))),
            None => t.parse().ok().map(Self::Inode),
        }
    }
}

fn io_error(what: &str, path: &Path, e: io::Error) -> CniError {
    err(
        code::IO,
        what.to_owned(),
        format!("{}: {e}", path.display()),
    )
}

/// The result of ADD (and nothing else prints one): the previous plugin's,
/// or an empty one in the configuration's version.
fn add_result(cfg: &Config) -> Value {
    let mut r = cfg
        .prev_result
        .clone()
        .unwrap_or_else(|| json!({"interfaces": [], "ips": []}));
    if let Some(o) = r.as_object_mut() {
        o.insert("cniVersion".into(), Value::String(cfg.version.clone()));
    }
    r
}

fn excluded(cfg: &Config) -> bool {
    pod_namespace().is_some_and(|ns| cfg.exclude_namespaces.contains(&ns))
}

fn add(cfg: &Config) -> Result<Option<Value>, CniError> {
    let container = env_var("CNI_CONTAINERID")?;
    let ifname = env_var("CNI_IFNAME")?;
    let netns = env_var("CNI_NETNS")?;
    if excluded(cfg) {
        return Ok(Some(add_result(cfg)));
    }
    if let Some(socket) = &cfg.agent_socket {
        netns_cookie(&netns)?;
        return register(cfg, socket, container, ifname, netns);
    }
    let record = record_path(cfg, &container, &ifname)?;
    netns_cookie(&netns)?;
    let dp = open_datapath(cfg, code::TRY_AGAIN_LATER)?;
    let cookie = dp.attach_netns(Path::new(&netns)).map_err(|e| {
        err(
            code::DATAPATH,
            "attaching inbound capture to the pod's network namespace failed",
            format!("CNI_NETNS={netns}: {e}"),
        )
    })?;
    fs::create_dir_all(&cfg.state_dir)
        .map_err(|e| io_error("cannot create the state directory", &cfg.state_dir, e))?;
    if let Err(e) = fs::write(&record, format!("cookie={cookie}")) {
        // Undo, so the attachment is never unrecorded (DEL could not find it).
        let _ = dp.detach_netns_cookie(cookie);
        return Err(io_error("cannot record the attachment", &record, e));
    }
    Ok(Some(add_result(cfg)))
}

/// The namespace an attachment was recorded with, if any.
fn recorded(record: &Path) -> Result<Option<Recorded>, CniError> {
    match fs::read_to_string(record) {
        Ok(s) => Recorded::parse(&s).map(Some).ok_or_else(|| {
            err(
                code::IO,
                "the attachment record is damaged",
                format!("{}: {s:?}", record.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("cannot read the attachment record", record, e)),
    }
}

/// DEL: undo ADD; nothing to undo (twice, or after a failed ADD) is success.
fn del(cfg: &Config) -> Result<Option<Value>, CniError> {
    let container = env_var("CNI_CONTAINERID")?;
    let ifname = env_var("CNI_IFNAME")?;
    if let Some(socket) = &cfg.agent_socket {
        return unregister(socket, container, ifname);
    }
    let record = record_path(cfg, &container, &ifname)?;
    forget(cfg, &record)?;
    Ok(None)
}

fn forget(cfg: &Config, record: &Path) -> Result<(), CniError> {
    let recorded = match recorded(record) {
        Ok(Some(r)) => r,
        Ok(None) => return Ok(()),
        // A damaged record names no namespace: drop it rather than fail every
        // DEL of the container for good (its link, if any, stays pinned).
        Err(_) => {
            let _ = fs::remove_file(record);
            return Ok(());
        }
    };
    // Without a datapath there is no link left to unpin.
    if let Ok(dp) = Datapath::open(&cfg.bpffs) {
        let done = match recorded {
            Recorded::Cookie(c) => dp.detach_netns_cookie(c),
            Recorded::Inode(ino) => dp.detach_netns_inode(ino),
        };
        done.map_err(|e| {
            err(
                code::DATAPATH,
                "detaching inbound capture failed",
                format!("{recorded:?}: {e}"),
            )
        })?;
    }
    match fs::remove_file(record) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(io_error("cannot remove the attachment record", record, e))
        }
        _ => Ok(()),
    }
}

/// CHECK: what ADD did is still in place.
fn check(cfg: &Config) -> Result<Option<Value>, CniError> {
    let container = env_var("CNI_CONTAINERID")?;
    let ifname = env_var("CNI_IFNAME")?;
    let netns = env_var("CNI_NETNS")?;
    if excluded(cfg) {
        return Ok(None);
    }
    if let Some(socket) = &cfg.agent_socket {
        return check_registered(socket);
    }
    let record = record_path(cfg, &container, &ifname)?;
    let cookie = netns_cookie(&netns)?;
    let dp = open_datapath(cfg, code::NOT_ATTACHED)?;
    match recorded(&record)? {
        Some(Recorded::Cookie(r)) if r == cookie && dp.netns_attached(cookie) => Ok(None),
        Some(Recorded::Cookie(r)) if r != cookie => Err(err(
            code::NOT_ATTACHED,
            "the attachment was recorded for another network namespace",
            format!("{}: cookie {r}, CNI_NETNS cookie {cookie}", record.display()),
        )),
        // An inode number cannot tell this namespace from an earlier one
        // that had the same number: ADD again to attach by cookie.
        Some(Recorded::Inode(ino)) => Err(err(
            code::NOT_ATTACHED,
            "the attachment was recorded by namespace inode, which a later namespace can reuse; ADD again",
            format!("{}: inode {ino}, CNI_NETNS={netns}", record.display()),
        )),
        _ => Err(err(
            code::NOT_ATTACHED,
            "inbound capture is not attached to the pod's network namespace",
            format!("CNI_NETNS={netns}"),
        )),
    }
}

/// STATUS (1.1): ready when the datapath is loaded.
fn status(cfg: &Config) -> Result<Option<Value>, CniError> {
    open_datapath(cfg, code::NOT_AVAILABLE).map(|_| None)
}

/// GC (1.1): forget every recorded attachment the runtime no longer lists in
/// `cni.dev/valid-attachments` (without that list, nothing: an absent list
/// is not "none is valid").
fn gc(cfg: &Config) -> Result<Option<Value>, CniError> {
    let valid: Vec<String> = match cfg.raw.get("cni.dev/valid-attachments") {
        None => return Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                let id = v.get("containerID").and_then(Value::as_str);
                let ifname = v.get("ifname").and_then(Value::as_str);
                match (id, ifname) {
                    (Some(id), Some(ifname)) => Ok(format!("{id}-{ifname}")),
                    _ => Err(err(
                        code::INVALID_CONFIG,
                        "cni.dev/valid-attachments entries need containerID and ifname",
                        v.to_string(),
                    )),
                }
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(err(
                code::INVALID_CONFIG,
                "cni.dev/valid-attachments must be a list",
                other.to_string(),
            ))
        }
    };
    let entries = match fs::read_dir(&cfg.state_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(io_error(
                "cannot list the state directory",
                &cfg.state_dir,
                e,
            ))
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !valid.contains(&name) {
            forget(cfg, &entry.path())?;
        }
    }
    Ok(None)
}

fn run(command: &str, input: &[u8]) -> Result<Option<Value>, (String, CniError)> {
    let cfg = Config::parse(input).map_err(|e| (PREFERRED.to_owned(), e))?;
    let version = cfg.version.clone();
    let fail = |e| (version.clone(), e);
    if command == "VERSION" {
        return Ok(Some(json!({
            "cniVersion": version,
            "supportedVersions": SUPPORTED,
        })));
    }
    if !SUPPORTED.contains(&version.as_str()) {
        return Err(fail(err(
            code::INCOMPATIBLE_VERSION,
            format!("cniVersion {version} is not supported"),
            format!("supported: {}", SUPPORTED.join(", ")),
        )));
    }
    match command {
        "ADD" => add(&cfg),
        "DEL" => del(&cfg),
        "CHECK" => check(&cfg),
        "STATUS" => status(&cfg),
        "GC" => gc(&cfg),
        other => Err(err(
            code::INVALID_ENV,
            format!("unknown CNI_COMMAND {other:?}"),
            "expected ADD, DEL, CHECK, VERSION, STATUS or GC",
        )),
    }
    .map_err(fail)
}

fn main() -> ExitCode {
    let command = env::var("CNI_COMMAND").unwrap_or_default();
    if command.is_empty() && env::args().len() > 1 {
        use clap::Parser;
        let (what, result) = match Installer::parse() {
            Installer::Install(a) => ("install", install(&a)),
            Installer::Uninstall(a) => ("uninstall", uninstall(&a)),
        };
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("membrane-cni {what}: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let mut input = Vec::new();
    let outcome = if command.is_empty() {
        Err((
            PREFERRED.to_owned(),
            err(
                code::INVALID_ENV,
                "CNI_COMMAND is not set",
                "membrane-cni is run by a container runtime, as a CNI plugin",
            ),
        ))
    } else if let Err(e) = io::stdin().read_to_end(&mut input) {
        Err((
            PREFERRED.to_owned(),
            err(
                code::IO,
                "cannot read the network configuration",
                e.to_string(),
            ),
        ))
    } else if input.iter().all(u8::is_ascii_whitespace) && command == "VERSION" {
        // A runtime may ask VERSION with no configuration at all.
        Ok(Some(
            json!({"cniVersion": PREFERRED, "supportedVersions": SUPPORTED}),
        ))
    } else {
        run(&command, &input)
    };
    match outcome {
        Ok(Some(result)) => {
            println!("{result}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err((version, e)) => {
            println!(
                "{}",
                json!({"cniVersion": version, "code": e.code, "msg": e.msg, "details": e.details})
            );
            ExitCode::FAILURE
        }
    }
}
