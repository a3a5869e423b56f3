//! Cilium's NPDS/NPHDS (as served by `membrane-xds`) → an [`Enforcer`](super::Enforcer).
//! Decoding is `membrane-api`'s ([`decode`]: the endpoint's resolved policy and the
//! ipcache, in the engine's own form); what this module adds is the enforcer around them,
//! whose verdicts come from the engine's one implementation (`DirectionPolicy::connection`).

use std::net::IpAddr;

use membrane_api::npds::decode;
use membrane_api::proto::{NetworkPolicy, NetworkPolicyHosts};
use membrane_policy::identity::Identity;
use membrane_policy::resolve::{
    ConnPolicy, DirectionPolicy, Remotes, ResolvedPolicy, Verdict as PolicyVerdict,
};
use membrane_policy::rule::{Proto, L7 as PolicyL7};

use super::{Checked, Decision, Direction, Enforcer, RequestView};

/// NPHDS resources → the ipcache, as the decoder reads them.
pub use membrane_api::npds::decode::ipcache;
/// Why an NPDS/NPHDS update could not be put in force (the decoder's error); the message
/// is the NACK's `error_detail`, naming the resource and the field.
pub use membrane_api::npds::decode::DecodeError as NpdsError;

/// The engine's verdict for `remote` on `port` (and the request, when HTTP rules
/// apply): a matching deny wins, an L4-only allow allows, else an HTTP rule must
/// match, else default deny.
fn decide(
    policy: &ResolvedPolicy,
    dir: Direction,
    port: u16,
    remote: u32,
    req: Option<&RequestView<'_>>,
) -> Decision {
    let conn = policy.direction(dir).connection_sni(
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
        (None, _) if denied_l4 => "no rule allows this peer on this port (default deny)".to_owned(),
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
    let decode::Decoded {
        policy,
        ipcache,
        found,
    } = decode::endpoint(pod_ip, policies, hosts)?;
    let t = std::sync::Arc::new(policy);
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
        let policy = t4.direction(dir);
        if policy.has_http_on(Proto::Tcp, port) || policy.inspects_tls(Proto::Tcp, port) {
            return None;
        }
        let remote = c4.lookup(ip).0;
        Some(Checked {
            remote_identity: remote,
            local_identity: local,
            decision: decide(&t4, dir, port, remote, None),
        })
    };
    let (tt, tc) = (t.clone(), ipcache.clone());
    let check = move |ip: IpAddr, dir: Direction, port: u16, req: &RequestView<'_>| {
        let remote = ipcache.lookup(ip).0;
        Checked {
            remote_identity: remote,
            local_identity: local,
            decision: decide(&t, dir, port, remote, Some(req)),
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
mod tests;
