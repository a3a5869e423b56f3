//! What a port rule asks of the proxy: its L7 rules (HTTP compiled, Kafka, DNS and
//! `l7proto` checked and reported as unenforced), its TLS settings (server names, the
//! secrets that terminate and originate TLS) and Envoy listener references.

use super::compile::{Cx, SubjectKind};
use super::*;
use crate::resolve::Direction;

impl Cx {
    /// Checks an allow port rule's TLS and listener settings; the notes to show for them and
    /// the TLS settings, if any.
    pub(super) fn port_proxying(
        &mut self,
        path: &str,
        direction: Direction,
        subject: SubjectKind,
        a: &model::PortRule,
        has_rules: bool,
        has_dns: bool,
    ) -> (Vec<String>, Option<Arc<PortTls>>) {
        let mut notes = Vec::new();
        let mut tls = None;
        if direction == Direction::Ingress && has_dns {
            self.err(
                &format!("{path}.rules.dns"),
                "DNS rules are not allowed on ingress".into(),
            );
        }
        if subject == SubjectKind::Nodes && has_rules {
            self.err(
                &format!("{path}.rules"),
                "host policies (nodeSelector) do not support L7 rules".into(),
            );
        }
        let sni = a.server_names.as_deref().unwrap_or(&[]);
        if !sni.is_empty() && has_rules && a.terminating_tls.is_none() {
            self.err(
                    &format!("{path}.serverNames"),
                    "serverNames with L7 rules need terminatingTLS (the proxy cannot see inside TLS otherwise)".into(),
                );
        }
        for (i, s) in sni.iter().enumerate() {
            if s.is_empty() {
                self.err(
                    &format!("{path}.serverNames[{i}]"),
                    "empty server name is not allowed".into(),
                );
            }
        }
        if !sni.is_empty() {
            notes.push(format!("serverNames {}", sni.join(",")));
        }
        let mut sources = [None, None];
        for (slot, (name, ctx)) in sources.iter_mut().zip([
            ("terminatingTLS", &a.terminating_tls),
            ("originatingTLS", &a.originating_tls),
        ]) {
            if let Some(t) = ctx {
                if t.secret.name.is_empty() {
                    self.err(
                        &format!("{path}.{name}.secret.name"),
                        "must not be empty".into(),
                    );
                }
                for (key, v) in [
                    ("certificate", &t.certificate),
                    ("privateKey", &t.private_key),
                    ("trustedCA", &t.trusted_ca),
                ] {
                    if v.as_deref() == Some("") {
                        self.err(
                            &format!("{path}.{name}.{key}"),
                            "must not be empty when given (omit it for the default item)".into(),
                        );
                    }
                }
                // A reference that names no namespace means the policy's own
                // (`default` for cluster-wide policies).
                let namespace = t
                    .secret
                    .namespace
                    .clone()
                    .filter(|n| !n.is_empty())
                    .or_else(|| self.namespace.clone())
                    .unwrap_or_else(|| "default".to_owned());
                notes.push(format!("{name} secret {namespace}/{}", t.secret.name));
                *slot = Some(TlsSource::Secret {
                    namespace,
                    name: t.secret.name.clone(),
                    certificate: t.certificate.clone(),
                    private_key: t.private_key.clone(),
                    trusted_ca: t.trusted_ca.clone(),
                });
            }
        }
        let [terminating, originating] = sources;
        if !sni.is_empty() || terminating.is_some() || originating.is_some() {
            tls = Some(Arc::new(PortTls {
                server_names: sni
                    .iter()
                    .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
                    .collect(),
                terminating,
                originating,
            }));
        }
        if let Some(l) = &a.listener {
            if direction == Direction::Ingress {
                self.err(
                    &format!("{path}.listener"),
                    format!("listener {:?} is not allowed on ingress", l.name),
                );
            }
            if has_rules {
                self.err(
                    &format!("{path}.listener"),
                    format!("listener {:?} is not allowed with L7 rules", l.name),
                );
            }
            if let Some(k) = &l.envoy_config.kind {
                if k != "CiliumEnvoyConfig" && k != "CiliumClusterwideEnvoyConfig" {
                    self.err(
                        &format!("{path}.listener.envoyConfig.kind"),
                        format!("{k:?} is not CiliumEnvoyConfig or CiliumClusterwideEnvoyConfig"),
                    );
                }
            }
            notes.push(format!("listener {}/{}", l.envoy_config.name, l.name));
        }
        (notes, tls)
    }

    /// Compiles a port rule's L7 rules: HTTP rules are enforced, the others are checked and
    /// reported as unenforced.
    pub(super) fn l7(&mut self, path: &str, r: &model::L7Rules) -> L7 {
        let mut kinds = Vec::new();
        let mut result = L7::None;
        if let Some(http) = &r.http {
            kinds.push("http");
            let mut compiled = Vec::new();
            for (i, h) in http.iter().enumerate() {
                match CompiledHttpRule::compile(h, self.namespace.as_deref()) {
                    Ok(c) => compiled.push(c),
                    Err(e) => self.err(&format!("{path}.http[{i}].{}", e.field), e.message),
                }
            }
            result = L7::Http(compiled.into());
        }
        if let Some(k) = &r.kafka {
            kinds.push("kafka");
            for (i, kr) in k.iter().enumerate() {
                self.kafka(&format!("{path}.kafka[{i}]"), kr);
            }
            result = L7::Unenforced("kafka".into());
        }
        if let Some(d) = &r.dns {
            kinds.push("dns");
            for (i, q) in d.iter().enumerate() {
                self.fqdn(&format!("{path}.dns[{i}]"), q);
            }
            result = L7::Unenforced("dns".into());
        }
        if r.l7.is_some() && r.l7proto.as_deref().is_none_or(str::is_empty) {
            self.err(
                &format!("{path}.l7"),
                "l7 rules need l7proto to name their parser".into(),
            );
        }
        if let Some(p) = r.l7proto.as_deref().filter(|p| !p.is_empty()) {
            kinds.push("l7proto");
            result = L7::Unenforced(format!("l7proto {p}"));
        }
        if kinds.len() > 1 {
            self.err(
                path,
                format!(
                    "one L7 protocol per port rule: found {}",
                    kinds.join(" and ")
                ),
            );
        } else if let L7::Unenforced(_) = &result {
            // Cilium accepts these, and so does membrane; but nothing here checks their
            // messages, so the user must learn what happens instead.
            let (field, what) = match kinds[0] {
                "kafka" => ("kafka", "Kafka rules".to_owned()),
                "dns" => ("dns", "DNS rules".to_owned()),
                _ => (
                    "l7proto",
                    format!("l7proto {:?} rules", r.l7proto.as_deref().unwrap_or("")),
                ),
            };
            self.warnings.push(FieldError {
                path: format!("{path}.{field}"),
                message: format!(
                    "{what} are not enforced by membrane: the peers and ports this rule covers are denied (fail closed) unless membrane runs with --unenforced-l7 l4-only, which allows them at L4 without the rules"
                ),
            });
        }
        result
    }

    /// Checks one Kafka rule's fields.
    fn kafka(&mut self, path: &str, k: &model::KafkaRule) {
        const API_KEYS: &[&str] = &[
            "produce",
            "fetch",
            "offsets",
            "metadata",
            "leaderandisr",
            "stopreplica",
            "updatemetadata",
            "controlledshutdown",
            "offsetcommit",
            "offsetfetch",
            "findcoordinator",
            "joingroup",
            "heartbeat",
            "leavegroup",
            "syncgroup",
            "describegroups",
            "listgroups",
            "saslhandshake",
            "apiversions",
            "createtopics",
            "deletetopics",
        ];
        if let Some(role) = k.role.as_deref().filter(|r| !r.is_empty()) {
            if role != "produce" && role != "consume" {
                self.err(
                    &format!("{path}.role"),
                    format!("{role:?} is not produce or consume"),
                );
            }
            if k.api_key.as_deref().is_some_and(|a| !a.is_empty()) {
                self.err(path, "role and apiKey are mutually exclusive".into());
            }
        }
        if let Some(a) = k.api_key.as_deref().filter(|a| !a.is_empty()) {
            if !API_KEYS.contains(&a.to_ascii_lowercase().as_str()) && a.parse::<i16>().is_err() {
                self.err(
                    &format!("{path}.apiKey"),
                    format!("{a:?} is not a Kafka API key"),
                );
            }
        }
        if let Some(v) = k.api_version.as_deref().filter(|v| !v.is_empty()) {
            if v.parse::<i16>().is_err() {
                self.err(
                    &format!("{path}.apiVersion"),
                    format!("{v:?} is not a number"),
                );
            }
        }
        if let Some(t) = k.topic.as_deref().filter(|t| !t.is_empty()) {
            let ok = t.len() <= 255
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !ok {
                self.err(
                    &format!("{path}.topic"),
                    format!("{t:?} is not a valid Kafka topic name"),
                );
            }
        }
    }
}

/// True when a port rule's `rules` name no L7 rule at all.
pub(super) fn l7_is_empty(r: &model::L7Rules) -> bool {
    r.http.as_ref().is_none_or(Vec::is_empty)
        && r.kafka.as_ref().is_none_or(Vec::is_empty)
        && r.dns.as_ref().is_none_or(Vec::is_empty)
        && r.l7proto.as_deref().is_none_or(str::is_empty)
}
