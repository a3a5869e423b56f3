//! The standalone loader: CNP files, `--endpoint-labels` and `--peer` → an [`Enforcer`]
//! (and [`deny_all`], in force before a control plane's first policy).

use std::net::IpAddr;

use super::{Enforcer, Source};

/// Why a policy could not be loaded; the message names the file and, for invalid objects,
/// the object and field.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{file}: {source}")]
    Read {
        /// Path.
        file: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not YAML/JSON.
    #[error(transparent)]
    Parse(#[from] membrane_policy::load::LoadError),
    /// Objects in the files are invalid (one line per field error).
    #[error("{0}")]
    Invalid(String),
    /// No policy object in any file.
    #[error("{0}: no CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy found")]
    Empty(String),
    /// `--endpoint-labels` or a `--peer` is malformed.
    #[error("{what}: {message}")]
    Arg {
        /// Which flag and value.
        what: String,
        /// What is wrong.
        message: String,
    },
    /// Identity allocation failed.
    #[error(transparent)]
    Identity(#[from] membrane_policy::identity::IdentityError),
}

fn arg_err(what: impl Into<String>, message: impl std::fmt::Display) -> LoadError {
    LoadError::Arg {
        what: what.into(),
        message: message.to_string(),
    }
}

/// Parses a `--peer` prefix: a CIDR or a bare address (a host route).
fn parse_prefix(text: &str) -> Option<ipnet::IpNet> {
    text.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(ipnet::IpNet::from))
}

const ENDPOINT_ID: &str = "standalone";

/// Loads the policy files named in `cfg`, resolves the ingress policy of the endpoint with
/// `--endpoint-labels` on the upstream's port, and builds the static ipcache from `--peer`
/// plus the policies' CIDR identities. Any invalid object rejects the whole load (so a
/// reload never puts half a policy in force).
pub fn load(cfg: &crate::config::Config) -> Result<Enforcer, LoadError> {
    use membrane_policy::ipcache::IpCache;
    use membrane_policy::resolve::Endpoint;
    use membrane_policy::trace::pod_labels;
    use membrane_policy::{Engine, LabelSet, Proto};

    let mut engine = Engine::default();
    engine.set_unenforced_l7(cfg.unenforced_l7);
    engine.set_allow_localhost(cfg.allow_localhost);
    let mut errors = Vec::new();
    let mut policies = Vec::new();
    for path in &cfg.policy {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            file: file.clone(),
            source,
        })?;
        for obj in membrane_policy::parse_file(&file, &text)? {
            errors.extend(obj.error_lines());
            if let Ok(p) = &obj.result {
                policies.push(obj.describe());
                engine.apply_policy(p.clone());
            }
        }
    }
    if !errors.is_empty() {
        return Err(LoadError::Invalid(errors.join("\n")));
    }
    if policies.is_empty() {
        let files: Vec<String> = cfg.policy.iter().map(|p| p.display().to_string()).collect();
        return Err(LoadError::Empty(files.join(", ")));
    }
    let text = cfg
        .endpoint_labels
        .as_deref()
        .ok_or_else(|| arg_err("--endpoint-labels", "missing"))?;
    let labels =
        LabelSet::parse(text).map_err(|e| arg_err(format!("--endpoint-labels {text:?}"), e))?;
    let labels = pod_labels(labels);
    let (identity, _) = engine.upsert_endpoint(
        ENDPOINT_ID,
        Endpoint {
            labels: labels.clone(),
            named_ports: Default::default(),
        },
    )?;

    let mut ipcache = IpCache::new();
    for (prefix, id) in engine.cidr_identities() {
        ipcache.insert(*prefix, *id);
    }
    let mut peers = Vec::new();
    for peer in &cfg.peer {
        let what = || format!("--peer {peer:?}");
        let (cidr, peer_labels) = peer
            .split_once('=')
            .ok_or_else(|| arg_err(what(), "expected CIDR=LABELS"))?;
        let prefix = parse_prefix(cidr.trim())
            .ok_or_else(|| arg_err(what(), format!("{cidr:?} is not a CIDR or IP address")))?;
        let peer_labels = LabelSet::parse(peer_labels).map_err(|e| arg_err(what(), e))?;
        let (id, _) = engine.ensure_identity(&pod_labels(peer_labels))?;
        ipcache.insert(prefix, id);
        peers.push(serde_json::json!({"prefix": prefix.to_string(), "identity": id.0}));
    }
    let resolved = engine
        .resolved(ENDPOINT_ID)
        .ok_or_else(|| arg_err("--endpoint-labels", "endpoint was not resolved"))?;
    let port = cfg.upstream.port();
    let l7 = resolved.ingress.has_http_on(Proto::Tcp, port);
    let summary = serde_json::json!({
        "endpoint_labels": labels.to_string(),
        "endpoint_identity": identity.0,
        "port": port,
        "l7": l7,
        "unenforced_l7": cfg.unenforced_l7.as_str(),
        "allow_localhost": cfg.allow_localhost.as_str(),
        "policies": policies,
        "ipcache": ipcache.entries().map(|(p, id)| serde_json::json!({"prefix": p.to_string(), "identity": id.0})).collect::<Vec<_>>(),
        "peers": peers,
    });
    Ok(Enforcer {
        ingress: resolved.ingress.clone(),
        egress: resolved.egress.clone(),
        ipcache,
        local: identity.0,
        source: Source::Files,
        summary,
        received: None,
    })
}

/// An enforcer that denies everything: in force before the first policy arrives from the
/// control plane, so there is never an allow-all window.
pub fn deny_all(why: &str) -> Enforcer {
    let summary = serde_json::json!({"source": "none", "state": why});
    Enforcer {
        ingress: Default::default(),
        egress: Default::default(),
        ipcache: Default::default(),
        local: 0,
        source: Source::Unready(why.to_owned()),
        summary,
        received: None,
    }
}
