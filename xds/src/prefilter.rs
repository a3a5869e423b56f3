//! membrane's `PrefilterDenyList` (`membrane.io/v1alpha1`, cluster-scoped): the cluster-wide
//! deny list of the agents' XDP prefilter. The room where the objects are read and checked;
//! each checked object becomes one `membrane.agent.v1.PrefilterDenyList` resource that every
//! agent is served, and the agent denies the union of all of them and of its node's
//! `membrane prefilter add` entries.
//!
//! Why a membrane kind, not one of Cilium's: Cilium configures its prefilter only through
//! the agent's API (`cilium prefilter update`), with no CRD; its nearest kind,
//! `CiliumCIDRGroup`, names prefixes for policies to refer to, so taking every CIDR group as
//! a deny list would drop traffic that policies mean to allow. Its shape is kept for
//! familiarity: a cluster-scoped object whose spec is a list of prefixes.
//!
//! Checks (so a bad object names itself and the field, and the last good version stays in
//! force — every source keeps the previous good object when an edit is refused): the
//! apiVersion is `membrane.io/v1alpha1`; `spec.cidrs` is a non-empty list of at most
//! [`MAX_CIDRS`] entries, each `ADDRESS/LENGTH` with no host bits set or a bare address
//! (the agent's own parser, `membrane_api::agent::prefilter`); unknown spec fields are
//! refused (a misspelt `cidr` would otherwise deny nothing).

use std::collections::BTreeSet;

use ipnet::IpNet;
use membrane_api::agent::prefilter::parse_entry;
use membrane_api::agent::proto;
use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;

/// The group and version of the kind.
pub const API_VERSION: &str = "membrane.io/v1alpha1";

/// At most this many prefixes in one object (the prefilter takes 32,768 per family in all;
/// the agent refuses a union over that, keeping the last good set).
pub const MAX_CIDRS: usize = 16_384;

/// Why a PrefilterDenyList object is refused: every problem found, one per line, each
/// naming the object and the field.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{}", .0.join("\n"))]
pub struct DenyListError(pub Vec<String>);

/// One checked PrefilterDenyList.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyList {
    /// `metadata.name`.
    pub name: String,
    /// `spec.cidrs`, parsed, sorted, without duplicates.
    pub cidrs: BTreeSet<IpNet>,
}

#[derive(Deserialize)]
struct RawMeta {
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    cidrs: Vec<String>,
}

#[derive(Deserialize)]
struct Raw {
    metadata: RawMeta,
    spec: RawSpec,
}

impl DenyList {
    /// Reads and checks one object (`kind: PrefilterDenyList`); `origin` prefixes every
    /// message (a file name, `kubernetes`, an etcd key).
    pub fn parse(origin: &str, v: &Value) -> Result<Self, DenyListError> {
        let name = v
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        let what = format!("{origin}: PrefilterDenyList {name}");
        let api = v.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        if api != API_VERSION {
            return Err(DenyListError(vec![format!(
                "{what}: apiVersion: {api:?} is not {API_VERSION}"
            )]));
        }
        let raw: Raw = serde_path_to_error::deserialize(v)
            .map_err(|e| DenyListError(vec![format!("{what}: {}: {}", e.path(), e.inner())]))?;
        let mut errors = Vec::new();
        if raw.metadata.name.is_empty() {
            errors.push(format!("{what}: metadata.name: missing"));
        }
        if v.pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .is_some_and(|ns| !ns.is_empty())
        {
            errors.push(format!(
                "{what}: metadata.namespace: the kind is cluster-scoped; remove the namespace"
            ));
        }
        let list = &raw.spec.cidrs;
        if list.is_empty() {
            errors.push(format!(
                "{what}: spec.cidrs: empty; a deny list names at least one prefix (delete the \
                 object to deny nothing)"
            ));
        }
        if list.len() > MAX_CIDRS {
            errors.push(format!(
                "{what}: spec.cidrs: {} entries, at most {MAX_CIDRS} are allowed",
                list.len()
            ));
        }
        let mut cidrs = BTreeSet::new();
        for (i, s) in list.iter().enumerate() {
            match parse_entry(s) {
                Ok(net) => {
                    cidrs.insert(net);
                }
                Err(why) => errors.push(format!("{what}: spec.cidrs[{i}]: {s:?}: {why}")),
            }
        }
        if errors.is_empty() {
            Ok(DenyList {
                name: raw.metadata.name,
                cidrs,
            })
        } else {
            Err(DenyListError(errors))
        }
    }

    /// The agents' resource.
    pub fn to_proto(&self) -> proto::PrefilterDenyList {
        proto::PrefilterDenyList {
            name: self.name.clone(),
            cidrs: self.cidrs.iter().map(ToString::to_string).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn obj(spec: Value) -> Value {
        json!({
            "apiVersion": API_VERSION,
            "kind": "PrefilterDenyList",
            "metadata": {"name": "bad-actors"},
            "spec": spec,
        })
    }

    #[test]
    fn a_good_list_is_sorted_and_deduplicated() {
        let d = DenyList::parse(
            "f.yaml",
            &obj(json!({"cidrs": ["10.1.0.0/16", "2001:db8::/32", "192.0.2.7", "10.1.0.0/16"]})),
        )
        .unwrap();
        assert_eq!(d.name, "bad-actors");
        assert_eq!(
            d.to_proto().cidrs,
            ["10.1.0.0/16", "192.0.2.7/32", "2001:db8::/32"]
        );
    }

    #[test]
    fn bad_objects_name_the_object_and_the_field() {
        for (v, says) in [
            (
                obj(json!({"cidrs": ["10.0.0.0/8", "10.1.2.3/8"]})),
                "f.yaml: PrefilterDenyList bad-actors: spec.cidrs[1]: \"10.1.2.3/8\": host bits \
                 set (the prefix is 10.0.0.0/8)",
            ),
            (
                obj(json!({"cidrs": ["nope"]})),
                "spec.cidrs[0]: \"nope\": not a CIDR or an address",
            ),
            (obj(json!({"cidrs": []})), "spec.cidrs: empty"),
            (
                obj(json!({"cidr": ["10.0.0.0/8"]})),
                "unknown field `cidr`, expected `cidrs`",
            ),
            (obj(json!({"cidrs": [7]})), "spec.cidrs[0]: invalid type"),
            (
                json!({"apiVersion": API_VERSION, "kind": "PrefilterDenyList", "metadata": {"name": "x"}}),
                "missing field `spec`",
            ),
            (
                json!({"apiVersion": "cilium.io/v2", "kind": "PrefilterDenyList",
                       "metadata": {"name": "x"}, "spec": {"cidrs": ["10.0.0.0/8"]}}),
                "apiVersion: \"cilium.io/v2\" is not membrane.io/v1alpha1",
            ),
            (
                json!({"apiVersion": API_VERSION, "kind": "PrefilterDenyList",
                       "metadata": {"name": "x", "namespace": "default"},
                       "spec": {"cidrs": ["10.0.0.0/8"]}}),
                "metadata.namespace: the kind is cluster-scoped",
            ),
        ] {
            let e = DenyList::parse("f.yaml", &v).unwrap_err().to_string();
            assert!(e.contains(says), "{v}: {e}");
        }
        let many: Vec<String> = (0..=MAX_CIDRS)
            .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
            .collect();
        let e = DenyList::parse("f.yaml", &obj(json!({ "cidrs": many })))
            .unwrap_err()
            .to_string();
        assert!(e.contains("16385 entries, at most 16384"), "{e}");
    }
}
