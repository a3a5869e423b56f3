//! The `cilium.io/v2` CRDs, generated from the policy model
//! (`membrane_policy::model::Rule`, with the `schema` feature) so that the
//! schema the API server applies and the parser membrane-xds runs cannot drift
//! apart. The envelope (names, scope, version, status) is Cilium's contract
//! for these two kinds; the rule schema is the model's, rewritten into a
//! Kubernetes structural schema. After them, membrane's own
//! `PrefilterDenyList` (`membrane.io/v1alpha1`), whose schema is written here:
//! one list of strings, which membrane-xds parses (`membrane_xds::prefilter`).

use membrane_policy::model::Rule;
use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};

/// The CRDs, in the order they appear in `manifests/kubernetes/crds.yaml`.
pub fn crds() -> Vec<Value> {
    let rule = rule_schema();
    vec![
        crd(
            "CiliumNetworkPolicy",
            "ciliumnetworkpolicies",
            &["cnp", "ciliumnp"],
            "Namespaced",
            &rule,
        ),
        crd(
            "CiliumClusterwideNetworkPolicy",
            "ciliumclusterwidenetworkpolicies",
            &["ccnp"],
            "Cluster",
            &rule,
        ),
        prefilter_crd(),
    ]
}

/// membrane's `PrefilterDenyList`: the cluster-wide deny list of the agents' XDP
/// prefilter. The schema checks the shape (a non-empty list of at most
/// `MAX_CIDRS` address-like strings); membrane-xds checks each prefix (host
/// bits, lengths) and refuses the object naming the entry, keeping the last
/// good version. No CEL rule: the prefix check lives in one parser.
fn prefilter_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": "prefilterdenylists.membrane.io",
            "labels": {"app.kubernetes.io/part-of": "membrane"},
        },
        "spec": {
            "group": "membrane.io",
            "names": {
                "kind": "PrefilterDenyList",
                "listKind": "PrefilterDenyListList",
                "plural": "prefilterdenylists",
                "singular": "prefilterdenylist",
                "shortNames": ["pfdl"],
                "categories": ["membrane"],
            },
            "scope": "Cluster",
            "versions": [{
                "name": "v1alpha1",
                "served": true,
                "storage": true,
                "additionalPrinterColumns": [
                    {
                        "name": "Prefixes",
                        "type": "string",
                        "description": "The denied source prefixes.",
                        "jsonPath": ".spec.cidrs",
                    },
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
                "schema": {"openAPIV3Schema": {
                    "description": "A cluster-wide deny list of membrane's XDP prefilter: every \
                        node drops packets whose source is in one of these prefixes on its \
                        underlay device, before the network stack.",
                    "type": "object",
                    "required": ["metadata", "spec"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": {
                            "type": "object",
                            "required": ["cidrs"],
                            "properties": {
                                "cidrs": {
                                    "description": "Source prefixes to drop: ADDRESS/LENGTH \
                                        (IPv4 or IPv6, no host bits set) or an address.",
                                    "type": "array",
                                    "minItems": 1,
                                    "maxItems": membrane_xds::prefilter::MAX_CIDRS,
                                    "items": {
                                        "type": "string",
                                        "maxLength": 43,
                                        "pattern": "^[0-9a-fA-F.:]+(/[0-9]{1,3})?$",
                                    },
                                },
                            },
                        },
                    },
                }},
            }],
        },
    })
}

/// The file's text: a header comment, then the CRDs as YAML documents.
pub fn crds_yaml() -> String {
    let mut out = String::from(
        "# The cilium.io/v2 policy CRDs (CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy):\n\
         # the group, version, kinds, names, short names and scope of Cilium's own, with a\n\
         # structural schema generated from membrane's policy model, so either set serves\n\
         # both Cilium and membrane. Then membrane's own membrane.io/v1alpha1\n\
         # PrefilterDenyList (cluster-wide deny list of the XDP prefilter, pfdl).\n\
         # Generated: do not edit; regenerate with\n\
         # MEMBRANE_BLESS=1 cargo nextest run -p membrane-xds --test crds\n",
    );
    for c in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(&c).expect("a CRD serializes"));
    }
    out
}

fn crd(kind: &str, plural: &str, short: &[&str], scope: &str, rule: &Value) -> Value {
    let singular = kind.to_ascii_lowercase();
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{plural}.cilium.io"),
            "labels": {"app.kubernetes.io/part-of": "membrane"},
        },
        "spec": {
            "group": "cilium.io",
            "names": {
                "kind": kind,
                "listKind": format!("{kind}List"),
                "plural": plural,
                "singular": singular,
                "shortNames": short,
                "categories": ["cilium", "ciliumpolicy"],
            },
            "scope": scope,
            "versions": [{
                "name": "v2",
                "served": true,
                "storage": true,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {
                        "name": "Valid",
                        "type": "string",
                        "description": "Whether membrane-xds accepted the policy.",
                        "jsonPath": ".status.conditions[?(@.type==\"Valid\")].status",
                    },
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
                "schema": {"openAPIV3Schema": {
                    "description": format!("A {kind}: Cilium's L3-L7 policy, enforced by membrane."),
                    "type": "object",
                    "required": ["metadata"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": rule,
                        "specs": {
                            "description": "Several rules under one object's metadata.",
                            "type": "array",
                            "items": rule,
                        },
                        "status": status_schema(),
                    },
                }},
            }],
        },
    })
}

/// `status`: the `Valid` condition membrane-xds writes (a list map keyed by
/// type, so other controllers' conditions sit beside it) and the per-node
/// status Cilium's agents write, kept as they write it.
fn status_schema() -> Value {
    let s = |d: &str| json!({"type": "string", "description": d});
    json!({
        "description": "Written by the controllers that enforce the policy.",
        "type": "object",
        "properties": {
            "conditions": {
                "type": "array",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
                "items": {
                    "type": "object",
                    "required": ["type", "status"],
                    "properties": {
                        "type": s("Condition type; membrane-xds writes Valid."),
                        "status": s("True, False or Unknown."),
                        "reason": s("One-word reason of the last transition."),
                        "message": s("What was accepted or which field was rejected."),
                        "lastTransitionTime": {
                            "type": "string",
                            "format": "date-time",
                            "description": "When status last changed.",
                        },
                    },
                },
            },
            "derivativePolicies": {
                "description": "Per-node status written by Cilium's agents.",
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "x-kubernetes-preserve-unknown-fields": true,
                },
            },
        },
    })
}

/// The model's schema for one rule, as a structural schema.
fn rule_schema() -> Value {
    let generator = SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .into_generator();
    let mut v = generator.into_root_schema_for::<Rule>().to_value();
    structural(&mut v);
    v
}

/// Rewrites a schemars schema into the form the API server requires of a
/// CRD (structural: a type on every node, no `$ref`, no `additionalProperties:
/// false`, no defaults it would apply).
fn structural(v: &mut Value) {
    let Value::Object(m) = v else { return };
    // Unknown fields are the API server's pruning and strict field validation
    // to handle, which `false` here would forbid.
    if m.get("additionalProperties") == Some(&Value::Bool(false)) {
        m.remove("additionalProperties");
    }
    // Presence matters to the model (`ingress: []` is not absent), a `null`
    // does not: the API server drops nulls of fields that are not nullable.
    for k in ["nullable", "default", "title", "$schema"] {
        m.remove(k);
    }
    if let Some(Value::Array(alts)) = m.get("anyOf") {
        if is_int_or_string(alts) {
            m.remove("anyOf");
            m.remove("type");
            m.insert("x-kubernetes-int-or-string".into(), Value::Bool(true));
        }
    }
    if let Some(Value::String(f)) = m.get("format") {
        if !matches!(f.as_str(), "int32" | "int64" | "date-time") {
            m.remove("format");
        }
    }
    if let Some(Value::Object(props)) = m.get_mut("properties") {
        for p in props.values_mut() {
            structural(p);
        }
    }
    for k in ["items", "additionalProperties"] {
        if let Some(sub) = m.get_mut(k) {
            structural(sub);
        }
    }
    let sorted: Map<String, Value> = std::mem::take(m).into_iter().collect();
    *m = sorted;
}

fn is_int_or_string(alts: &[Value]) -> bool {
    let types: Vec<&str> = alts.iter().filter_map(|a| a["type"].as_str()).collect();
    alts.len() == 2 && types.contains(&"integer") && types.contains(&"string")
}
