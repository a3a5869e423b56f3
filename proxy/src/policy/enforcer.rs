//! The [`Enforcer`]: one immutable policy snapshot as the proxy applies it, a plain struct
//! (both directions' resolved rules, the ipcache, the endpoint's own identity) with the
//! three questions the transport asks of it. Built by the standalone loader
//! ([`load`](fn@super::load), [`deny_all`](super::deny_all)) and by the NPDS path
//! ([`super::npds::build`]); the verdicts are the engine's (`membrane-policy`), this room
//! only names what decided them.

use std::net::IpAddr;

use membrane_policy::http::HttpRequest;
use membrane_policy::ipcache::IpCache;
use membrane_policy::resolve::{DirectionPolicy, PeerEntry};
use membrane_policy::{ConnPolicy, Identity, Proto, Verdict};

use super::{Checked, Decision, Direction, RequestView, TlsPlan};

/// Where an [`Enforcer`]'s rules came from, which decides how a verdict names the rule
/// behind it (and, for [`Source::Unready`], that there are no rules yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Policy files (standalone): a rule is named by its policy and position
    /// (`CiliumNetworkPolicy ns/name ingress[0]`).
    Files,
    /// NPDS from the control plane: a rule is named as the resource names it.
    Npds,
    /// No policy yet: every request is denied with this reason, and no connection is
    /// decided at L4 (each request gets its 403), so there is never an allow-all window.
    Unready(String),
}

/// One immutable policy snapshot, as enforced. (Not `Debug`: the ipcache and the rules of a
/// cluster are large; `/config_dump` shows the [`Enforcer::summary`].)
pub struct Enforcer {
    /// The resolved policy into the endpoint.
    pub ingress: DirectionPolicy,
    /// The resolved policy out of the endpoint.
    pub egress: DirectionPolicy,
    /// Remote address → identity.
    pub ipcache: IpCache,
    /// Numeric identity of the endpoint the policy is enforced for (0 when unknown).
    pub local: u32,
    /// Where the rules came from.
    pub source: Source,
    /// What `/config_dump` shows about the loaded policy.
    pub summary: serde_json::Value,
    /// The NPDS and NPHDS resources this snapshot was built from, as received (`None`
    /// unless the rules came from the control plane): `/config_dump` shows them.
    pub received: Option<std::sync::Arc<super::npds::Received>>,
}

impl Enforcer {
    /// The policy of one direction.
    pub fn direction(&self, dir: Direction) -> &DirectionPolicy {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// For a port without HTTP rules, the connection verdict: such connections are checked
    /// once at L3/L4 and spliced opaquely. `None` when the port has HTTP rules (or TLS
    /// settings) and every request must be checked. `remote` is the peer (ingress) or the
    /// destination (egress); `port` is the endpoint's port (ingress) or the destination's.
    pub fn check_l4(&self, remote: IpAddr, dir: Direction, port: u16) -> Option<Checked> {
        if matches!(self.source, Source::Unready(_)) {
            return None;
        }
        let policy = self.direction(dir);
        if policy.has_http_on(Proto::Tcp, port) || policy.inspects_tls(Proto::Tcp, port) {
            return None;
        }
        let remote = self.ipcache.lookup(remote);
        let (decision, by_rule) = match self.source {
            Source::Npds => self.decide_npds(policy, remote, port, None),
            _ => conn_decision(
                &policy.connection(remote, Proto::Tcp, port),
                &|e| self.rule_name(e),
                "default",
            ),
        };
        Some(Checked {
            remote_identity: remote.0,
            local_identity: self.local,
            decision,
            by_rule,
        })
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
        if matches!(self.source, Source::Unready(_)) {
            return None;
        }
        plan_tls(
            self.direction(dir),
            self.ipcache.lookup(remote),
            self.local,
            port,
            sni,
            |e| self.rule_name(e),
        )
    }

    /// The verdict for `req` (see [`Enforcer::check_l4`] for `remote`, `dir` and `port`).
    pub fn check(
        &self,
        remote: IpAddr,
        dir: Direction,
        port: u16,
        req: &RequestView<'_>,
    ) -> Checked {
        let remote = match &self.source {
            Source::Unready(why) => {
                return Checked {
                    remote_identity: 0,
                    local_identity: 0,
                    decision: Decision::Deny {
                        decided_by: why.clone(),
                    },
                    by_rule: false,
                }
            }
            _ => self.ipcache.lookup(remote),
        };
        let policy = self.direction(dir);
        let (decision, by_rule) = match self.source {
            Source::Npds => self.decide_npds(policy, remote, port, Some(req)),
            _ => {
                let conn = policy.connection_sni(remote, Proto::Tcp, port, req.sni);
                let dec = conn.check_http(&http_request(req));
                let by_rule = dec.decided_by.is_some();
                let by = match (dec.decided_by, dec.http_rule) {
                    (Some(e), Some(i)) => format!("{} http[{i}]", e.origin),
                    (Some(e), None) => named(&conn, e.origin.to_string()),
                    (None, _) if dec.verdict == Verdict::Denied => {
                        "no rule allows this request (default deny)".to_owned()
                    }
                    (None, _) => "not enforced".to_owned(),
                };
                (verdict(dec.verdict, by, dec.header_actions), by_rule)
            }
        };
        Checked {
            remote_identity: remote.0,
            local_identity: self.local,
            decision,
            by_rule,
        }
    }

    /// What `/config_dump` shows about the loaded policy.
    pub fn summary(&self) -> &serde_json::Value {
        &self.summary
    }

    /// How a verdict names the rule `e` (see [`Source`]).
    fn rule_name(&self, e: &PeerEntry) -> String {
        match self.source {
            Source::Npds => e.origin.rule.clone(),
            _ => e.origin.to_string(),
        }
    }

    /// NPDS's verdict for `remote` on `port` (and the request, when HTTP rules apply): a
    /// matching deny wins, an L4-only allow allows, else an HTTP rule must match, else
    /// default deny. An NPDS resource is the whole policy of its direction, so a verdict
    /// nothing decided is always a default denial.
    fn decide_npds(
        &self,
        policy: &DirectionPolicy,
        remote: Identity,
        port: u16,
        req: Option<&RequestView<'_>>,
    ) -> (Decision, bool) {
        let conn = policy.connection_sni(remote, Proto::Tcp, port, req.and_then(|r| r.sni));
        let denied_l4 = matches!(conn, ConnPolicy::Denied(None));
        let dec = match req {
            Some(req) => conn.check_http(&http_request(req)),
            None if conn.needs_http() => {
                // An L4 check on a port with HTTP rules for this peer: requests decide.
                let decided_by = "HTTP rules apply on this port".to_owned();
                return (Decision::Deny { decided_by }, false);
            }
            None => conn.check_http(&HttpRequest {
                method: "",
                path: "",
                host: None,
                headers: &http::HeaderMap::new(),
                secrets: &membrane_policy::http::NoSecrets,
            }),
        };
        let by_rule = dec.decided_by.is_some();
        let by = match (dec.decided_by, dec.http_rule) {
            (Some(e), Some(i)) => format!("{} http[{i}]", e.origin.rule),
            (Some(e), None) => named(&conn, e.origin.rule.clone()),
            (None, _) if denied_l4 => {
                "no rule allows this peer on this port (default deny)".to_owned()
            }
            (None, _) => "no rule allows this request (default deny)".to_owned(),
        };
        (verdict(dec.verdict, by, dec.header_actions), by_rule)
    }
}

fn http_request<'a>(req: &'a RequestView<'a>) -> HttpRequest<'a> {
    HttpRequest {
        method: req.method,
        path: req.path,
        host: req.host,
        headers: req.headers,
        secrets: req.secrets,
    }
}

fn verdict(v: Verdict, by: String, header_actions: Vec<super::HeaderAction>) -> Decision {
    match v {
        Verdict::Allowed => Decision::Allow {
            decided_by: by,
            header_actions,
        },
        Verdict::Denied => Decision::Deny { decided_by: by },
    }
}

/// The [`TlsPlan`] for `remote` on `port` with `sni`, or `None` when no rule on the port
/// carries TLS settings. `origin` names the rule that decided.
fn plan_tls(
    dp: &DirectionPolicy,
    remote: Identity,
    local: u32,
    port: u16,
    sni: Option<&str>,
    origin: impl Fn(&PeerEntry) -> String,
) -> Option<TlsPlan> {
    if !dp.inspects_tls(Proto::Tcp, port) {
        return None;
    }
    let conn = dp.connection_sni(remote, Proto::Tcp, port, sni);
    let l4 = (!conn.needs_http()).then(|| {
        let (decision, by_rule) = conn_decision(
            &conn,
            &origin,
            "no rule allows this peer on this port with this server name (default deny)",
        );
        Checked {
            remote_identity: remote.0,
            local_identity: local,
            decision,
            by_rule,
        }
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
    conn: &ConnPolicy<'_>,
    origin: &dyn Fn(&PeerEntry) -> String,
    default_deny: &str,
) -> (Decision, bool) {
    let by_rule = matches!(
        conn,
        ConnPolicy::Denied(Some(_))
            | ConnPolicy::Allowed(Some(_))
            | ConnPolicy::UnenforcedL7Denied(_)
            | ConnPolicy::UnenforcedL7AllowedL4(_)
    );
    let by = match conn {
        ConnPolicy::Denied(Some(e))
        | ConnPolicy::Allowed(Some(e))
        | ConnPolicy::UnenforcedL7Denied(e)
        | ConnPolicy::UnenforcedL7AllowedL4(e) => named(conn, origin(e)),
        ConnPolicy::Denied(None) => default_deny.to_owned(),
        ConnPolicy::NotEnforced => "no policy selects this endpoint".to_owned(),
        ConnPolicy::Allowed(None) | ConnPolicy::Http(_) => "default".to_owned(),
        ConnPolicy::AllowedLocalhost => named(conn, "allow-localhost".to_owned()),
    };
    (verdict(conn.l4_verdict(), by, vec![]), by_rule)
}

/// `rule`, followed by the engine's note on the verdict when it has one.
fn named(conn: &ConnPolicy<'_>, rule: String) -> String {
    match conn.note() {
        Some(note) => format!("{rule}: {note}"),
        None => rule,
    }
}
