//! Monitor events: the one record every producer of the event stream writes and every
//! consumer reads. The node agent decodes its ring buffers into [`Event`]s, the sidecars
//! report each HTTP request they decided as an [`Event`] of type `l7`, the agent streams
//! them as JSON lines (`membrane monitor`), and the relay merges the nodes' streams.
//!
//! Unknown fields are ignored and absent ones take their defaults, so an older reader
//! still understands a newer writer.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// `type` of a record that reports events a subscriber missed.
pub const TYPE_LOST: &str = "lost";
/// `type` of an HTTP request as a sidecar decided it (see [`L7`]).
pub const TYPE_L7: &str = "l7";

/// One monitor event as the agent streams it (one JSON object per line).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Event {
    /// The node (agent) that saw it.
    pub node: String,
    /// When, RFC 3339 UTC with nanoseconds.
    pub time: String,
    /// `policy-verdict`, `capture`, `trace`, `drop` (a packet the packet path or the
    /// XDP prefilter dropped), `l7` (a request a sidecar decided), `node-status` (the
    /// relay: a node's stream came, went or cannot be reached; `reason` says which), or
    /// `lost` (a subscriber fell behind; `count` events were skipped).
    #[serde(rename = "type")]
    pub kind: String,
    /// Emitting program: `connect4`, `connect6`, `sockops`, `sk_msg`, `sk_lookup`,
    /// a packet-path observation point: `from-container`, `to-container`,
    /// `from-overlay`, `from-netdev`, `to-netdev`, `xdp` (the prefilter), or `sidecar`
    /// for `l7` records.
    pub program: String,
    /// IP protocol number of the flow; 0 when the emitter did not know.
    #[serde(skip_serializing_if = "is_zero")]
    pub proto: u8,
    /// Policy verdicts and `l7` records: `allowed` or `denied`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// Why (see `MB_RSN_*` in `membrane_abi.h`): `policy-denied`,
    /// `no-decision`, `outbound`, `inbound`, `spliced`, `no-peer`, ...
    pub reason: String,
    /// Source identity (0 = unknown).
    pub src_identity: u32,
    /// Destination identity (0 = unknown).
    pub dst_identity: u32,
    /// Source address, when the socket had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    /// The destination asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
    /// Capture: where the connection went instead (the proxy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The source pod, `namespace/name`, when the writer knew it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_pod: Option<String>,
    /// The destination pod, `namespace/name`, when the writer knew it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_pod: Option<String>,
    /// Policy revision in force.
    pub revision: u32,
    /// Socket cookie (0 = unknown): ties events of one connection together.
    pub cookie: u64,
    /// Occurrences this record stands for (rate-limited records, `lost`).
    pub count: u64,
    /// `l7` records: the request and its fate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l7: Option<L7>,
}

/// One HTTP request as a sidecar decided it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct L7 {
    /// `ingress` (the sidecar's inbound listener) or `egress` (outbound).
    pub direction: String,
    /// `HTTP/1.1`, `HTTP/2`, ...
    pub protocol: String,
    /// Request method.
    pub method: String,
    /// Request path (with query), as received.
    pub path: String,
    /// `:authority` / `Host`, when present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Response status sent to the client (403 for a policy denial); 0 when none was
    /// sent (the client went away, the upstream failed before a status).
    pub status: u16,
    /// The rule that decided, as the policy engine names origins
    /// (`default/rule1 spec.ingress[0]`), when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The peer's verified SPIFFE id (mesh mTLS), when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_spiffe_id: Option<String>,
}

fn is_zero(v: &u8) -> bool {
    *v == 0
}

impl Event {
    /// True for a verdict that refused a connection or a request, or a dropped packet:
    /// what `--type drop` shows.
    pub fn is_drop(&self) -> bool {
        ((self.kind == "policy-verdict" || self.kind == TYPE_L7)
            && self.verdict.as_deref() == Some("denied"))
            || self.kind == "drop"
    }

    /// A `lost` record: `n` events were skipped; `reason` says where
    /// (`slow-subscriber`: this stream fell behind; `ring-buffer-full`: the
    /// kernel had no room, every subscriber missed them).
    pub fn lost(node: &str, n: u64, reason: &str) -> Self {
        Self {
            node: node.to_owned(),
            time: rfc3339(SystemTime::now()),
            kind: TYPE_LOST.to_owned(),
            reason: reason.to_owned(),
            count: n,
            ..Self::default()
        }
    }
}

/// `t` as the events write it: RFC 3339, UTC, nanoseconds.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_record_without_the_new_fields_still_reads() {
        let e: Event = serde_json::from_str(
            r#"{"node":"n1","time":"2026-01-01T00:00:00Z","type":"drop","program":"to-container","reason":"policy-denied","src_identity":7,"dst_identity":9,"revision":1,"cookie":0,"count":1,"future":true}"#,
        )
        .unwrap();
        assert!(e.is_drop());
        assert_eq!(e.l7, None);
        assert_eq!(e.src_pod, None);
    }

    #[test]
    fn a_denied_request_is_a_drop_and_round_trips() {
        let e = Event {
            kind: TYPE_L7.to_owned(),
            program: "sidecar".to_owned(),
            verdict: Some("denied".to_owned()),
            l7: Some(L7 {
                direction: "ingress".to_owned(),
                method: "PUT".to_owned(),
                path: "/v1/exhaust-port".to_owned(),
                status: 403,
                ..L7::default()
            }),
            ..Event::default()
        };
        assert!(e.is_drop());
        let back: Event = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back, e);
    }
}
