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

/// Cilium's NPDS/NPHDS (as served by `membrane-xds`) → an [`Enforcer`]. HTTP rules are
/// rebuilt as `membrane-policy` rules and compiled by the engine, so matching semantics
/// are the engine's; what this module adds is NPDS's per-port rule selection.
pub mod npds {
    use std::net::IpAddr;

    use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
    use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
    use membrane_policy::http::CompiledHttpRule;
    use membrane_policy::identity::Identity;
    use membrane_policy::ipcache::IpCache;
    use membrane_policy::model::{
        HeaderMatch as ModelHeaderMatch, HttpRule, SecretRef as ModelSecretRef,
    };
    use membrane_policy::resolve::{
        ConnPolicy, DirectionPolicy, PeerEntry, PortEntry, Remotes, RuleOrigin,
        Verdict as PolicyVerdict,
    };
    use membrane_policy::rule::{
        PolicyKey, PolicyKind, PortMatch, PortTls, Proto, TlsSource, L7 as PolicyL7,
    };
    use membrane_xds::proto::{
        header_match::{MatchAction, MismatchAction},
        port_network_policy_rule::{Verdict, L7},
        HeaderMatch, HttpNetworkPolicyRule, NetworkPolicy, NetworkPolicyHosts, PortNetworkPolicy,
        PortNetworkPolicyRule, TlsContext,
    };

    use super::{Checked, Decision, Direction, Enforcer, RequestView};

    /// `SocketAddress.Protocol::TCP`; the proxy only carries TCP.
    const TCP: i32 = 0;

    /// Why an NPDS/NPHDS update could not be put in force; the message is the NACK's
    /// `error_detail`, naming the resource and the field.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    pub enum NpdsError {
        /// A field of a `NetworkPolicy` cannot be enforced.
        #[error("NetworkPolicy {endpoint}: {field}: {message}")]
        Policy {
            /// The policy's endpoint IPs.
            endpoint: String,
            /// Path of the field inside the message.
            field: String,
            /// What was found and what was expected.
            message: String,
        },
        /// Two resources claim this endpoint.
        #[error("{count} NetworkPolicy resources name endpoint {ip}; expected at most one")]
        Ambiguous {
            /// This proxy's address.
            ip: IpAddr,
            /// How many.
            count: usize,
        },
        /// A `NetworkPolicyHosts` entry is malformed.
        #[error("NetworkPolicyHosts policy={policy}: {message}")]
        Hosts {
            /// The identity of the entry.
            policy: u64,
            /// What is wrong.
            message: String,
        },
    }

    fn deny_all_direction() -> DirectionPolicy {
        DirectionPolicy {
            enforced: true,
            default_deny: true,
            ..Default::default()
        }
    }

    /// The translated policy of one endpoint, in the policy engine's own form so that
    /// verdicts come from its one implementation (`DirectionPolicy::connection`).
    #[derive(Debug)]
    struct Translated {
        ingress: DirectionPolicy,
        egress: DirectionPolicy,
    }

    /// NPHDS resources → the ipcache (identity per prefix); a bare address is a host route.
    pub fn ipcache(hosts: &[NetworkPolicyHosts]) -> Result<IpCache, NpdsError> {
        let mut c = IpCache::new();
        for h in hosts {
            let NetworkPolicyHosts {
                policy,
                host_addresses,
            } = h;
            let id = u32::try_from(*policy).map_err(|_| NpdsError::Hosts {
                policy: *policy,
                message: "identity does not fit in 32 bits".into(),
            })?;
            for (i, a) in host_addresses.iter().enumerate() {
                let net = super::parse_prefix(a.trim()).ok_or_else(|| NpdsError::Hosts {
                    policy: *policy,
                    message: format!(
                        "host_addresses[{i}]: {a:?} is not an IP address or CIDR prefix"
                    ),
                })?;
                c.insert(net, Identity(id));
            }
        }
        Ok(c)
    }

    fn header_rule(
        r: &HttpNetworkPolicyRule,
        err: &dyn Fn(String, String) -> NpdsError,
        at: &str,
    ) -> Result<CompiledHttpRule, NpdsError> {
        let HttpNetworkPolicyRule {
            headers,
            header_matches,
        } = r;
        let mut rule = HttpRule {
            method: None,
            path: None,
            host: None,
            headers: None,
            header_matches: None,
        };
        for (i, h) in headers.iter().enumerate() {
            let field = format!("{at}.headers[{i}]");
            if h.invert_match || h.treat_missing_header_as_empty {
                return Err(err(
                    field,
                    "invert_match / treat_missing_header_as_empty are not supported".into(),
                ));
            }
            let name = h.name.to_ascii_lowercase();
            let pseudo = match name.as_str() {
                ":method" => Some(&mut rule.method),
                ":path" => Some(&mut rule.path),
                ":authority" | "host" => Some(&mut rule.host),
                _ => None,
            };
            let spec = &h.header_match_specifier;
            let pattern = match spec {
                Some(HeaderMatchSpecifier::StringMatch(m)) => m.match_pattern.as_ref(),
                _ => None,
            };
            match (pseudo, pattern, spec) {
                (Some(slot), Some(MatchPattern::SafeRegex(re)), _) => {
                    if slot.is_some() {
                        return Err(err(field, format!("{name} is matched twice")));
                    }
                    *slot = Some(re.regex.clone());
                }
                (None, Some(MatchPattern::Exact(v)), _) => rule
                    .headers
                    .get_or_insert_with(Vec::new)
                    .push(format!("{}: {v}", h.name)),
                (None, None, Some(HeaderMatchSpecifier::PresentMatch(true))) => rule
                    .headers
                    .get_or_insert_with(Vec::new)
                    .push(h.name.clone()),
                _ => {
                    return Err(err(
                        field,
                        format!(
                            "unsupported matcher for {:?} (expected a safe_regex on :method, \
                             :path or :authority, or exact/present on other headers)",
                            h.name
                        ),
                    ))
                }
            }
        }
        for (i, m) in header_matches.iter().enumerate() {
            let field = format!("{at}.header_matches[{i}]");
            let HeaderMatch {
                name,
                value,
                match_action,
                mismatch_action,
                value_sds_secret,
            } = m;
            // `NAMESPACE/NAME` (a bare name means `default`), resolved per request from
            // `--secrets-dir` by the same rules as in standalone mode.
            let secret = if value_sds_secret.is_empty() {
                None
            } else {
                let (namespace, secret_name) = secret_name(value_sds_secret).ok_or_else(|| {
                    err(
                        format!("{field}.value_sds_secret"),
                        format!(
                            "{value_sds_secret:?} is not a secret name (expected NAMESPACE/NAME)"
                        ),
                    )
                })?;
                Some(ModelSecretRef {
                    name: secret_name.to_owned(),
                    namespace: Some(namespace.to_owned()),
                })
            };
            if *match_action != MatchAction::ContinueOnMatch as i32 {
                return Err(err(
                    field,
                    format!(
                        "match_action {match_action} is not supported (expected CONTINUE_ON_MATCH)"
                    ),
                ));
            }
            let mismatch = match MismatchAction::try_from(*mismatch_action) {
                Ok(MismatchAction::FailOnMismatch) => None,
                Ok(MismatchAction::ContinueOnMismatch) => Some("LOG"),
                Ok(MismatchAction::AddOnMismatch) => Some("ADD"),
                Ok(MismatchAction::DeleteOnMismatch) => Some("DELETE"),
                Ok(MismatchAction::ReplaceOnMismatch) => Some("REPLACE"),
                Err(_) => {
                    return Err(err(
                        field,
                        format!("unknown mismatch_action {mismatch_action}"),
                    ))
                }
            };
            rule.header_matches
                .get_or_insert_with(Vec::new)
                .push(ModelHeaderMatch {
                    name: name.clone(),
                    value: (!value.is_empty()).then(|| value.clone()),
                    secret,
                    mismatch: mismatch.map(str::to_owned),
                });
        }
        // Every secret reference carries its namespace, so the policy namespace is moot.
        CompiledHttpRule::compile(&rule, None)
            .map_err(|e| err(format!("{at}.{}", e.field), e.message))
    }

    /// `NAMESPACE/NAME`, or a bare `NAME` in `default`, as membrane-xds names secrets.
    fn secret_name(text: &str) -> Option<(&str, &str)> {
        match text.split_once('/') {
            Some((ns, n)) if !ns.is_empty() && !n.is_empty() && !n.contains('/') => Some((ns, n)),
            None if !text.is_empty() => Some(("default", text)),
            _ => None,
        }
    }

    fn rule(
        r: &PortNetworkPolicyRule,
        err: &dyn Fn(String, String) -> NpdsError,
        at: &str,
    ) -> Result<PeerEntry, NpdsError> {
        let deny = match &r.verdict {
            None => false,
            Some(Verdict::Deny(d)) => *d,
            Some(Verdict::PassPrecedence(_)) => {
                return Err(err(
                    format!("{at}.pass_precedence"),
                    "pass verdicts are not supported".into(),
                ))
            }
        };
        let tls = port_tls(r, err, at)?;
        let http = match &r.l7 {
            None => None,
            Some(L7::HttpRules(h)) => Some(
                h.http_rules
                    .iter()
                    .enumerate()
                    .map(|(k, hr)| header_rule(hr, err, &format!("{at}.http_rules[{k}]")))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            // Kafka and generic L7 rules are not enforced here: they become the engine's
            // unenforced L7 rules, which fail closed (the rule allows nothing). membrane-xds
            // sends them only when its setting is fail-closed; with `l4-only` it sends the
            // rule without L7, an L4 allow.
            Some(L7::KafkaRules(_)) => None,
            Some(L7::L7Rules(_)) => None,
        };
        let unenforced = match &r.l7 {
            Some(L7::KafkaRules(_)) => Some("kafka".to_owned()),
            Some(L7::L7Rules(_)) => Some(match r.l7_proto.as_str() {
                "" => "generic L7".to_owned(),
                "dns" | "kafka" => r.l7_proto.clone(),
                p => format!("l7proto {p}"),
            }),
            _ => None,
        };
        let remotes = if r.remote_policies.is_empty() {
            Remotes::All
        } else {
            let mut ids: Vec<Identity> = r.remote_policies.iter().map(|i| Identity(*i)).collect();
            ids.sort();
            ids.dedup();
            Remotes::Set(ids.into())
        };
        Ok(PeerEntry {
            deny,
            remotes,
            l7: match (http, unenforced) {
                (Some(rules), _) => PolicyL7::Http(rules.into()),
                (None, Some(kind)) => PolicyL7::Unenforced(kind),
                (None, None) => PolicyL7::None,
            },
            // NPDS carries only a rule name (membrane-xds writes the CNP origin there), not
            // the policy key: the name goes in `rule`, which is what decisions report.
            origin: RuleOrigin {
                policy: PolicyKey {
                    kind: PolicyKind::Namespaced,
                    namespace: None,
                    name: String::new(),
                },
                rule: if r.name.is_empty() {
                    at.to_owned()
                } else {
                    r.name.clone()
                },
            },
            auth: None,
            unresolved: vec![],
            notes: vec![],
            tls,
        })
    }

    /// An NPDS `TLSContext` → where its material comes from: the PEM it carries, or else
    /// the SDS secret it names (`namespace/name`, resolved in `--secrets-dir`).
    fn tls_source(
        ctx: &TlsContext,
        downstream: bool,
        err: &dyn Fn(String, String) -> NpdsError,
        at: &str,
    ) -> Result<TlsSource, NpdsError> {
        let TlsContext {
            trusted_ca,
            certificate_chain,
            private_key,
            // The rule's own server_names decide which connections it applies to.
            server_names: _,
            validation_context_sds_secret,
            tls_sds_secret,
            // The proxy offers h2 and http/1.1 downstream and picks upstream by protocol.
            alpn_protocols: _,
        } = ctx;
        if !trusted_ca.is_empty() || !certificate_chain.is_empty() || !private_key.is_empty() {
            if downstream && (certificate_chain.is_empty() || private_key.is_empty()) {
                return Err(err(
                    at.to_owned(),
                    "a downstream TLS context needs both certificate_chain and private_key".into(),
                ));
            }
            if !downstream && trusted_ca.is_empty() {
                return Err(err(
                    format!("{at}.trusted_ca"),
                    "an upstream TLS context needs trust anchors (TLS is never originated unverified)".into(),
                ));
            }
            return Ok(TlsSource::Inline {
                trusted_ca: trusted_ca.clone(),
                certificate_chain: certificate_chain.clone(),
                private_key: private_key.clone(),
            });
        }
        let (field, name) = match (downstream, tls_sds_secret, validation_context_sds_secret) {
            (true, n, _) if !n.is_empty() => ("tls_sds_secret", n),
            (false, _, n) if !n.is_empty() => ("validation_context_sds_secret", n),
            (_, a, _) if !a.is_empty() => ("tls_sds_secret", a),
            (_, _, b) if !b.is_empty() => ("validation_context_sds_secret", b),
            _ => {
                return Err(err(
                    at.to_owned(),
                    "TLS context carries neither PEM material nor a secret name".into(),
                ))
            }
        };
        let (namespace, name) = secret_name(name).ok_or_else(|| {
            err(
                format!("{at}.{field}"),
                format!("{name:?} is not a secret name (expected NAMESPACE/NAME)"),
            )
        })?;
        Ok(TlsSource::Secret {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            certificate: None,
            private_key: None,
            trusted_ca: None,
        })
    }

    fn port_tls(
        r: &PortNetworkPolicyRule,
        err: &dyn Fn(String, String) -> NpdsError,
        at: &str,
    ) -> Result<Option<std::sync::Arc<PortTls>>, NpdsError> {
        let terminating = r
            .downstream_tls_context
            .as_ref()
            .map(|c| tls_source(c, true, err, &format!("{at}.downstream_tls_context")))
            .transpose()?;
        let originating = r
            .upstream_tls_context
            .as_ref()
            .map(|c| tls_source(c, false, err, &format!("{at}.upstream_tls_context")))
            .transpose()?;
        for (i, n) in r.server_names.iter().enumerate() {
            if n.is_empty() {
                return Err(err(
                    format!("{at}.server_names[{i}]"),
                    "empty server name".into(),
                ));
            }
        }
        if r.server_names.is_empty() && terminating.is_none() && originating.is_none() {
            return Ok(None);
        }
        Ok(Some(std::sync::Arc::new(PortTls {
            server_names: r
                .server_names
                .iter()
                .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
                .collect(),
            terminating,
            originating,
        })))
    }

    fn ports(
        list: &[PortNetworkPolicy],
        err: &dyn Fn(String, String) -> NpdsError,
        what: &str,
    ) -> Result<DirectionPolicy, NpdsError> {
        let mut out = Vec::new();
        for (i, p) in list.iter().enumerate() {
            let at = format!("{what}[{i}]");
            if p.protocol != TCP {
                continue; // UDP (and anything else) never reaches an HTTP proxy
            }
            let port = |v: u32, f: &str| {
                u16::try_from(v).map_err(|_| {
                    err(
                        format!("{at}.{f}"),
                        format!("{v} is not a port number (0-65535)"),
                    )
                })
            };
            let lo = port(p.port, "port")?;
            let (lo, hi) = match (lo, port(p.end_port, "end_port")?) {
                (0, _) => (0, u16::MAX),
                (lo, 0) => (lo, lo),
                (lo, hi) if hi >= lo => (lo, hi),
                (lo, hi) => {
                    return Err(err(
                        format!("{at}.end_port"),
                        format!("{hi} is below port {lo}"),
                    ))
                }
            };
            let rules = p
                .rules
                .iter()
                .enumerate()
                .map(|(j, r)| rule(r, err, &format!("{at}.rules[{j}]")))
                .collect::<Result<Vec<_>, _>>()?;
            let mut rules = rules;
            // Deny rules first, as the engine orders them.
            rules.sort_by_key(|r| !r.deny);
            out.push(PortEntry {
                proto: Proto::Tcp,
                ports: PortMatch::Range(lo, hi),
                rules,
            });
        }
        // An NPDS resource for this endpoint is the whole policy of the direction: what it
        // does not allow is denied.
        Ok(DirectionPolicy {
            enforced: true,
            default_deny: true,
            entries: out,
            selected_by: vec![],
            // Fail closed whatever this proxy's --unenforced-l7: the control plane decides,
            // and sends L7 rules it does not want enforced as L4 allows.
            unenforced_l7: membrane_policy::UnenforcedL7Mode::FailClosed,
        })
    }

    fn translate(np: &NetworkPolicy) -> Result<Translated, NpdsError> {
        let NetworkPolicy {
            endpoint_ips,
            endpoint_id: _,
            ingress_per_port_policies,
            egress_per_port_policies,
        } = np;
        let endpoint = endpoint_ips.join(",");
        let err = |field: String, message: String| NpdsError::Policy {
            endpoint: endpoint.clone(),
            field,
            message,
        };
        Ok(Translated {
            ingress: ports(ingress_per_port_policies, &err, "ingress_per_port_policies")?,
            egress: ports(egress_per_port_policies, &err, "egress_per_port_policies")?,
        })
    }

    impl Translated {
        fn direction(&self, dir: Direction) -> &DirectionPolicy {
            match dir {
                Direction::Ingress => &self.ingress,
                Direction::Egress => &self.egress,
            }
        }

        fn has_http(&self, dir: Direction, port: u16) -> bool {
            self.direction(dir).has_http_on(Proto::Tcp, port)
        }

        /// The engine's verdict for `remote` on `port` (and the request, when HTTP rules
        /// apply): a matching deny wins, an L4-only allow allows, else an HTTP rule must
        /// match, else default deny.
        fn decide(
            &self,
            dir: Direction,
            port: u16,
            remote: u32,
            req: Option<&RequestView<'_>>,
        ) -> Decision {
            let conn = self.direction(dir).connection_sni(
                Identity(remote),
                Proto::Tcp,
                port,
                req.and_then(|r| r.sni),
            );
            let denied_l4 = matches!(conn, ConnPolicy::Denied(None));
            let dec = match req {
                Some(req) => conn.check_http(&membrane_policy::http::HttpRequest {
                    method: req.method,
                    path: req.path,
                    host: req.host,
                    headers: req.headers,
                    secrets: req.secrets,
                }),
                None if conn.needs_http() => {
                    // An L4 check on a port with HTTP rules for this peer: requests decide.
                    return Decision::Deny {
                        decided_by: "HTTP rules apply on this port".to_owned(),
                    };
                }
                None => conn.check_http(&membrane_policy::http::HttpRequest {
                    method: "",
                    path: "",
                    host: None,
                    headers: &http::HeaderMap::new(),
                    secrets: &membrane_policy::http::NoSecrets,
                }),
            };
            let by = match (dec.decided_by, dec.http_rule) {
                (Some(e), Some(i)) => format!("{} http[{i}]", e.origin.rule),
                (Some(e), None) => super::named(&conn, e.origin.rule.clone()),
                (None, _) if denied_l4 => {
                    "no rule allows this peer on this port (default deny)".to_owned()
                }
                (None, _) => "no rule allows this request (default deny)".to_owned(),
            };
            match dec.verdict {
                PolicyVerdict::Allowed => Decision::Allow {
                    decided_by: by,
                    header_actions: dec.header_actions,
                },
                PolicyVerdict::Denied => Decision::Deny { decided_by: by },
            }
        }
    }

    /// Builds the enforcer for the endpoint at `pod_ip` from the NPDS resources (the one
    /// whose `endpoint_ips` names `pod_ip`) and the NPHDS resources. With no policy for this
    /// endpoint everything is denied. Any field that cannot be enforced exactly rejects the
    /// whole update.
    pub fn build(
        pod_ip: IpAddr,
        policies: &[NetworkPolicy],
        hosts: &[NetworkPolicyHosts],
        summary: serde_json::Value,
    ) -> Result<Enforcer, NpdsError> {
        let ipcache = ipcache(hosts)?;
        let mine: Vec<&NetworkPolicy> = policies
            .iter()
            .filter(|p| {
                p.endpoint_ips
                    .iter()
                    .any(|a| a.parse::<IpAddr>().ok() == Some(pod_ip))
            })
            .collect();
        if mine.len() > 1 {
            return Err(NpdsError::Ambiguous {
                ip: pod_ip,
                count: mine.len(),
            });
        }
        // Validate every resource, not only ours: a NACK should not depend on which
        // endpoint happened to read it.
        for p in policies {
            translate(p)?;
        }
        let found = !mine.is_empty();
        let t = std::sync::Arc::new(match mine.first() {
            Some(p) => translate(p)?,
            // No policy names this endpoint: deny everything in both directions.
            None => Translated {
                ingress: deny_all_direction(),
                egress: deny_all_direction(),
            },
        });
        let local = ipcache.lookup(pod_ip).0;
        let mut summary = summary;
        summary["endpoint_ip"] = pod_ip.to_string().into();
        summary["endpoint_identity"] = local.into();
        summary["endpoint_policy_found"] = found.into();
        summary["ingress"] = describe(&t.ingress);
        summary["egress"] = describe(&t.egress);
        summary["ipcache"] = ipcache
            .entries()
            .map(|(p, id)| serde_json::json!({"prefix": p.to_string(), "identity": id.0}))
            .collect();
        let ipcache = std::sync::Arc::new(ipcache);
        let (t4, c4) = (t.clone(), ipcache.clone());
        let l4 = move |ip: IpAddr, dir: Direction, port: u16| {
            if t4.has_http(dir, port) || t4.direction(dir).inspects_tls(Proto::Tcp, port) {
                return None;
            }
            let remote = c4.lookup(ip).0;
            Some(Checked {
                remote_identity: remote,
                local_identity: local,
                decision: t4.decide(dir, port, remote, None),
            })
        };
        let (tt, tc) = (t.clone(), ipcache.clone());
        let check = move |ip: IpAddr, dir: Direction, port: u16, req: &RequestView<'_>| {
            let remote = ipcache.lookup(ip).0;
            Checked {
                remote_identity: remote,
                local_identity: local,
                decision: t.decide(dir, port, remote, Some(req)),
            }
        };
        let tls = move |ip: IpAddr, dir: Direction, port: u16, sni: Option<&str>| {
            super::plan_tls(tt.direction(dir), tc.lookup(ip), local, port, sni, |e| {
                e.origin.rule.clone()
            })
        };
        Ok(Enforcer {
            check: Box::new(check),
            l4: Some(Box::new(l4)),
            tls: Some(Box::new(tls)),
            summary,
        })
    }

    fn describe(dp: &DirectionPolicy) -> serde_json::Value {
        dp.entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "ports": e.ports.to_string(),
                    "rules": e.rules.iter().map(|r| serde_json::json!({
                        "name": r.origin.rule,
                        "deny": r.deny,
                        "remotes": match &r.remotes {
                            Remotes::All => None,
                            Remotes::Set(ids) => Some(ids.iter().map(|i| i.0).collect::<Vec<_>>()),
                        },
                        "http": match &r.l7 {
                            PolicyL7::Http(h) => Some(h.iter().map(|x| x.to_string()).collect::<Vec<_>>()),
                            _ => None,
                        },
                        "unenforced_l7": match &r.l7 {
                            PolicyL7::Unenforced(kind) => Some(kind.as_str()),
                            _ => None,
                        },
                        "tls": r.tls.as_ref().map(|t| serde_json::json!({
                            "server_names": t.server_names,
                            "terminating": t.terminating.as_ref().map(|s| s.to_string()),
                            "originating": t.originating.as_ref().map(|s| s.to_string()),
                        })),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect()
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::policy::{apply_header_actions, NoSecrets, SecretResolver};
        use envoy_types::pb::envoy::config::route::v3::HeaderMatcher;
        use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher};
        use membrane_xds::proto::{HttpNetworkPolicyRules, NetworkPolicyHosts};

        fn re(name: &str, re: &str) -> HeaderMatcher {
            HeaderMatcher {
                name: name.into(),
                header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                    match_pattern: Some(MatchPattern::SafeRegex(RegexMatcher {
                        regex: re.into(),
                        ..Default::default()
                    })),
                    ..Default::default()
                })),
                ..Default::default()
            }
        }

        fn http(method: &str, path: &str) -> HttpNetworkPolicyRule {
            HttpNetworkPolicyRule {
                headers: vec![re(":method", method), re(":path", path)],
                header_matches: vec![],
            }
        }

        fn rule(
            remotes: &[u32],
            deny: bool,
            rules: Option<Vec<HttpNetworkPolicyRule>>,
        ) -> PortNetworkPolicyRule {
            PortNetworkPolicyRule {
                name: format!("r{remotes:?}{deny}"),
                remote_policies: remotes.to_vec(),
                verdict: deny.then_some(Verdict::Deny(true)),
                l7: rules.map(|r| L7::HttpRules(HttpNetworkPolicyRules { http_rules: r })),
                ..Default::default()
            }
        }

        fn port(port: u32, end_port: u32, rules: Vec<PortNetworkPolicyRule>) -> PortNetworkPolicy {
            PortNetworkPolicy {
                port,
                end_port,
                protocol: TCP,
                rules,
            }
        }

        fn enforcer(ports: Vec<PortNetworkPolicy>) -> Result<Enforcer, NpdsError> {
            let np = NetworkPolicy {
                endpoint_ips: vec!["10.0.0.1".into()],
                endpoint_id: 1,
                ingress_per_port_policies: ports,
                egress_per_port_policies: vec![],
            };
            let hosts = [
                NetworkPolicyHosts {
                    policy: 100,
                    host_addresses: vec!["10.0.0.3".into()],
                },
                NetworkPolicyHosts {
                    policy: 200,
                    host_addresses: vec!["10.0.0.4/32".into()],
                },
                NetworkPolicyHosts {
                    policy: 300,
                    host_addresses: vec!["10.0.0.1".into()],
                },
            ];
            build(
                "10.0.0.1".parse().unwrap(),
                &[np],
                &hosts,
                serde_json::json!({}),
            )
        }

        fn allowed(e: &Enforcer, from: &str, port: u16, method: &str, path: &str) -> bool {
            let headers = http::HeaderMap::new();
            let req = RequestView {
                method,
                path,
                host: None,
                headers: &headers,
                sni: None,
                secrets: &NoSecrets,
            };
            let ip = from.parse().unwrap();
            let c = match e.check_l4(ip, Direction::Ingress, port) {
                Some(c) => c,
                None => e.check(ip, Direction::Ingress, port, &req),
            };
            assert_eq!(c.local_identity, 300);
            matches!(c.decision, Decision::Allow { .. })
        }

        #[test]
        fn npds_rule_selection() {
            let e = enforcer(vec![
                port(
                    80,
                    0,
                    vec![
                        rule(
                            &[100],
                            false,
                            Some(vec![http("POST", "/v1/request-landing")]),
                        ),
                        rule(&[200], true, None),
                    ],
                ),
                port(9000, 9010, vec![rule(&[], false, None)]),
                port(0, 0, vec![rule(&[200], false, None)]),
            ])
            .unwrap();
            let table = [
                // (from, port, method, path, allowed)
                ("10.0.0.3", 80, "POST", "/v1/request-landing", true),
                ("10.0.0.3", 80, "PUT", "/v1/exhaust-port", false),
                ("10.0.0.3", 80, "POST", "/v1/request-landing-x", false),
                // deny on 80 wins over the wildcard port's allow
                ("10.0.0.4", 80, "POST", "/v1/request-landing", false),
                // unknown peer: world, not in any set
                ("10.9.9.9", 80, "POST", "/v1/request-landing", false),
                // a range allows everyone at L4
                ("10.9.9.9", 9005, "GET", "/", true),
                ("10.9.9.9", 9011, "GET", "/", false),
                // the wildcard port
                ("10.0.0.4", 1234, "GET", "/", true),
                ("10.0.0.3", 1234, "GET", "/", false),
            ];
            for (from, p, m, path, want) in table {
                assert_eq!(
                    allowed(&e, from, p, m, path),
                    want,
                    "{from} :{p} {m} {path}"
                );
            }
        }

        #[test]
        fn npds_tls_contexts_and_server_names() {
            let mut terminate = rule(&[100], false, Some(vec![http("GET", "/.*")]));
            terminate.server_names = vec!["A.test".into()];
            terminate.downstream_tls_context = Some(TlsContext {
                tls_sds_secret: "shop/front".into(),
                ..Default::default()
            });
            terminate.upstream_tls_context = Some(TlsContext {
                trusted_ca: "PEM".into(),
                ..Default::default()
            });
            let mut sni_only = rule(&[], false, None);
            sni_only.server_names = vec!["b.test".into()];
            let e = enforcer(vec![
                port(443, 0, vec![terminate]),
                port(8443, 0, vec![sni_only]),
            ])
            .unwrap();
            let peer: IpAddr = "10.0.0.3".parse().unwrap();
            let plan = e
                .tls_plan(peer, Direction::Ingress, 443, Some("a.test"))
                .unwrap();
            assert!(plan.l4.is_none(), "HTTP rules decide per request");
            let tls = plan.tls.unwrap();
            assert_eq!(
                tls.terminating,
                Some(TlsSource::Secret {
                    namespace: "shop".into(),
                    name: "front".into(),
                    certificate: None,
                    private_key: None,
                    trusted_ca: None,
                })
            );
            assert!(
                matches!(&tls.originating, Some(TlsSource::Inline { trusted_ca, .. }) if trusted_ca == "PEM")
            );
            // Another SNI: the rule does not apply, so nothing allows the peer.
            let plan = e
                .tls_plan(peer, Direction::Ingress, 443, Some("c.test"))
                .unwrap();
            assert!(matches!(plan.l4.unwrap().decision, Decision::Deny { .. }));
            // serverNames alone: an SNI check without termination.
            let verdict = |sni| {
                e.tls_plan("10.9.9.9".parse().unwrap(), Direction::Ingress, 8443, sni)
                    .unwrap()
                    .l4
                    .unwrap()
                    .decision
            };
            assert!(matches!(verdict(Some("b.test")), Decision::Allow { .. }));
            assert!(matches!(verdict(Some("a.test")), Decision::Deny { .. }));
            assert!(matches!(verdict(None), Decision::Deny { .. }));
            // Ports without TLS rules are not inspected.
            assert!(e.tls_plan(peer, Direction::Ingress, 80, None).is_none());
            // Unusable contexts are NACKed with the field named.
            let mut bad = rule(&[100], false, None);
            bad.downstream_tls_context = Some(TlsContext {
                certificate_chain: "PEM".into(),
                ..Default::default()
            });
            let msg = enforcer(vec![port(443, 0, vec![bad])])
                .err()
                .unwrap()
                .to_string();
            assert!(msg.contains("rules[0].downstream_tls_context: a downstream TLS context needs both certificate_chain and private_key"), "{msg}");
            let mut bad = rule(&[100], false, None);
            bad.upstream_tls_context = Some(TlsContext {
                validation_context_sds_secret: "a/b/c".into(),
                ..Default::default()
            });
            let msg = enforcer(vec![port(443, 0, vec![bad])])
                .err()
                .unwrap()
                .to_string();
            assert!(msg.contains("upstream_tls_context.validation_context_sds_secret: \"a/b/c\" is not a secret name"), "{msg}");
        }

        #[test]
        fn npds_header_match_with_a_secret() {
            use membrane_policy::http::{SecretData, SecretName};
            struct One(SecretName, &'static str);
            impl SecretResolver for One {
                fn secret(&self, name: &SecretName) -> Option<std::sync::Arc<SecretData>> {
                    (*name == self.0).then(|| {
                        std::sync::Arc::new(SecretData::from([(
                            "token".to_owned(),
                            self.1.as_bytes().to_vec(),
                        )]))
                    })
                }
            }
            let with_secret = |secret: &str, mismatch: MismatchAction| {
                let mut r = http("GET", "/.*");
                r.header_matches.push(HeaderMatch {
                    name: "x-token".into(),
                    value: String::new(),
                    match_action: MatchAction::ContinueOnMatch as i32,
                    mismatch_action: mismatch as i32,
                    value_sds_secret: secret.into(),
                });
                enforcer(vec![port(80, 0, vec![rule(&[100], false, Some(vec![r]))])])
            };
            let e = with_secret("shop/api-token", MismatchAction::FailOnMismatch).unwrap();
            let store = One(
                SecretName {
                    namespace: "shop".into(),
                    name: "api-token".into(),
                },
                "s3cret",
            );
            let check = |e: &Enforcer, token: Option<&str>, secrets: &dyn SecretResolver| {
                let mut headers = http::HeaderMap::new();
                if let Some(t) = token {
                    headers.insert("x-token", t.parse().unwrap());
                }
                let req = RequestView {
                    method: "GET",
                    path: "/",
                    host: None,
                    headers: &headers,
                    sni: None,
                    secrets,
                };
                e.check("10.0.0.3".parse().unwrap(), Direction::Ingress, 80, &req)
                    .decision
            };
            assert!(matches!(
                check(&e, Some("s3cret"), &store),
                Decision::Allow { .. }
            ));
            assert!(matches!(
                check(&e, Some("guess"), &store),
                Decision::Deny { .. }
            ));
            assert!(matches!(check(&e, None, &store), Decision::Deny { .. }));
            // The secret gone: the match fails even with the old value.
            assert!(matches!(
                check(&e, Some("s3cret"), &NoSecrets),
                Decision::Deny { .. }
            ));
            // A bare name is in `default`.
            let e = with_secret("api-token", MismatchAction::FailOnMismatch).unwrap();
            assert!(matches!(
                check(&e, Some("s3cret"), &store),
                Decision::Deny { .. }
            ));
            // REPLACE puts the secret's value into the request.
            let e = with_secret("shop/api-token", MismatchAction::ReplaceOnMismatch).unwrap();
            let Decision::Allow { header_actions, .. } = check(&e, Some("guess"), &store) else {
                panic!("REPLACE allows")
            };
            let mut h = http::HeaderMap::new();
            h.insert("x-token", "guess".parse().unwrap());
            apply_header_actions(&mut h, &header_actions);
            assert_eq!(h.get_all("x-token").iter().collect::<Vec<_>>(), ["s3cret"]);
            let msg = with_secret("a/b/c", MismatchAction::FailOnMismatch)
                .err()
                .unwrap()
                .to_string();
            assert!(
                msg.contains("http_rules[0].header_matches[0].value_sds_secret: \"a/b/c\" is not a secret name"),
                "{msg}"
            );
        }

        #[test]
        fn no_policy_for_this_endpoint_denies_everything() {
            let e = build("10.0.0.9".parse().unwrap(), &[], &[], serde_json::json!({})).unwrap();
            let c = e
                .check_l4("10.0.0.3".parse().unwrap(), Direction::Ingress, 80)
                .unwrap();
            assert!(matches!(c.decision, Decision::Deny { .. }));
        }

        /// Kafka and generic L7 rules (membrane-xds sends them when its setting is
        /// fail-closed) allow nothing here: the peer is denied on that port, and the
        /// decision names the rule and why. An L4-only rule for the same peer and port
        /// still allows; other peers and ports are unaffected.
        #[test]
        fn npds_unenforced_l7_rules_fail_closed() {
            let mut kafka = rule(&[100], false, None);
            kafka.name = "default/kafka spec.ingress[0]".into();
            kafka.l7 = Some(L7::KafkaRules(Default::default()));
            let mut redis = rule(&[100], false, None);
            redis.l7_proto = "redis".into();
            redis.l7 = Some(L7::L7Rules(Default::default()));
            let e = enforcer(vec![
                port(9092, 0, vec![kafka.clone()]),
                port(6379, 0, vec![redis]),
                port(80, 0, vec![rule(&[200], false, None)]),
            ])
            .expect("an update with Kafka and generic L7 rules is accepted");
            let c = e
                .check_l4("10.0.0.3".parse().unwrap(), Direction::Ingress, 9092)
                .expect("no HTTP rules on 9092: a connection verdict");
            match c.decision {
                Decision::Deny { decided_by } => assert!(
                    decided_by.starts_with("default/kafka spec.ingress[0]: kafka rules are not enforced by membrane: denied (fail closed"),
                    "{decided_by}"
                ),
                other => panic!("{other:?}"),
            }
            assert!(!allowed(&e, "10.0.0.3", 9092, "GET", "/"));
            assert!(!allowed(&e, "10.0.0.3", 6379, "GET", "/"));
            assert!(allowed(&e, "10.0.0.4", 80, "GET", "/"));
            assert!(!allowed(&e, "10.0.0.4", 9092, "GET", "/"));
            let merged =
                enforcer(vec![port(9092, 0, vec![kafka, rule(&[100], false, None)])]).unwrap();
            assert!(allowed(&merged, "10.0.0.3", 9092, "GET", "/"));
        }

        /// A regex that closes the user's group early (`a)|(.*`) would make the anchored
        /// pattern match every path: the update is refused, naming the field.
        #[test]
        fn npds_regex_must_be_one_group() {
            let e = enforcer(vec![port(
                80,
                0,
                vec![rule(&[100], false, Some(vec![http("GET", "/public)|(.*")]))],
            )])
            .err()
            .expect("an unbalanced regex is refused")
            .to_string();
            assert!(
                e.contains(
                    "http_rules[0].path: \"/public)|(.*\" is not a valid RE2 regular expression"
                ),
                "{e}"
            );
            // The anchored form membrane-xds writes decodes to the same verdicts.
            let ok = enforcer(vec![port(
                80,
                0,
                vec![rule(
                    &[100],
                    false,
                    Some(vec![http("^(?:GET)$", "^(?:/public|/v1/.*)$")]),
                )],
            )])
            .unwrap();
            assert!(allowed(&ok, "10.0.0.3", 80, "GET", "/public"));
            assert!(allowed(&ok, "10.0.0.3", 80, "GET", "/v1/x"));
            assert!(!allowed(&ok, "10.0.0.3", 80, "GET", "/admin"));
            assert!(!allowed(&ok, "10.0.0.3", 80, "GET", "/public/x"));
        }

        #[test]
        fn untranslatable_fields_are_named() {
            let bad_regex = enforcer(vec![port(
                80,
                0,
                vec![rule(&[100], false, Some(vec![http("POST", "/v1/(")]))],
            )])
            .err()
            .unwrap()
            .to_string();
            assert!(bad_regex.starts_with("NetworkPolicy 10.0.0.1: ingress_per_port_policies[0].rules[0].http_rules[0].path: "), "{bad_regex}");
            let e = enforcer(vec![port(80, 70, vec![])])
                .err()
                .unwrap()
                .to_string();
            assert!(
                e.contains("ingress_per_port_policies[0].end_port: 70 is below port 80"),
                "{e}"
            );
            let e = ipcache(&[NetworkPolicyHosts {
                policy: 5,
                host_addresses: vec!["nope".into()],
            }])
            .err()
            .unwrap()
            .to_string();
            assert_eq!(e, "NetworkPolicyHosts policy=5: host_addresses[0]: \"nope\" is not an IP address or CIDR prefix");
        }
    }
}
