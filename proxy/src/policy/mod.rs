//! The one place the proxy meets the policy engine (`membrane-policy`): loading CNP files,
//! the endpoint's identity, the static ipcache, and per-request HTTP checks. Everything the
//! transport needs is behind [`Enforcer::check`]; the semantics are the engine's, not ours.

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// The parts of a request a verdict depends on; `path` is normalized and includes the query.
pub struct RequestView<'a> {
    /// Method.
    pub method: &'a str,
    /// Normalized path plus `?query`, exactly as forwarded.
    pub path: &'a str,
    /// `:authority` or `Host`.
    pub host: Option<&'a str>,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// The server name the connection's TLS ClientHello indicated (`None`: plaintext, or
    /// no SNI); rules with serverNames apply only when it is one of theirs.
    pub sni: Option<&'a str>,
    /// Where secrets named by `headerMatches` are read (the secret store as it is now).
    pub secrets: &'a dyn SecretResolver,
}

pub use membrane_policy::http::{NoSecrets, SecretResolver};

pub use membrane_policy::rule::{PortTls, TlsSource};

/// What the policy says about a connection on a port whose rules carry serverNames or TLS
/// contexts, once its ClientHello (if any) has been read.
#[derive(Debug, Clone)]
pub struct TlsPlan {
    /// The connection verdict when no HTTP rules apply to it (`None`: each request is
    /// checked).
    pub l4: Option<Checked>,
    /// The TLS contexts to apply: terminate with `terminating`, originate to the upstream
    /// with `originating`.
    pub tls: Option<Arc<PortTls>>,
}

pub use membrane_policy::http::HeaderAction;

/// The verdict for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Forward, after applying the header actions.
    Allow {
        /// `namespace/name` and rule of the policy that allowed it.
        decided_by: String,
        /// Header changes to make before forwarding.
        header_actions: Vec<HeaderAction>,
    },
    /// Answer 403 (or gRPC status 7).
    Deny {
        /// Why: the policy and rule, or "no rule matched".
        decided_by: String,
    },
}

/// A verdict with the remote identity it was computed for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Numeric identity of the remote side (ipcache lookup of the peer for ingress, of the
    /// destination for egress).
    pub remote_identity: u32,
    /// Numeric identity of the endpoint the policy is enforced for (0 when unknown).
    pub local_identity: u32,
    /// The verdict.
    pub decision: Decision,
}

pub use membrane_policy::Direction;

type CheckFn = dyn Fn(IpAddr, Direction, u16, &RequestView<'_>) -> Checked + Send + Sync;
type L4Fn = dyn Fn(IpAddr, Direction, u16) -> Option<Checked> + Send + Sync;
type TlsFn = dyn Fn(IpAddr, Direction, u16, Option<&str>) -> Option<TlsPlan> + Send + Sync;

/// One immutable policy snapshot, as enforced.
pub struct Enforcer {
    check: Box<CheckFn>,
    /// For ports without HTTP rules, the connection verdict: such connections are checked
    /// once at L3/L4 and spliced opaquely.
    l4: Option<Box<L4Fn>>,
    /// For ports whose rules carry serverNames or TLS contexts, the plan for a connection
    /// given its SNI; `None` for other ports.
    tls: Option<Box<TlsFn>>,
    summary: serde_json::Value,
}

impl Enforcer {
    /// An enforcer from a decision function; used by tests of the transport, which need
    /// verdicts independent of any policy file.
    pub fn from_fn(
        summary: serde_json::Value,
        f: impl Fn(IpAddr, &RequestView<'_>) -> Checked + Send + Sync + 'static,
    ) -> Self {
        Enforcer {
            check: Box::new(move |ip, _dir, _port, req| f(ip, req)),
            l4: None,
            tls: None,
            summary,
        }
    }

    /// For a port without HTTP rules, the connection verdict; `None` when the port has HTTP
    /// rules and every request must be checked. `remote` is the peer (ingress) or the
    /// destination (egress); `port` is the endpoint's port (ingress) or the destination's.
    pub fn check_l4(&self, remote: IpAddr, dir: Direction, port: u16) -> Option<Checked> {
        self.l4.as_ref().and_then(|f| f(remote, dir, port))
    }

    /// For a port whose rules carry serverNames or TLS contexts (so the ClientHello must
    /// be read first), the plan for a connection that indicated `sni`; `None` for every
    /// other port (see [`Enforcer::check_l4`] for `remote`, `dir` and `port`).
    pub fn tls_plan(
        &self,
        remote: IpAddr,
        dir: Direction,
        port: u16,
        sni: Option<&str>,
    ) -> Option<TlsPlan> {
        self.tls.as_ref().and_then(|f| f(remote, dir, port, sni))
    }

    /// The verdict for `req` (see [`Enforcer::check_l4`] for `remote`, `dir` and `port`).
    pub fn check(
        &self,
        remote: IpAddr,
        dir: Direction,
        port: u16,
        req: &RequestView<'_>,
    ) -> Checked {
        (self.check)(remote, dir, port, req)
    }

    /// What `/config_dump` shows about the loaded policy.
    pub fn summary(&self) -> &serde_json::Value {
        &self.summary
    }
}

/// The [`TlsPlan`] for `remote` on `port` with `sni`, or `None` when no rule on the port
/// carries TLS settings. `origin` names the rule that decided.
fn plan_tls(
    dp: &membrane_policy::resolve::DirectionPolicy,
    remote: membrane_policy::Identity,
    local: u32,
    port: u16,
    sni: Option<&str>,
    origin: impl Fn(&membrane_policy::resolve::PeerEntry) -> String,
) -> Option<TlsPlan> {
    use membrane_policy::Proto;
    if !dp.inspects_tls(Proto::Tcp, port) {
        return None;
    }
    let conn = dp.connection_sni(remote, Proto::Tcp, port, sni);
    let l4 = (!conn.needs_http()).then(|| Checked {
        remote_identity: remote.0,
        local_identity: local,
        decision: conn_decision(
            &conn,
            &origin,
            "no rule allows this peer on this port with this server name (default deny)",
        ),
    });
    Some(TlsPlan {
        l4,
        tls: dp.tls_for(remote, Proto::Tcp, port, sni).cloned(),
    })
}

/// The connection verdict for a port without HTTP rules, naming the rule that decided
/// (`origin`) with the engine's note, e.g. that Kafka rules membrane does not enforce
/// denied it (`default_deny`: what a default denial says).
fn conn_decision(
    conn: &membrane_policy::ConnPolicy<'_>,
    origin: &dyn Fn(&membrane_policy::resolve::PeerEntry) -> String,
    default_deny: &str,
) -> Decision {
    use membrane_policy::ConnPolicy;
    let by = match conn {
        ConnPolicy::Denied(Some(e))
        | ConnPolicy::Allowed(Some(e))
        | ConnPolicy::UnenforcedL7Denied(e)
        | ConnPolicy::UnenforcedL7AllowedL4(e) => named(conn, origin(e)),
        ConnPolicy::Denied(None) => default_deny.to_owned(),
        ConnPolicy::NotEnforced => "no policy selects this endpoint".to_owned(),
        ConnPolicy::Allowed(None) | ConnPolicy::Http(_) => "default".to_owned(),
    };
    match conn.l4_verdict() {
        membrane_policy::Verdict::Allowed => Decision::Allow {
            decided_by: by,
            header_actions: vec![],
        },
        membrane_policy::Verdict::Denied => Decision::Deny { decided_by: by },
    }
}

/// `rule`, followed by the engine's note on the verdict when it has one.
fn named(conn: &membrane_policy::ConnPolicy<'_>, rule: String) -> String {
    match conn.note() {
        Some(note) => format!("{rule}: {note}"),
        None => rule,
    }
}

/// The current snapshot; swapping it is atomic, and a request loads it exactly once.
#[derive(Clone)]
pub struct PolicyHandle(Arc<ArcSwap<Enforcer>>);

impl PolicyHandle {
    /// Starts with `e` in force.
    pub fn new(e: Enforcer) -> Self {
        PolicyHandle(Arc::new(ArcSwap::from_pointee(e)))
    }

    /// The snapshot in force now.
    pub fn load(&self) -> Arc<Enforcer> {
        self.0.load_full()
    }

    /// Puts `e` in force for every request that starts from now on.
    pub fn store(&self, e: Enforcer) {
        self.0.store(Arc::new(e));
    }
}

/// Applies header actions to the request about to be forwarded. A value that came from a
/// secret goes into the request and nowhere else: logs name the header only.
pub fn apply_header_actions(h: &mut HeaderMap, actions: &[HeaderAction]) {
    let header = |name: &str, value: &membrane_policy::http::ActionValue| {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value.as_str().as_bytes()),
        ) {
            (Ok(n), Ok(v)) => Some((n, v)),
            _ => {
                // `Display` of a secret value is "[redacted]".
                tracing::warn!(header = %name, value = %value, "header action skipped: not a valid header");
                None
            }
        }
    };
    for a in actions {
        match a {
            HeaderAction::Log { name } => {
                tracing::info!(target: "access", header = %name, "header mismatch (LOG)")
            }
            HeaderAction::Add { name, value } => {
                if let Some((n, v)) = header(name, value) {
                    h.append(n, v);
                }
            }
            HeaderAction::Delete { name } => {
                h.remove(name.as_str());
            }
            HeaderAction::Replace { name, value } => {
                if let Some((n, v)) = header(name, value) {
                    h.insert(n, v);
                }
            }
        }
    }
}

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
        "policies": policies,
        "ipcache": ipcache.entries().map(|(p, id)| serde_json::json!({"prefix": p.to_string(), "identity": id.0})).collect::<Vec<_>>(),
        "peers": peers,
    });
    let l4: Option<Box<L4Fn>> = {
        let resolved = resolved.clone();
        let ipcache = ipcache.clone();
        Some(Box::new(move |ip: IpAddr, dir: Direction, port: u16| {
            let policy = resolved.direction(dir);
            if policy.has_http_on(Proto::Tcp, port) || policy.inspects_tls(Proto::Tcp, port) {
                return None;
            }
            let remote = ipcache.lookup(ip);
            let conn = policy.connection(remote, Proto::Tcp, port);
            Some(Checked {
                remote_identity: remote.0,
                local_identity: identity.0,
                decision: conn_decision(&conn, &|e| e.origin.to_string(), "default"),
            })
        }))
    };
    let tls: Box<TlsFn> = {
        let resolved = resolved.clone();
        let ipcache = ipcache.clone();
        Box::new(
            move |ip: IpAddr, dir: Direction, port: u16, sni: Option<&str>| {
                plan_tls(
                    resolved.direction(dir),
                    ipcache.lookup(ip),
                    identity.0,
                    port,
                    sni,
                    |e| e.origin.to_string(),
                )
            },
        )
    };
    let check_ipcache = ipcache.clone();
    let check = move |ip: IpAddr, dir: Direction, port: u16, req: &RequestView<'_>| {
        let remote = check_ipcache.lookup(ip);
        let conn = resolved
            .direction(dir)
            .connection_sni(remote, Proto::Tcp, port, req.sni);
        let dec = conn.check_http(&membrane_policy::http::HttpRequest {
            method: req.method,
            path: req.path,
            host: req.host,
            headers: req.headers,
            secrets: req.secrets,
        });
        let by = match (dec.decided_by, dec.http_rule) {
            (Some(e), Some(i)) => format!("{} http[{i}]", e.origin),
            (Some(e), None) => named(&conn, e.origin.to_string()),
            (None, _) if dec.verdict == membrane_policy::Verdict::Denied => {
                "no rule allows this request (default deny)".to_owned()
            }
            (None, _) => "not enforced".to_owned(),
        };
        let decision = match dec.verdict {
            membrane_policy::Verdict::Allowed => Decision::Allow {
                decided_by: by,
                header_actions: dec.header_actions,
            },
            membrane_policy::Verdict::Denied => Decision::Deny { decided_by: by },
        };
        Checked {
            remote_identity: remote.0,
            local_identity: identity.0,
            decision,
        }
    };
    Ok(Enforcer {
        check: Box::new(check),
        l4,
        tls: Some(tls),
        summary,
    })
}

/// An enforcer that denies everything: in force before the first policy arrives from the
/// control plane, so there is never an allow-all window.
pub fn deny_all(why: &str) -> Enforcer {
    let why = why.to_owned();
    let summary = serde_json::json!({"source": "none", "state": why});
    Enforcer::from_fn(summary, move |_ip, _req| Checked {
        remote_identity: 0,
        local_identity: 0,
        decision: Decision::Deny {
            decided_by: why.clone(),
        },
    })
}

// Cilium's NPDS/NPHDS → an Enforcer (documented in the module).
pub mod npds;
