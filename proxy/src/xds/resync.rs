//! What an NPDS or NPHDS response does to the policy in force: the client's state machine,
//! without I/O. [`Accepted`] is what is in force (it outlives sessions); a [`Session`] is
//! one connection's pair of streams, and answers each response with the enforcer to put in
//! force (if any) and the ACK or NACK to send.
//!
//! A session's first NPDS and first NPHDS are put in force together, never one beside the
//! other's previous version. NPDS names peers by identity number and NPHDS maps numbers to
//! addresses, and a control plane that is not the one the policy in force came from (one
//! restarted with a directory source, which numbers identities afresh, or another
//! replica) may number them differently: the new NPDS beside the old NPHDS, or the other
//! way round, would allow or deny peers by numbers that mean something else, for as long
//! as the two streams' reconnects are apart. So the first response of each type waits,
//! unanswered (the control plane sends nothing newer of that type meanwhile), until the
//! other's arrives; the last good policy stays in force until then. Within a session the
//! numbers are one process's and stay put, and updates go in force one at a time.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status;
use membrane_api::proto::{NetworkPolicy, NetworkPolicyHosts};
use prost::Message;

use super::Kind;
use crate::policy::npds::{self, Received, Subscription};
use crate::policy::Enforcer;

/// gRPC status code INVALID_ARGUMENT, carried in a NACK's `error_detail`.
const INVALID_ARGUMENT: i32 = 3;

/// The resources in force, with their versions (from any session).
#[derive(Default)]
pub(super) struct Accepted {
    npds: Option<Subscription<NetworkPolicy>>,
    nphds: Option<Subscription<NetworkPolicyHosts>>,
}

impl Accepted {
    /// The version in force of `kind`, if any.
    pub(super) fn version(&self, kind: Kind) -> Option<&str> {
        match kind {
            Kind::Npds => self.npds.as_ref().map(|x| x.version.as_str()),
            Kind::Nphds => self.nphds.as_ref().map(|x| x.version.as_str()),
        }
    }

    fn ready(&self) -> bool {
        self.npds.is_some() && self.nphds.is_some()
    }
}

/// What the enforcer is built for.
pub(super) struct Target {
    /// The endpoint whose policy is enforced.
    pub pod_ip: IpAddr,
    /// Shown in `/config_dump`.
    pub address: String,
    /// Shown in `/config_dump`.
    pub node_id: String,
}

/// A response waiting for the other type's first one.
struct Held<T> {
    version: String,
    nonce: String,
    resources: Arc<Vec<T>>,
}

impl<T> Held<T> {
    /// What goes in force when this response is accepted now.
    fn accept(&self) -> Subscription<T> {
        Subscription {
            version: self.version.clone(),
            updated: SystemTime::now(),
            resources: self.resources.clone(),
        }
    }
}

/// What one response leads to.
#[derive(Default)]
pub(super) struct Step {
    /// The enforcer to put in force.
    pub enforce: Option<Enforcer>,
    /// ACKs and NACKs to send, each on its type's stream.
    pub replies: Vec<(Kind, DiscoveryRequest)>,
    /// Why an update was rejected (it was NACKed).
    pub rejected: Option<String>,
    /// Both types are in force for the first time.
    pub became_ready: bool,
}

/// One session: a pair of streams to one control plane.
#[derive(Default)]
pub(super) struct Session {
    held_npds: Option<Held<NetworkPolicy>>,
    held_nphds: Option<Held<NetworkPolicyHosts>>,
    /// Both first responses are in force; later ones go in one at a time.
    synced: bool,
}

fn decode<M: Message + Default>(resp: &DiscoveryResponse, kind: Kind) -> Result<Vec<M>, String> {
    resp.resources
        .iter()
        .enumerate()
        .map(|(i, a)| {
            if a.type_url != kind.type_url() {
                return Err(format!(
                    "resources[{i}]: type {:?}, expected {:?}",
                    a.type_url,
                    kind.type_url()
                ));
            }
            M::decode(a.value.as_slice()).map_err(|e| format!("resources[{i}]: {e}"))
        })
        .collect()
}

/// The reply to the response with `nonce`: an ACK of `version`, or a NACK (`version`
/// being the last good one) when there is an error.
fn reply(kind: Kind, version: Option<&str>, nonce: &str, error: Option<&str>) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version.unwrap_or_default().to_owned(),
        response_nonce: nonce.to_owned(),
        type_url: kind.type_url().into(),
        error_detail: error.map(|message| Status {
            code: INVALID_ARGUMENT,
            message: message.to_owned(),
            details: vec![],
        }),
        ..Default::default()
    }
}

impl Session {
    /// Handles one response of `kind`.
    pub(super) fn on_response(
        &mut self,
        accepted: &mut Accepted,
        target: &Target,
        kind: Kind,
        resp: &DiscoveryResponse,
    ) -> Step {
        let was_ready = accepted.ready();
        let mut step = Step::default();
        let nack = |step: &mut Step, accepted: &Accepted, kind: Kind, nonce: &str, e: String| {
            tracing::error!(type_url = kind.type_url(), error = %e, "xDS update rejected (NACK); last good policy stays in force");
            step.replies
                .push((kind, reply(kind, accepted.version(kind), nonce, Some(&e))));
            step.rejected = Some(e);
        };
        // Each type is checked on its own first, so a bad one is NACKed at once.
        let (version, nonce) = (resp.version_info.clone(), resp.nonce.clone());
        match kind {
            Kind::Npds => match decode::<NetworkPolicy>(resp, kind) {
                Ok(resources) => {
                    self.held_npds = Some(Held {
                        version,
                        nonce,
                        resources: Arc::new(resources),
                    })
                }
                Err(e) => {
                    nack(&mut step, accepted, kind, &resp.nonce, e);
                    return step;
                }
            },
            Kind::Nphds => {
                match decode::<NetworkPolicyHosts>(resp, kind)
                    .and_then(|h| npds::ipcache(&h).map(|_| h).map_err(|e| e.to_string()))
                {
                    Ok(resources) => {
                        self.held_nphds = Some(Held {
                            version,
                            nonce,
                            resources: Arc::new(resources),
                        })
                    }
                    Err(e) => {
                        nack(&mut step, accepted, kind, &resp.nonce, e);
                        return step;
                    }
                }
            }
        }
        // What to build from: what this session holds, and (once synced) what is in force.
        let held_npds = self.held_npds.as_ref().map(Held::accept);
        let held_nphds = self.held_nphds.as_ref().map(Held::accept);
        let pair = match self.synced {
            false => held_npds.zip(held_nphds),
            true => held_npds
                .or_else(|| accepted.npds.clone())
                .zip(held_nphds.or_else(|| accepted.nphds.clone())),
        };
        let Some((npds_in, nphds_in)) = pair else {
            tracing::info!(
                type_url = kind.type_url(),
                version = %resp.version_info,
                "xDS update held until this control plane's first {} arrives",
                kind.other().type_url()
            );
            return step;
        };
        let summary = serde_json::json!({
            "source": "xds",
            "xds_address": target.address,
            "node_id": target.node_id,
            "npds_version": npds_in.version,
            "nphds_version": nphds_in.version,
        });
        let built = npds::build(
            target.pod_ip,
            &npds_in.resources,
            &nphds_in.resources,
            summary,
        );
        match built {
            Ok(mut e) => {
                e.received = Some(Arc::new(Received {
                    node_id: target.node_id.clone(),
                    npds: npds_in.clone(),
                    nphds: nphds_in.clone(),
                }));
                step.enforce = Some(e);
                self.synced = true;
                if let Some(h) = self.held_npds.take() {
                    accepted.npds = Some(npds_in);
                    step.replies.push((
                        Kind::Npds,
                        reply(Kind::Npds, accepted.version(Kind::Npds), &h.nonce, None),
                    ));
                }
                if let Some(h) = self.held_nphds.take() {
                    accepted.nphds = Some(nphds_in);
                    step.replies.push((
                        Kind::Nphds,
                        reply(Kind::Nphds, accepted.version(Kind::Nphds), &h.nonce, None),
                    ));
                }
                tracing::info!(type_url = kind.type_url(), version = %resp.version_info, "xDS update in force (ACK)");
            }
            Err(e) => {
                let e = e.to_string();
                match self.held_npds.take() {
                    // The ipcache was checked on its own: what fails is the policy. Held
                    // hosts wait for an NPDS that builds.
                    Some(h) => nack(&mut step, accepted, Kind::Npds, &h.nonce, e),
                    // Only the hosts were new (the session is synced): they do not fit
                    // the policy in force.
                    None => {
                        self.held_nphds = None;
                        nack(&mut step, accepted, Kind::Nphds, &resp.nonce, e);
                    }
                }
            }
        }
        step.became_ready = !was_ready && accepted.ready();
        step
    }
}

#[cfg(test)]
mod tests;
