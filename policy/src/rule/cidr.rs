//! CIDR peers: parsing prefixes, subtracting `except` lists, and the `fromCIDR` /
//! `fromCIDRSet` (and `to…`) fields of an element.

use super::compile::Cx;
use super::names::is_dns_label_path;
use super::peers::PeerFields;
use super::*;

/// Parses a prefix; `allow_bare_ip` accepts an address as a host prefix (fromCIDR does,
/// fromCIDRSet does not). Host bits must be zero, as Go's netip.ParsePrefix then Masked
/// would not silently fix them for us.
pub fn parse_cidr(s: &str, allow_bare_ip: bool) -> Result<IpNet, String> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    if allow_bare_ip {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(IpNet::from(ip));
        }
    }
    Err(format!(
        "{s:?} is not a CIDR prefix (expected e.g. 10.0.0.0/8 or 2001:db8::/32)"
    ))
}

/// Test manifests carry placeholders such as `NODE_WITHOUT_CILIUM_IP/32` that their harness
/// substitutes: an upper-case identifier, optionally with a prefix length.
pub(super) fn is_template_placeholder(s: &str) -> bool {
    let name = s.split_once('/').map_or(s, |(n, len)| {
        if len.bytes().all(|b| b.is_ascii_digit()) {
            n
        } else {
            ""
        }
    });
    name.len() >= 3
        && name.bytes().next().is_some_and(|b| b.is_ascii_uppercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        && name.contains('_')
}

/// `net` minus every prefix in `excepts`, as a minimal list of prefixes.
pub fn subtract(net: IpNet, excepts: &[IpNet]) -> Vec<IpNet> {
    let mut parts = vec![net];
    for ex in excepts {
        let mut next = Vec::new();
        for p in parts {
            if !p.contains(&ex.network()) && !ex.contains(&p.network()) {
                next.push(p);
            } else if ex.contains(&p) {
                // fully excluded
            } else {
                // p strictly contains ex: split p in halves until ex is isolated.
                let mut cur = p;
                while cur.prefix_len() < ex.prefix_len() {
                    let Ok(mut halves) = cur.subnets(cur.prefix_len() + 1) else {
                        break;
                    };
                    let (Some(a), Some(b)) = (halves.next(), halves.next()) else {
                        break;
                    };
                    if a.contains(&ex.network()) {
                        next.push(b);
                        cur = a;
                    } else {
                        next.push(a);
                        cur = b;
                    }
                }
            }
        }
        parts = next;
    }
    parts.sort();
    parts
}

impl Cx {
    /// Compiles an element's `…CIDR` and `…CIDRSet` peers into `peers`.
    pub(super) fn cidr_peers(
        &mut self,
        path: &str,
        pre: &str,
        f: &PeerFields<'_>,
        peers: &mut Vec<Peer>,
    ) {
        for (i, c) in f.cidr.into_iter().flatten().enumerate() {
            match parse_cidr(c, true) {
                Ok(net) => peers.push(Peer::Cidr(net)),
                Err(_) if is_template_placeholder(c) => {
                    self.warnings.push(FieldError {
                        path: format!("{path}.{pre}CIDR[{i}]"),
                        message: format!("{c:?} is an unrendered template placeholder, not an address: it selects nothing until rendered"),
                    });
                    peers.push(Peer::Unresolved(format!("placeholder {c}")));
                }
                Err(m) => self.err(&format!("{path}.{pre}CIDR[{i}]"), m),
            }
        }
        for (i, c) in f.cidr_set.into_iter().flatten().enumerate() {
            let p = format!("{path}.{pre}CIDRSet[{i}]");
            match (&c.cidr, &c.cidr_group_ref) {
                (Some(_), Some(_)) => {
                    self.err(&p, "cidr and cidrGroupRef are mutually exclusive".into())
                }
                (None, None) => self.err(&p, "one of cidr or cidrGroupRef is required".into()),
                (None, Some(g)) => {
                    if !is_dns_label_path(g) {
                        self.err(
                            &format!("{p}.cidrGroupRef"),
                            format!("{g:?} is not a valid CiliumCIDRGroup name"),
                        );
                    }
                    peers.push(Peer::Unresolved(format!("cidrGroupRef {g}")));
                }
                (Some(cidr), None) => match parse_cidr(cidr, false) {
                    Err(m) => self.err(&format!("{p}.cidr"), m),
                    Ok(net) => {
                        let mut excepts = Vec::new();
                        for (j, e) in c.except.iter().flatten().enumerate() {
                            match parse_cidr(e, false) {
                                Err(m) => self.err(&format!("{p}.except[{j}]"), m),
                                Ok(ex)
                                    if !net.contains(&ex.network())
                                        || ex.prefix_len() < net.prefix_len() =>
                                {
                                    self.err(
                                        &format!("{p}.except[{j}]"),
                                        format!("{e:?} is not inside the rule's cidr {cidr:?}"),
                                    )
                                }
                                Ok(ex) => excepts.push(ex),
                            }
                        }
                        for part in subtract(net, &excepts) {
                            peers.push(Peer::Cidr(part));
                        }
                    }
                },
            }
        }
    }
}
