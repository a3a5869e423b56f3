//! The PeerAuthentication subscription: one ADS stream for `membrane.mesh.v1.MeshTls`, the
//! workload's effective mTLS mode per port that membrane-xds resolves from Istio's
//! PeerAuthentication objects. Each response is checked whole
//! (`membrane_api::mesh::Effective::from_proto`), put in force on the inbound capture
//! ([`MeshTls::set_peer_authentication`]: the next accepted connection uses it, established
//! ones are untouched) and ACKed, or NACKed with the reason while the last good modes stay.
//!
//! Its own stream and session beside the NPDS/NPHDS pair: the modes do not depend on
//! identity numbering, so they need not go in force together with the policy, and a
//! failure here never holds the policy back. While the control plane is away the last modes
//! stay in force; until the first response the `--mesh-tls-mode` setting applies.

use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status;
use membrane_api::mesh::{proto::MeshTls as MeshTlsMsg, Effective};
use membrane_api::type_url::MESH_TLS;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::XdsConfig;
use crate::mesh_tls::MeshTls;

/// gRPC status code INVALID_ARGUMENT, carried in a NACK's `error_detail`.
const INVALID_ARGUMENT: i32 = 3;

/// The effective modes a response carries: its one `MeshTls` (none: no PeerAuthentication
/// information, the setting applies), or why it cannot be applied.
pub(super) fn accept(resp: &DiscoveryResponse) -> Result<Effective, String> {
    match resp.resources.as_slice() {
        [] => Ok(Effective::default()),
        [a] => {
            if a.type_url != MESH_TLS {
                return Err(format!(
                    "resources[0]: type {:?}, expected {MESH_TLS:?}",
                    a.type_url
                ));
            }
            let m =
                MeshTlsMsg::decode(a.value.as_slice()).map_err(|e| format!("resources[0]: {e}"))?;
            Effective::from_proto(&m).map_err(|e| format!("resources[0]: {e}"))
        }
        many => Err(format!(
            "{} MeshTls resources; a sidecar has exactly one",
            many.len()
        )),
    }
}

fn reply(version: &str, nonce: &str, error: Option<String>) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version.to_owned(),
        response_nonce: nonce.to_owned(),
        type_url: MESH_TLS.into(),
        error_detail: error.map(|message| Status {
            code: INVALID_ARGUMENT,
            message,
            details: vec![],
        }),
        ..Default::default()
    }
}

/// Subscribes until the task is dropped; `on_first` runs once, after the first response
/// is in force.
pub(super) async fn subscribe(
    cfg: XdsConfig,
    mesh: Arc<MeshTls>,
    on_first: Box<dyn Fn() + Send + Sync>,
) {
    let mut version = String::new();
    let mut first = Some(on_first);
    let mut attempt = 0u32;
    loop {
        match session(&cfg, &mesh, &mut version, &mut first).await {
            Ok(true) => {
                attempt = 0;
                tracing::warn!("PeerAuthentication stream closed; reconnecting");
            }
            Ok(false) => tracing::warn!("PeerAuthentication stream closed; reconnecting"),
            Err(e) => tracing::warn!(
                error = %e,
                "PeerAuthentication stream failed; the last mesh mTLS modes stay in force"
            ),
        }
        let d = membrane_xds_client::backoff(cfg.backoff_initial, cfg.backoff_max, attempt);
        attempt = attempt.saturating_add(1);
        tokio::time::sleep(d).await;
    }
}

async fn session(
    cfg: &XdsConfig,
    mesh: &MeshTls,
    version: &mut String,
    first: &mut Option<Box<dyn Fn() + Send + Sync>>,
) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
    let conn = membrane_xds_client::connect(&cfg.address, cfg.tls.as_ref()).await?;
    let (tx, rx) = mpsc::channel(4);
    tx.try_send(DiscoveryRequest {
        node: Some(super::node(cfg)),
        version_info: version.clone(),
        type_url: MESH_TLS.into(),
        ..Default::default()
    })
    .expect("a new channel has room");
    let mut stream = AggregatedDiscoveryServiceClient::new(conn.channel.clone())
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let rotated = conn.rotated();
    tokio::pin!(rotated);
    let mut got_one = false;
    loop {
        let resp = tokio::select! {
            m = stream.message() => m?,
            _ = &mut rotated => {
                tracing::info!("xDS certificate files changed; reconnecting with them");
                return Ok(got_one);
            }
        };
        let Some(resp) = resp else {
            return Ok(got_one);
        };
        got_one = true;
        let answer = match accept(&resp) {
            Ok(e) => {
                mesh.set_peer_authentication(e);
                *version = resp.version_info.clone();
                if let Some(f) = first.take() {
                    f();
                }
                reply(version, &resp.nonce, None)
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    version = %resp.version_info,
                    "MeshTls rejected; the last good mesh mTLS modes stay in force"
                );
                reply(version, &resp.nonce, Some(e))
            }
        };
        tx.send(answer).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::Any;
    use membrane_api::mesh::Mode;

    fn resp(resources: Vec<Any>) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: "v1".into(),
            nonce: "1".into(),
            type_url: MESH_TLS.into(),
            resources,
            ..Default::default()
        }
    }

    fn any(m: &MeshTlsMsg) -> Any {
        Any {
            type_url: MESH_TLS.into(),
            value: m.encode_to_vec(),
        }
    }

    #[test]
    fn one_resource_is_applied_and_anything_else_is_named() {
        let e = Effective {
            mode: Some(Mode::Strict),
            ports: [(8080, Mode::Permissive)].into(),
            policies: vec!["foo/a".into()],
        };
        assert_eq!(accept(&resp(vec![any(&e.to_proto())])).unwrap(), e);
        assert_eq!(accept(&resp(vec![])).unwrap(), Effective::default());
        let two = accept(&resp(vec![any(&e.to_proto()), any(&e.to_proto())])).unwrap_err();
        assert!(two.contains("2 MeshTls resources"), "{two}");
        let mut bad = e.to_proto();
        bad.port_modes.insert(0, 3);
        let err = accept(&resp(vec![any(&bad)])).unwrap_err();
        assert!(err.contains("port_modes[0]"), "{err}");
        let mut wrong = any(&e.to_proto());
        wrong.type_url = "type.googleapis.com/cilium.NetworkPolicy".into();
        assert!(accept(&resp(vec![wrong])).unwrap_err().contains("expected"));
        let nack = reply("v0", "1", Some("x".into()));
        assert_eq!(
            (
                nack.version_info.as_str(),
                nack.error_detail.unwrap().message.as_str()
            ),
            ("v0", "x")
        );
    }
}
