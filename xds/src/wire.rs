//! Responses as the streams produce them and as they go on the wire.
//!
//! At fleet size the same resources go to thousands of streams. A response
//! therefore holds its resources by reference (`Arc<Any>`, shared with the
//! snapshot), and a state-of-the-world response that carries a whole type set
//! (a wildcard subscription, what every sidecar has) is written from that
//! set's encoding, made once per distinct set ([`TypeResources::wire`]) and
//! shared by every stream: per stream only the gRPC frame header and the nonce
//! are new bytes. The frames are handed to HTTP/2 as they are, so nothing a
//! stream sends stays allocated once the socket has it.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::config::core::v3::ControlPlane;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryResponse, DiscoveryResponse, Resource as DeltaResource,
};
use envoy_types::pb::google::protobuf::Any;
use prost::encoding::{self, encode_key, encode_varint, encoded_len_varint, key_len, WireType};

use crate::snapshot::TypeResources;

/// A state-of-the-world response (the fields of Envoy's `DiscoveryResponse`
/// membrane sends).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SotwResponse {
    /// The type's version.
    pub version_info: String,
    /// The resources, shared with the snapshot.
    pub resources: Vec<Arc<Any>>,
    /// Type URL.
    pub type_url: String,
    /// Nonce.
    pub nonce: String,
    /// Set when `resources` is exactly this set, in order: its shared
    /// encoding is written instead of the resources one by one.
    pub whole: Option<Arc<TypeResources>>,
    /// Who answers (debug responses).
    pub control_plane: Option<ControlPlane>,
}

/// A delta response (the fields of Envoy's `DeltaDiscoveryResponse` membrane sends).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeltaResponse {
    /// The type's version.
    pub system_version_info: String,
    /// Changed or added resources.
    pub resources: Vec<DeltaItem>,
    /// Type URL.
    pub type_url: String,
    /// Names removed.
    pub removed_resources: Vec<String>,
    /// Nonce.
    pub nonce: String,
}

/// One resource of a delta response.
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaItem {
    /// Resource name.
    pub name: String,
    /// Its version (content hash).
    pub version: String,
    /// The resource, shared with the snapshot.
    pub resource: Arc<Any>,
}

/// The field numbers of `DiscoveryResponse` and `DeltaDiscoveryResponse`.
const VERSION: u32 = 1;
const RESOURCES: u32 = 2;
const TYPE_URL: u32 = 4;
const NONCE: u32 = 5;
const REMOVED: u32 = 6;
const SOTW_CONTROL_PLANE: u32 = 6;
/// `Resource` (delta): version, resource, name.
const ITEM_VERSION: u32 = 1;
const ITEM_RESOURCE: u32 = 2;
const ITEM_NAME: u32 = 3;

/// The fields of a SotW response that carries all of `set` (version,
/// resources, type URL): what [`TypeResources::wire`] caches.
pub fn encode_set(type_url: &str, set: &TypeResources) -> Bytes {
    let version = &set.version;
    let mut len = encoding::string::encoded_len(VERSION, version);
    len += set
        .items
        .values()
        .map(|r| encoding::message::encoded_len(RESOURCES, &*r.body))
        .sum::<usize>();
    len += encoding::string::encoded_len(TYPE_URL, &type_url.to_string());
    let mut buf = BytesMut::with_capacity(len);
    encoding::string::encode(VERSION, version, &mut buf);
    for r in set.items.values() {
        encoding::message::encode(RESOURCES, &*r.body, &mut buf);
    }
    encoding::string::encode(TYPE_URL, &type_url.to_string(), &mut buf);
    buf.freeze()
}

/// The gRPC message prefix: not compressed, then the length (big endian).
fn grpc_header(len: usize, buf: &mut BytesMut) {
    buf.put_u8(0);
    buf.put_u32(len as u32);
}

impl SotwResponse {
    /// The Envoy message (a copy of every resource: for the generated
    /// services and tests; the wire path uses [`SotwResponse::frames`]).
    pub fn into_proto(self) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: self.version_info,
            resources: self.resources.iter().map(|a| (**a).clone()).collect(),
            type_url: self.type_url,
            nonce: self.nonce,
            control_plane: self.control_plane,
            ..Default::default()
        }
    }

    fn tail_len(&self) -> usize {
        encoding::string::encoded_len(NONCE, &self.nonce)
            + self
                .control_plane
                .as_ref()
                .map_or(0, |c| encoding::message::encoded_len(SOTW_CONTROL_PLANE, c))
    }

    fn encode_tail(&self, buf: &mut BytesMut) {
        encoding::string::encode(NONCE, &self.nonce, buf);
        if let Some(c) = &self.control_plane {
            encoding::message::encode(SOTW_CONTROL_PLANE, c, buf);
        }
    }

    /// The gRPC message as HTTP/2 data: the shared encoding of a whole set
    /// is referenced, not copied.
    pub fn frames(&self) -> Vec<Bytes> {
        if let Some(set) = self
            .whole
            .as_ref()
            .filter(|s| s.version == self.version_info)
        {
            let shared = set.wire(&self.type_url);
            let tail = self.tail_len();
            let mut head = BytesMut::with_capacity(5 + tail);
            grpc_header(shared.len() + tail, &mut head);
            self.encode_tail(&mut head);
            return vec![head.freeze(), shared];
        }
        let len = encoding::string::encoded_len(VERSION, &self.version_info)
            + self
                .resources
                .iter()
                .map(|a| encoding::message::encoded_len(RESOURCES, &**a))
                .sum::<usize>()
            + encoding::string::encoded_len(TYPE_URL, &self.type_url)
            + self.tail_len();
        let mut buf = BytesMut::with_capacity(5 + len);
        grpc_header(len, &mut buf);
        encoding::string::encode(VERSION, &self.version_info, &mut buf);
        for a in &self.resources {
            encoding::message::encode(RESOURCES, &**a, &mut buf);
        }
        encoding::string::encode(TYPE_URL, &self.type_url, &mut buf);
        self.encode_tail(&mut buf);
        vec![buf.freeze()]
    }
}

fn string_field_len(tag: u32, s: &str) -> usize {
    key_len(tag) + encoded_len_varint(s.len() as u64) + s.len()
}

fn put_string(tag: u32, s: &str, buf: &mut BytesMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(s.len() as u64, buf);
    buf.put_slice(s.as_bytes());
}

impl DeltaItem {
    fn body_len(&self) -> usize {
        string_field_len(ITEM_VERSION, &self.version)
            + encoding::message::encoded_len(ITEM_RESOURCE, &*self.resource)
            + string_field_len(ITEM_NAME, &self.name)
    }
}

impl DeltaResponse {
    /// The Envoy message (a copy of every resource).
    pub fn into_proto(self) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            system_version_info: self.system_version_info,
            resources: self
                .resources
                .into_iter()
                .map(|r| DeltaResource {
                    name: r.name,
                    version: r.version,
                    resource: Some((*r.resource).clone()),
                    ..Default::default()
                })
                .collect(),
            type_url: self.type_url,
            removed_resources: self.removed_resources,
            nonce: self.nonce,
            ..Default::default()
        }
    }

    /// The gRPC message as HTTP/2 data (one buffer; a delta carries only what changed).
    pub fn frames(&self) -> Vec<Bytes> {
        let mut len = string_field_len(VERSION, &self.system_version_info);
        for r in &self.resources {
            let body = r.body_len();
            len += key_len(RESOURCES) + encoded_len_varint(body as u64) + body;
        }
        len += string_field_len(TYPE_URL, &self.type_url) + string_field_len(NONCE, &self.nonce);
        len += self
            .removed_resources
            .iter()
            .map(|n| string_field_len(REMOVED, n))
            .sum::<usize>();
        let mut buf = BytesMut::with_capacity(5 + len);
        grpc_header(len, &mut buf);
        put_string(VERSION, &self.system_version_info, &mut buf);
        for r in &self.resources {
            encode_key(RESOURCES, WireType::LengthDelimited, &mut buf);
            encode_varint(r.body_len() as u64, &mut buf);
            put_string(ITEM_VERSION, &r.version, &mut buf);
            encoding::message::encode(ITEM_RESOURCE, &*r.resource, &mut buf);
            put_string(ITEM_NAME, &r.name, &mut buf);
        }
        put_string(TYPE_URL, &self.type_url, &mut buf);
        put_string(NONCE, &self.nonce, &mut buf);
        for n in &self.removed_resources {
            put_string(REMOVED, n, &mut buf);
        }
        vec![buf.freeze()]
    }
}

/// What the wire path sends: either kind of response.
pub trait Frames {
    /// The gRPC message as HTTP/2 data.
    fn frames(&self) -> Vec<Bytes>;
}

impl Frames for SotwResponse {
    fn frames(&self) -> Vec<Bytes> {
        SotwResponse::frames(self)
    }
}

impl Frames for DeltaResponse {
    fn frames(&self) -> Vec<Bytes> {
        DeltaResponse::frames(self)
    }
}

/// Checks an encoding against prost's (tests).
#[cfg(test)]
fn concat(frames: &[Bytes]) -> Vec<u8> {
    let all: Vec<u8> = frames.iter().flat_map(|b| b.iter().copied()).collect();
    let len = u32::from_be_bytes([all[1], all[2], all[3], all[4]]) as usize;
    assert_eq!(all[0], 0, "not compressed");
    assert_eq!(len, all.len() - 5, "the header counts the message");
    all[5..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::NetworkPolicyHosts;
    use crate::resource::{Resource, NETWORK_POLICY_HOSTS};
    use prost::Message;

    fn set() -> Arc<TypeResources> {
        TypeResources::shared((0..3u64).map(|i| {
            let h = NetworkPolicyHosts {
                policy: i,
                host_addresses: vec![format!("10.0.0.{i}/32")],
            };
            Resource::new(NETWORK_POLICY_HOSTS, i.to_string(), &h)
        }))
    }

    #[test]
    fn sotw_frames_decode_as_the_envoy_message_shared_or_not() {
        let set = set();
        let resources: Vec<Arc<Any>> = set.items.values().map(|r| r.body.clone()).collect();
        let whole = SotwResponse {
            version_info: set.version.clone(),
            resources: resources.clone(),
            type_url: NETWORK_POLICY_HOSTS.into(),
            nonce: "7".into(),
            whole: Some(set.clone()),
            control_plane: None,
        };
        let frames = whole.frames();
        assert_eq!(frames.len(), 2, "header and nonce, then the shared set");
        assert!(
            frames[1].as_ptr() == set.wire(NETWORK_POLICY_HOSTS).as_ptr(),
            "the set's encoding is shared, not copied"
        );
        let got = DiscoveryResponse::decode(concat(&frames).as_slice()).unwrap();
        assert_eq!(got, whole.clone().into_proto());

        let mut named = whole.clone();
        named.whole = None;
        named.resources.truncate(1);
        named.control_plane = Some(ControlPlane {
            identifier: "cp".into(),
        });
        let got = DiscoveryResponse::decode(concat(&named.frames()).as_slice()).unwrap();
        assert_eq!(got, named.into_proto());
    }

    #[test]
    fn delta_frames_decode_as_the_envoy_message() {
        let set = set();
        let resp = DeltaResponse {
            system_version_info: set.version.clone(),
            resources: set
                .items
                .values()
                .map(|r| DeltaItem {
                    name: r.name.clone(),
                    version: format!("{:016x}", r.hash),
                    resource: r.body.clone(),
                })
                .collect(),
            type_url: NETWORK_POLICY_HOSTS.into(),
            removed_resources: vec!["9".into(), "10".into()],
            nonce: "3".into(),
        };
        let got = DeltaDiscoveryResponse::decode(concat(&resp.frames()).as_slice()).unwrap();
        assert_eq!(got, resp.into_proto());
    }
}
