//! The `cilium.io/v2` policy objects as users write them, field for field.
//!
//! Every struct refuses unknown fields, as strict Kubernetes field validation does, so a
//! misspelt key is an error naming its path instead of a silently ignored rule. Field names
//! follow the CRDs (`ciliumnetworkpolicies.cilium.io`, `ciliumclusterwidenetworkpolicies.cilium.io`).
//! Presence is kept where Cilium's semantics depend on it (`ingress: []` is not `ingress`
//! absent, `endpointSelector: {}` is not `endpointSelector` absent), hence the many `Option`s.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyDocument {
    /// `cilium.io/v2`.
    pub api_version: String,
    /// `CiliumNetworkPolicy` or `CiliumClusterwideNetworkPolicy`.
    pub kind: String,
    /// Object metadata; only name and namespace carry meaning here.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// A single rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Rule>,
    /// A list of rules, all with the object's metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub specs: Option<Vec<Rule>>,
    /// Legacy top-level description (Cilium's Star Wars demo still carries one). The v2 CRD
    /// has no such field; it is accepted with a warning and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Status written by controllers; accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

/// The subset of Kubernetes `ObjectMeta` that policy semantics use; other metadata fields
/// (annotations, uid, resourceVersion, ...) are accepted as the API server would.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// Object name.
    #[serde(default)]
    pub name: Option<String>,
    /// Namespace; absent means `default` for namespaced kinds, as kubectl applies it.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Object labels.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// Object annotations.
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// One policy rule (`spec` or an element of `specs`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    /// Endpoints this rule applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_selector: Option<LabelSelector>,
    /// Nodes this rule applies to (host policy; cluster-wide policies only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// Allow rules for traffic into the selected endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<IngressRule>>,
    /// Deny rules for traffic into the selected endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_deny: Option<Vec<IngressDenyRule>>,
    /// Allow rules for traffic out of the selected endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<EgressRule>>,
    /// Deny rules for traffic out of the selected endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_deny: Option<Vec<EgressDenyRule>>,
    /// Whether selecting an endpoint puts it into default deny, per direction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_default_deny: Option<DefaultDeny>,
    /// Labels identifying the rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<RuleLabel>>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// `enableDefaultDeny`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct DefaultDeny {
    /// Ingress default deny; absent means "yes if the rule has ingress rules".
    #[serde(default)]
    pub ingress: Option<bool>,
    /// Egress default deny; absent means "yes if the rule has egress rules".
    #[serde(default)]
    pub egress: Option<bool>,
}

/// A label attached to a rule (`spec.labels[]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RuleLabel {
    /// Label key.
    pub key: String,
    /// Label source.
    #[serde(default)]
    pub source: Option<String>,
    /// Label value.
    #[serde(default)]
    pub value: Option<String>,
}

/// A Kubernetes label selector, with Cilium's `source:key` label keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    /// Exact key/value matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_labels: Option<BTreeMap<String, String>>,
    /// Set-based requirements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_expressions: Option<Vec<LabelSelectorRequirement>>,
}

/// One `matchExpressions` element.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    /// The label key (`source:key` or `key`).
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist` (checked by validation, so the message can
    /// name the operator that was found).
    #[cfg_attr(feature = "schema", schemars(extend("enum" = ["In", "NotIn", "Exists", "DoesNotExist"])))]
    pub operator: String,
    /// Values for `In`/`NotIn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
}

/// `fromCIDRSet[]` / `toCIDRSet[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CidrRule {
    /// The allowed prefix.
    #[serde(default)]
    pub cidr: Option<String>,
    /// A reference to a CiliumCIDRGroup instead of a literal prefix.
    #[serde(default)]
    pub cidr_group_ref: Option<String>,
    /// Prefixes inside `cidr` that are not selected.
    #[serde(default)]
    pub except: Option<Vec<String>>,
}

/// `authentication`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Authentication {
    /// `disabled`, `required` or `test-always-fail`.
    #[cfg_attr(feature = "schema", schemars(extend("enum" = ["disabled", "required", "test-always-fail"])))]
    pub mode: String,
}

/// `icmps[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct IcmpRule {
    /// ICMP type matches.
    #[serde(default)]
    pub fields: Option<Vec<IcmpField>>,
}

/// `icmps[].fields[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct IcmpField {
    /// `IPv4` (default) or `IPv6`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(extend("enum" = ["IPv4", "IPv6"])))]
    pub family: Option<String>,
    /// A type number or a type name such as `EchoRequest`.
    #[serde(rename = "type")]
    pub icmp_type: IntOrString,
}

/// A value Kubernetes types as int-or-string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(untagged)]
pub enum IntOrString {
    /// A number.
    Int(i64),
    /// A string.
    String(String),
}

/// AWS security-group peers (`fromGroups`/`toGroups`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Groups {
    /// AWS selector.
    #[serde(default)]
    pub aws: Option<AwsGroup>,
}

/// `groups[].aws`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AwsGroup {
    /// Instance labels.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// Region.
    #[serde(default)]
    pub region: Option<String>,
    /// Security group ids.
    #[serde(default)]
    pub security_groups_ids: Option<Vec<String>>,
    /// Security group names.
    #[serde(default)]
    pub security_groups_names: Option<Vec<String>>,
}

/// `ingress[]`.
///
/// The four element types (`ingress`, `ingressDeny`, `egress`, `egressDeny`) repeat their
/// shared peer fields on purpose: serde's `flatten` cannot be combined with
/// `deny_unknown_fields`, and strict unknown-field errors matter more here than brevity.
/// `rule::Element` gives compilation one view of all four.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressRule {
    /// Peer endpoints by label.
    #[serde(default)]
    pub from_endpoints: Option<Vec<LabelSelector>>,
    /// Labels every peer must also carry.
    #[serde(default)]
    pub from_requires: Option<Vec<LabelSelector>>,
    /// Peer prefixes.
    #[serde(default, rename = "fromCIDR")]
    pub from_cidr: Option<Vec<String>>,
    /// Peer prefixes with exceptions.
    #[serde(default, rename = "fromCIDRSet")]
    pub from_cidr_set: Option<Vec<CidrRule>>,
    /// Peer entities (`world`, `cluster`, `host`, ...).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(extend("items" = {"type": "string", "enum": ["all", "world", "cluster", "host", "remote-node", "kube-apiserver", "ingress", "init", "health", "unmanaged", "none"]})))]
    pub from_entities: Option<Vec<String>>,
    /// Peer nodes by label.
    #[serde(default)]
    pub from_nodes: Option<Vec<LabelSelector>>,
    /// Peer cloud security groups.
    #[serde(default)]
    pub from_groups: Option<Vec<Groups>>,
    /// Ports (and L7 rules) the peers may reach.
    #[serde(default)]
    pub to_ports: Option<Vec<PortRule>>,
    /// ICMP types the peers may send.
    #[serde(default)]
    pub icmps: Option<Vec<IcmpRule>>,
    /// Mutual authentication requirement.
    #[serde(default)]
    pub authentication: Option<Authentication>,
}

/// `ingressDeny[]`: as `ingress[]` without L7 rules or authentication.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressDenyRule {
    /// Peer endpoints by label.
    #[serde(default)]
    pub from_endpoints: Option<Vec<LabelSelector>>,
    /// Labels every peer must also carry.
    #[serde(default)]
    pub from_requires: Option<Vec<LabelSelector>>,
    /// Peer prefixes.
    #[serde(default, rename = "fromCIDR")]
    pub from_cidr: Option<Vec<String>>,
    /// Peer prefixes with exceptions.
    #[serde(default, rename = "fromCIDRSet")]
    pub from_cidr_set: Option<Vec<CidrRule>>,
    /// Peer entities.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(extend("items" = {"type": "string", "enum": ["all", "world", "cluster", "host", "remote-node", "kube-apiserver", "ingress", "init", "health", "unmanaged", "none"]})))]
    pub from_entities: Option<Vec<String>>,
    /// Peer nodes by label.
    #[serde(default)]
    pub from_nodes: Option<Vec<LabelSelector>>,
    /// Peer cloud security groups.
    #[serde(default)]
    pub from_groups: Option<Vec<Groups>>,
    /// Denied ports.
    #[serde(default)]
    pub to_ports: Option<Vec<PortDenyRule>>,
    /// Denied ICMP types.
    #[serde(default)]
    pub icmps: Option<Vec<IcmpRule>>,
}

/// `egress[]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EgressRule {
    /// Peer endpoints by label.
    #[serde(default)]
    pub to_endpoints: Option<Vec<LabelSelector>>,
    /// Labels every peer must also carry.
    #[serde(default)]
    pub to_requires: Option<Vec<LabelSelector>>,
    /// Peer prefixes.
    #[serde(default, rename = "toCIDR")]
    pub to_cidr: Option<Vec<String>>,
    /// Peer prefixes with exceptions.
    #[serde(default, rename = "toCIDRSet")]
    pub to_cidr_set: Option<Vec<CidrRule>>,
    /// Peer entities.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(extend("items" = {"type": "string", "enum": ["all", "world", "cluster", "host", "remote-node", "kube-apiserver", "ingress", "init", "health", "unmanaged", "none"]})))]
    pub to_entities: Option<Vec<String>>,
    /// Peer Kubernetes services.
    #[serde(default)]
    pub to_services: Option<Vec<Service>>,
    /// Peer DNS names.
    #[serde(default, rename = "toFQDNs")]
    pub to_fqdns: Option<Vec<FqdnSelector>>,
    /// Peer nodes by label.
    #[serde(default)]
    pub to_nodes: Option<Vec<LabelSelector>>,
    /// Peer cloud security groups.
    #[serde(default)]
    pub to_groups: Option<Vec<Groups>>,
    /// Ports (and L7 rules) the endpoint may reach.
    #[serde(default)]
    pub to_ports: Option<Vec<PortRule>>,
    /// ICMP types the endpoint may send.
    #[serde(default)]
    pub icmps: Option<Vec<IcmpRule>>,
    /// Mutual authentication requirement.
    #[serde(default)]
    pub authentication: Option<Authentication>,
}

/// `egressDeny[]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EgressDenyRule {
    /// Peer endpoints by label.
    #[serde(default)]
    pub to_endpoints: Option<Vec<LabelSelector>>,
    /// Labels every peer must also carry.
    #[serde(default)]
    pub to_requires: Option<Vec<LabelSelector>>,
    /// Peer prefixes.
    #[serde(default, rename = "toCIDR")]
    pub to_cidr: Option<Vec<String>>,
    /// Peer prefixes with exceptions.
    #[serde(default, rename = "toCIDRSet")]
    pub to_cidr_set: Option<Vec<CidrRule>>,
    /// Peer entities.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(extend("items" = {"type": "string", "enum": ["all", "world", "cluster", "host", "remote-node", "kube-apiserver", "ingress", "init", "health", "unmanaged", "none"]})))]
    pub to_entities: Option<Vec<String>>,
    /// Peer Kubernetes services.
    #[serde(default)]
    pub to_services: Option<Vec<Service>>,
    /// Peer nodes by label.
    #[serde(default)]
    pub to_nodes: Option<Vec<LabelSelector>>,
    /// Peer cloud security groups.
    #[serde(default)]
    pub to_groups: Option<Vec<Groups>>,
    /// Denied ports.
    #[serde(default)]
    pub to_ports: Option<Vec<PortDenyRule>>,
    /// Denied ICMP types.
    #[serde(default)]
    pub icmps: Option<Vec<IcmpRule>>,
}

/// `toServices[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Service {
    /// A service by name.
    #[serde(default)]
    pub k8s_service: Option<K8sServiceRef>,
    /// Services by label.
    #[serde(default)]
    pub k8s_service_selector: Option<K8sServiceSelector>,
}

/// `toServices[].k8sService`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct K8sServiceRef {
    /// Service name.
    #[serde(default)]
    pub service_name: Option<String>,
    /// Service namespace.
    #[serde(default)]
    pub namespace: Option<String>,
}

/// `toServices[].k8sServiceSelector`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct K8sServiceSelector {
    /// Service label selector.
    pub selector: LabelSelector,
    /// Namespace.
    #[serde(default)]
    pub namespace: Option<String>,
}

/// `toFQDNs[]` and `rules.dns[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FqdnSelector {
    /// An exact DNS name.
    #[serde(default)]
    pub match_name: Option<String>,
    /// A DNS name pattern with `*` wildcards.
    #[serde(default)]
    pub match_pattern: Option<String>,
}

/// `toPorts[]` in allow rules.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortRule {
    /// Ports and protocols.
    #[serde(default)]
    pub ports: Option<Vec<PortProtocol>>,
    /// L7 rules applied on these ports.
    #[serde(default)]
    pub rules: Option<L7Rules>,
    /// TLS SNI names.
    #[serde(default)]
    pub server_names: Option<Vec<String>>,
    /// TLS termination by the proxy.
    #[serde(default, rename = "terminatingTLS")]
    pub terminating_tls: Option<TlsContext>,
    /// TLS origination by the proxy.
    #[serde(default, rename = "originatingTLS")]
    pub originating_tls: Option<TlsContext>,
    /// A named Envoy listener to redirect to.
    #[serde(default)]
    pub listener: Option<Listener>,
}

/// `toPorts[]` in deny rules: ports only.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct PortDenyRule {
    /// Ports and protocols.
    #[serde(default)]
    pub ports: Option<Vec<PortProtocol>>,
}

/// `toPorts[].ports[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortProtocol {
    /// A port number (`"0"` is every port) or an IANA service name (a named port).
    pub port: String,
    /// The end of a port range starting at `port`.
    #[serde(default)]
    pub end_port: Option<i64>,
    /// `TCP`, `UDP`, `SCTP` or `ANY` (the default).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(extend("enum" = ["TCP", "UDP", "SCTP", "ANY"])))]
    pub protocol: Option<String>,
}

/// `toPorts[].terminatingTLS` / `originatingTLS`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsContext {
    /// The Kubernetes secret holding the material.
    pub secret: SecretRef,
    /// Key of the certificate in the secret.
    #[serde(default)]
    pub certificate: Option<String>,
    /// Key of the private key in the secret.
    #[serde(default)]
    pub private_key: Option<String>,
    /// Key of the trusted CA bundle in the secret.
    #[serde(default, rename = "trustedCA")]
    pub trusted_ca: Option<String>,
}

/// A reference to a Kubernetes secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// Secret name.
    pub name: String,
    /// Secret namespace.
    #[serde(default)]
    pub namespace: Option<String>,
}

/// `toPorts[].listener`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Listener {
    /// The CiliumEnvoyConfig that defines the listener.
    pub envoy_config: EnvoyConfigRef,
    /// Listener name.
    pub name: String,
    /// Priority among listeners.
    #[serde(default)]
    pub priority: Option<i64>,
}

/// `listener.envoyConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct EnvoyConfigRef {
    /// `CiliumEnvoyConfig` or `CiliumClusterwideEnvoyConfig`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(extend("enum" = ["CiliumEnvoyConfig", "CiliumClusterwideEnvoyConfig"])))]
    pub kind: Option<String>,
    /// Object name.
    pub name: String,
}

/// `toPorts[].rules`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct L7Rules {
    /// HTTP rules.
    #[serde(default)]
    pub http: Option<Vec<HttpRule>>,
    /// Kafka rules.
    #[serde(default)]
    pub kafka: Option<Vec<KafkaRule>>,
    /// DNS rules.
    #[serde(default)]
    pub dns: Option<Vec<FqdnSelector>>,
    /// Name of a generic L7 parser.
    #[serde(default)]
    pub l7proto: Option<String>,
    /// Generic key/value rules for `l7proto`.
    #[serde(default)]
    pub l7: Option<Vec<BTreeMap<String, String>>>,
}

/// `rules.http[]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRule {
    /// RE2 regex the whole method must match.
    #[serde(default)]
    pub method: Option<String>,
    /// RE2 regex the whole path (with query) must match.
    #[serde(default)]
    pub path: Option<String>,
    /// RE2 regex the whole host must match.
    #[serde(default)]
    pub host: Option<String>,
    /// `"Name"` (present) or `"Name: value"` (exact value).
    #[serde(default)]
    pub headers: Option<Vec<String>>,
    /// Header matches with mismatch actions.
    #[serde(default)]
    pub header_matches: Option<Vec<HeaderMatch>>,
}

/// `rules.http[].headerMatches[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    /// Header name.
    pub name: String,
    /// Expected value.
    #[serde(default)]
    pub value: Option<String>,
    /// Secret holding the expected value.
    #[serde(default)]
    pub secret: Option<SecretRef>,
    /// What to do on mismatch: `LOG`, `ADD`, `DELETE`, `REPLACE`; absent means deny.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(extend("enum" = ["LOG", "ADD", "DELETE", "REPLACE"])))]
    pub mismatch: Option<String>,
}

/// `rules.kafka[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KafkaRule {
    /// `produce` or `consume`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(extend("enum" = ["produce", "consume"])))]
    pub role: Option<String>,
    /// Kafka API key name or number.
    #[serde(default)]
    pub api_key: Option<String>,
    /// Kafka API version.
    #[serde(default)]
    pub api_version: Option<String>,
    /// Client id.
    #[serde(default, rename = "clientID")]
    pub client_id: Option<String>,
    /// Topic.
    #[serde(default)]
    pub topic: Option<String>,
}
