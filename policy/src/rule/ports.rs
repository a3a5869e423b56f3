//! An element's ports: `toPorts` entries with their port numbers, ranges and names, and
//! the `icmps` fields; each becomes one [`L4Rule`] per (protocol, ports).

use super::compile::{Cx, SubjectKind};
use super::l7::l7_is_empty;
use super::values::icmp_type;
use super::*;
use crate::resolve::Direction;

/// Port rules of either kind, borrowed.
pub(super) enum Ports<'a> {
    Allow(&'a [model::PortRule]),
    Deny(&'a [model::PortDenyRule]),
}

impl Ports<'_> {
    /// How many port rules there are.
    pub(super) fn len(&self) -> usize {
        match self {
            Ports::Allow(p) => p.len(),
            Ports::Deny(p) => p.len(),
        }
    }
}

impl Cx {
    /// Compiles an element's `toPorts` entries into L4 rules.
    pub(super) fn port_rules(
        &mut self,
        path: &str,
        direction: Direction,
        subject: SubjectKind,
        ports: Ports<'_>,
    ) -> Vec<L4Rule> {
        let mut l4 = Vec::new();
        match ports {
            Ports::Allow(list) => {
                for (i, pr) in list.iter().enumerate() {
                    let p = format!("{path}.toPorts[{i}]");
                    self.port_rule(
                        &p,
                        direction,
                        subject,
                        pr.ports.as_deref(),
                        Some(pr),
                        &mut l4,
                    );
                }
            }
            Ports::Deny(list) => {
                for (i, pr) in list.iter().enumerate() {
                    let p = format!("{path}.toPorts[{i}]");
                    self.port_rule(&p, direction, subject, pr.ports.as_deref(), None, &mut l4);
                }
            }
        }
        l4
    }

    /// Compiles an element's `icmps` fields into L4 rules appended to `l4`.
    pub(super) fn icmps(
        &mut self,
        path: &str,
        icmps: Option<&[model::IcmpRule]>,
        l4: &mut Vec<L4Rule>,
    ) {
        for (i, ic) in icmps.into_iter().flatten().enumerate() {
            let p = format!("{path}.icmps[{i}]");
            let fields = ic.fields.as_deref().unwrap_or(&[]);
            if fields.len() > MAX_ICMP_FIELDS {
                self.err(
                    &format!("{p}.fields"),
                    format!(
                        "{} ICMP fields: at most {MAX_ICMP_FIELDS} are allowed",
                        fields.len()
                    ),
                );
            }
            for (j, fl) in fields.iter().enumerate() {
                let fp = format!("{p}.fields[{j}]");
                let v6 = match fl.family.as_deref() {
                    None | Some("") | Some("IPv4") => false,
                    Some("IPv6") => true,
                    Some(other) => {
                        self.err(
                            &format!("{fp}.family"),
                            format!("{other:?} is not IPv4 or IPv6"),
                        );
                        continue;
                    }
                };
                match icmp_type(&fl.icmp_type, v6) {
                    Ok(t) => l4.push(L4Rule {
                        proto: if v6 { Proto::Icmpv6 } else { Proto::Icmp },
                        ports: PortMatch::IcmpType(t),
                        l7: L7::None,
                        notes: vec![],
                        tls: None,
                    }),
                    Err(m) => self.err(&format!("{fp}.type"), m),
                }
            }
        }
    }

    /// Compiles one `toPorts` entry (`allow` is the entry itself for allow rules, whose L7
    /// rules and TLS settings deny rules do not have) into L4 rules appended to `out`.
    fn port_rule(
        &mut self,
        path: &str,
        direction: Direction,
        subject: SubjectKind,
        ports: Option<&[model::PortProtocol]>,
        allow: Option<&model::PortRule>,
        out: &mut Vec<L4Rule>,
    ) {
        let ports = ports.unwrap_or(&[]);
        if ports.len() > MAX_PORTS {
            self.err(
                &format!("{path}.ports"),
                format!(
                    "{} ports: at most {MAX_PORTS} are allowed in one rule",
                    ports.len()
                ),
            );
            return;
        }
        let rules = allow.and_then(|a| a.rules.as_ref());
        let has_rules = rules.is_some_and(|r| !l7_is_empty(r));
        let has_dns = rules.is_some_and(|r| r.dns.as_ref().is_some_and(|d| !d.is_empty()));
        let (notes, tls) = match allow {
            Some(a) => self.port_proxying(path, direction, subject, a, has_rules, has_dns),
            None => (Vec::new(), None),
        };

        let mut parsed = Vec::new();
        let mut zero_port = false;
        for (i, pp) in ports.iter().enumerate() {
            let p = format!("{path}.ports[{i}]");
            let proto = match pp.protocol.as_deref() {
                None | Some("") | Some("ANY") => Proto::Any,
                Some("TCP") => Proto::Tcp,
                Some("UDP") => Proto::Udp,
                Some("SCTP") => Proto::Sctp,
                Some(other) => {
                    self.err(
                        &format!("{p}.protocol"),
                        format!("{other:?} is not one of TCP, UDP, SCTP, ANY"),
                    );
                    continue;
                }
            };
            let Some(pm) = self.port(&p, pp, has_dns) else {
                continue;
            };
            if pm == PortMatch::ALL {
                zero_port = true;
            }
            if has_rules && !has_dns && proto != Proto::Tcp {
                self.err(
                    &format!("{p}.protocol"),
                    format!(
                        "L7 rules apply only to TCP (found {}); only DNS rules may use UDP or ANY",
                        proto.as_str()
                    ),
                );
            }
            parsed.push((proto, pm));
        }
        if ports.is_empty() {
            parsed.push((Proto::Any, PortMatch::ALL));
            if has_dns {
                self.err(
                    &format!("{path}.ports"),
                    "DNS rules need port 53 to be listed".into(),
                );
            }
        }
        let l7 = match rules {
            Some(r) if has_rules || r.l7.is_some() => {
                if zero_port && has_rules {
                    self.err(
                        &format!("{path}.rules"),
                        "L7 rules cannot be used when a port is 0 (every port)".into(),
                    );
                }
                self.l7(&format!("{path}.rules"), r)
            }
            _ => L7::None,
        };
        for (proto, ports) in parsed {
            out.push(L4Rule {
                proto,
                ports,
                l7: l7.clone(),
                notes: notes.clone(),
                tls: tls.clone(),
            });
        }
    }

    /// Parses one port (number, 0 for all, or name) with its `endPort`.
    fn port(&mut self, path: &str, pp: &model::PortProtocol, has_dns: bool) -> Option<PortMatch> {
        let s = pp.port.trim();
        if s.is_empty() {
            self.err(
                &format!("{path}.port"),
                "must be set (a port number, 0 for every port, or a port name)".into(),
            );
            return None;
        }
        if s.bytes().all(|b| b.is_ascii_digit()) {
            let Ok(n) = s.parse::<u32>() else {
                self.err(
                    &format!("{path}.port"),
                    format!("{s:?} is not a port number (0-65535)"),
                );
                return None;
            };
            if n > 65535 {
                self.err(
                    &format!("{path}.port"),
                    format!("{n} is not a port number (0-65535)"),
                );
                return None;
            }
            let start = n as u16;
            match pp.end_port {
                None | Some(0) => Some(if start == 0 {
                    PortMatch::ALL
                } else {
                    PortMatch::Range(start, start)
                }),
                Some(end) => {
                    if has_dns && end > i64::from(start) {
                        self.err(
                            &format!("{path}.endPort"),
                            "DNS rules do not support port ranges".into(),
                        );
                        return None;
                    }
                    if start == 0 {
                        self.err(
                            &format!("{path}.endPort"),
                            "a range cannot start at port 0".into(),
                        );
                        return None;
                    }
                    if !(i64::from(start)..=65535).contains(&end) {
                        self.err(
                            &format!("{path}.endPort"),
                            format!("{end} is not a valid end of a range starting at {start} (expected {start}-65535)"),
                        );
                        return None;
                    }
                    Some(PortMatch::Range(start, end as u16))
                }
            }
        } else if is_iana_service_name(s) {
            if pp.end_port.is_some_and(|e| e != 0) {
                self.err(
                    &format!("{path}.endPort"),
                    format!("a range cannot start at the named port {s:?}"),
                );
                return None;
            }
            Some(PortMatch::Named(s.to_ascii_lowercase()))
        } else {
            self.err(
                &format!("{path}.port"),
                format!("{s:?} is not a port number or a port name"),
            );
            None
        }
    }
}
