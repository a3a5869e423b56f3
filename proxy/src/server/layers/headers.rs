//! Header actions: the request headers as the upstream will see them. Which upgrade is
//! tunnelled (only listed protocols; any other Upgrade is removed with the Connection tokens
//! and the request goes upstream as plain HTTP), hop-by-hop headers out, Content-Length in
//! canonical form, then the allowing rule's header actions. Response headers get the same
//! hop-by-hop treatment in [`super::Forward`].

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::{Error, Exchange, Step};
use crate::policy::apply_header_actions;
use crate::server::upgrade::{upgrade_allowed, wants_upgrade};

/// See the module docs.
#[derive(Clone, Copy)]
pub(crate) struct HeaderActions;

impl Step for HeaderActions {
    fn step(&self, ex: &mut Exchange) -> Result<(), Error> {
        let types = &ex.rec.conn.shared.settings.upgrade_types;
        let tunnel = wants_upgrade(&ex.req) && upgrade_allowed(ex.req.headers(), types);
        ex.tunnel = tunnel;
        let h = ex.req.headers_mut();
        strip_hop_by_hop(h, tunnel);
        canonical_content_length(h);
        apply_header_actions(h, &ex.header_actions);
        Ok(())
    }
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), keeping `te: trailers` (gRPC) and, for an
/// upgrade, `connection: upgrade` + `upgrade`.
pub(super) fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE))
        .collect();
    for n in listed {
        h.remove(n);
    }
    for n in ["keep-alive", "proxy-connection", "transfer-encoding"] {
        h.remove(n);
    }
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        h.remove(header::CONNECTION);
        h.remove(header::UPGRADE);
    }
    let te_trailers = h
        .get_all(header::TE)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    h.remove(header::TE);
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// `Content-Length: 010` goes upstream as `10`: some parsers read leading zeros as octal.
/// (The guard has already refused anything but digits.)
fn canonical_content_length(h: &mut HeaderMap) {
    let Some(v) = h.get(header::CONTENT_LENGTH) else {
        return;
    };
    let b = v.as_bytes();
    if b.len() > 1 && b[0] == b'0' {
        if let Some(n) = v.to_str().ok().and_then(|t| t.trim().parse::<u64>().ok()) {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
}
