//! Policy: the verdict of the snapshot in force (loaded once per request) on the normalized
//! request; a denial ends the exchange with [`Denied`], an allow leaves the deciding rule
//! and its header actions on the exchange.

use super::{Denied, Error, Exchange, Step};
use crate::policy::{Decision, Direction, RequestView};

/// See the module docs.
#[derive(Clone, Copy)]
pub(crate) struct PolicyCheck;

impl Step for PolicyCheck {
    fn step(&self, ex: &mut Exchange) -> Result<(), Error> {
        let conn = &*ex.rec.conn;
        let checked = conn.shared.policy.load().check(
            conn.route.remote(conn.peer),
            conn.route.dir,
            conn.route.target.port(),
            &RequestView {
                method: ex.req.method().as_str(),
                path: &ex.rec.path,
                host: ex.rec.host.as_deref(),
                headers: ex.req.headers(),
                sni: conn.sni.as_deref(),
                peer_id: conn.mesh_peer.as_deref().map(|p| p.spiffe_id.as_str()),
                secrets: &*conn.shared.secrets,
            },
        );
        ex.rec.identities = match conn.route.dir {
            Direction::Ingress => (checked.remote_identity, checked.local_identity),
            Direction::Egress => (checked.local_identity, checked.remote_identity),
        };
        ex.rec.by_rule = checked.by_rule;
        match checked.decision {
            Decision::Deny { decided_by } => Err(Denied { decided_by }.into()),
            Decision::Allow {
                decided_by,
                header_actions,
            } => {
                ex.rec.decided_by = decided_by;
                ex.header_actions = header_actions;
                Ok(())
            }
        }
    }
}
