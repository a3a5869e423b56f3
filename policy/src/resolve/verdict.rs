//! Verdicts read off a resolved direction: the connection-level verdict for a peer and
//! port, and the HTTP decision for a request on it.

use super::*;

/// Allowed or denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Traffic passes.
    Allowed,
    /// Traffic is dropped (L3/L4) or answered 403 (L7).
    Denied,
}

impl Verdict {
    /// `allowed` / `denied`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Denied => "denied",
        }
    }
}

/// What a connection (remote identity, protocol, port) is subject to. Computed once per
/// connection by the proxy; each request is then checked with [`ConnPolicy::check_http`].
#[derive(Debug, Clone)]
pub enum ConnPolicy<'a> {
    /// No rule puts this direction under policy.
    NotEnforced,
    /// Dropped at L3/L4; `None` is default deny.
    Denied(Option<&'a PeerEntry>),
    /// Allowed with no L7 restriction, by this rule (`None`: default allow).
    Allowed(Option<&'a PeerEntry>),
    /// Allowed with no L7 restriction by the `allow-localhost` setting: the peer is the
    /// host and no rule naming the host covers the port ([`AllowLocalhost`]).
    AllowedLocalhost,
    /// Allowed at L4; each request must match one of these rules' HTTP rules.
    Http(Vec<&'a PeerEntry>),
    /// Denied: this allow rule's L7 rules are of a protocol membrane does not enforce, and
    /// the setting is [`UnenforcedL7Mode::FailClosed`] (see [`ConnPolicy::note`]).
    UnenforcedL7Denied(&'a PeerEntry),
    /// Allowed at L4 without this rule's L7 rules, of a protocol membrane does not
    /// enforce: the setting is [`UnenforcedL7Mode::L4Only`].
    UnenforcedL7AllowedL4(&'a PeerEntry),
}

/// The decision on one request.
#[derive(Debug, Clone)]
pub struct HttpDecision<'a> {
    /// The verdict.
    pub verdict: Verdict,
    /// The rule that decided, if one did.
    pub decided_by: Option<&'a PeerEntry>,
    /// Index of the matching HTTP rule within it.
    pub http_rule: Option<usize>,
    /// Header changes the matching rule asks for.
    pub header_actions: Vec<HeaderAction>,
}

impl<'a> ConnPolicy<'a> {
    /// The L3/L4 verdict.
    pub fn l4_verdict(&self) -> Verdict {
        match self {
            ConnPolicy::Denied(_) | ConnPolicy::UnenforcedL7Denied(_) => Verdict::Denied,
            ConnPolicy::NotEnforced
            | ConnPolicy::Allowed(_)
            | ConnPolicy::AllowedLocalhost
            | ConnPolicy::Http(_)
            | ConnPolicy::UnenforcedL7AllowedL4(_) => Verdict::Allowed,
        }
    }

    /// Why the verdict is what it is, beyond the rule that decided, when that matters to
    /// whoever reads a denial or an allow: today, the handling of L7 rules membrane does
    /// not enforce, and the host let in by allow-localhost.
    pub fn note(&self) -> Option<String> {
        let (e, mode) = match self {
            ConnPolicy::AllowedLocalhost => return Some(AllowLocalhost::explain().to_owned()),
            ConnPolicy::Denied(Some(e)) => {
                return e.auth.as_ref().map(|mode| {
                    format!(
                        "the rule allows only mutually authenticated peers (authentication.mode {mode:?}), which membrane does not authenticate: denied (fail closed), as Cilium drops the traffic until the peers are authenticated"
                    )
                });
            }
            ConnPolicy::UnenforcedL7Denied(e) => (e, UnenforcedL7Mode::FailClosed),
            ConnPolicy::UnenforcedL7AllowedL4(e) => (e, UnenforcedL7Mode::L4Only),
            _ => return None,
        };
        match &e.l7 {
            L7::Unenforced(kind) => Some(mode.explain(kind)),
            _ => None,
        }
    }

    /// True when requests on this connection need L7 inspection.
    pub fn needs_http(&self) -> bool {
        matches!(self, ConnPolicy::Http(_))
    }

    /// Decides one request.
    pub fn check_http(&self, req: &HttpRequest<'_>) -> HttpDecision<'a> {
        let simple = |verdict, by| HttpDecision {
            verdict,
            decided_by: by,
            http_rule: None,
            header_actions: vec![],
        };
        match self {
            ConnPolicy::NotEnforced => simple(Verdict::Allowed, None),
            ConnPolicy::Denied(by) => simple(Verdict::Denied, *by),
            ConnPolicy::Allowed(by) => simple(Verdict::Allowed, *by),
            ConnPolicy::AllowedLocalhost => simple(Verdict::Allowed, None),
            ConnPolicy::UnenforcedL7Denied(by) => simple(Verdict::Denied, Some(*by)),
            ConnPolicy::UnenforcedL7AllowedL4(by) => simple(Verdict::Allowed, Some(*by)),
            ConnPolicy::Http(entries) => {
                for e in entries {
                    if let L7::Http(rules) = &e.l7 {
                        for (i, r) in rules.iter().enumerate() {
                            if let Some(actions) = r.check(req) {
                                return HttpDecision {
                                    verdict: Verdict::Allowed,
                                    decided_by: Some(e),
                                    http_rule: Some(i),
                                    header_actions: actions,
                                };
                            }
                        }
                    }
                }
                // No HTTP rule matched: the rule whose HTTP rules refused it decided.
                simple(Verdict::Denied, entries.first().copied())
            }
        }
    }
}

impl DirectionPolicy {
    /// What a connection from/to `remote` on (`proto`, `port`) is subject to, for a layer
    /// that cannot see TLS (rules with serverNames count as matching; the proxy narrows
    /// them with [`DirectionPolicy::connection_sni`]). For ICMP, `port` is the ICMP type.
    pub fn connection(&self, remote: Identity, proto: Proto, port: u16) -> ConnPolicy<'_> {
        self.connection_filtered(remote, proto, port, |_| true)
    }

    /// [`DirectionPolicy::connection`] for a connection whose TLS ClientHello indicated
    /// `sni` (`None`: not TLS, or no SNI): allow rules with serverNames apply only when one
    /// of their names was indicated (Cilium: with serverNames, TLS must be present).
    pub fn connection_sni(
        &self,
        remote: Identity,
        proto: Proto,
        port: u16,
        sni: Option<&str>,
    ) -> ConnPolicy<'_> {
        self.connection_filtered(remote, proto, port, |r| r.admits_sni(sni))
    }

    /// The TLS settings the proxy applies to a connection from/to `remote` on (`proto`,
    /// `port`) that indicated `sni`: those of the first allow rule (in entry order) that
    /// applies to it and carries a TLS context. `None`: no TLS context applies.
    pub fn tls_for(
        &self,
        remote: Identity,
        proto: Proto,
        port: u16,
        sni: Option<&str>,
    ) -> Option<&Arc<PortTls>> {
        self.entries
            .iter()
            .filter(|e| e.covers(proto, port))
            .flat_map(|e| e.rules.iter())
            .filter(|r| !r.deny && r.remotes.contains(remote) && r.admits_sni(sni))
            .filter_map(|r| r.tls.as_ref())
            .find(|t| t.terminating.is_some() || t.originating.is_some())
    }

    /// Whether any rule on (`proto`, `port`) carries serverNames or a TLS context, so the
    /// proxy must read the TLS ClientHello before deciding.
    pub fn inspects_tls(&self, proto: Proto, port: u16) -> bool {
        self.enforced
            && self
                .entries
                .iter()
                .filter(|e| e.covers(proto, port))
                .flat_map(|e| e.rules.iter())
                .any(|r| r.tls.is_some())
    }

    fn connection_filtered(
        &self,
        remote: Identity,
        proto: Proto,
        port: u16,
        admit: impl Fn(&PeerEntry) -> bool,
    ) -> ConnPolicy<'_> {
        if !self.enforced {
            return ConnPolicy::NotEnforced;
        }
        let matching = || {
            self.entries
                .iter()
                .filter(move |e| e.covers(proto, port))
                .flat_map(|e| e.rules.iter())
                .filter(|r| r.remotes.contains(remote) && admit(r))
        };
        if let Some(d) = matching().find(|r| r.deny) {
            return ConnPolicy::Denied(Some(d));
        }
        if let Some(a) = matching().find(|r| !r.deny && r.l7 == L7::None) {
            return ConnPolicy::Allowed(Some(a));
        }
        let http: Vec<&PeerEntry> = matching()
            .filter(|r| !r.deny && matches!(r.l7, L7::Http(_)))
            .collect();
        if !http.is_empty() {
            return ConnPolicy::Http(http);
        }
        // Checked after L4-only and HTTP allows: those would admit the peer in Cilium too
        // (an L4 allow opens all of a port's L7), so only what this rule alone would admit
        // is refused.
        if let Some(u) = matching().find(|r| !r.deny && matches!(r.l7, L7::Unenforced(_))) {
            return match self.unenforced_l7 {
                UnenforcedL7Mode::FailClosed => ConnPolicy::UnenforcedL7Denied(u),
                UnenforcedL7Mode::L4Only => ConnPolicy::UnenforcedL7AllowedL4(u),
            };
        }
        // Cilium's host entry is L3-only: any rule naming the host on this port is more
        // specific and has decided above (or, filtered out by serverNames, still keeps
        // the host from this fallback).
        if self.localhost_allows(remote, proto, port) {
            return ConnPolicy::AllowedLocalhost;
        }
        if self.default_deny {
            ConnPolicy::Denied(None)
        } else {
            ConnPolicy::Allowed(None)
        }
    }

    /// HTTP rules that could apply on (`proto`, `port`) to anyone; used to tell whether a
    /// port needs the L7 proxy at all.
    pub fn has_http_on(&self, proto: Proto, port: u16) -> bool {
        self.entries
            .iter()
            .filter(|e| e.covers(proto, port))
            .flat_map(|e| e.rules.iter())
            .any(|r| matches!(r.l7, L7::Http(_)))
    }
}
