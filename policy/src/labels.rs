//! Cilium labels: `source:key=value`, where the source says who attached the label
//! (`k8s`, `reserved`, `cidr`, `container`, ...) and `any` in a selector matches every source.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Label source for Kubernetes labels.
pub const SOURCE_K8S: &str = "k8s";
/// Label source for Cilium's reserved identities (`reserved:host`, `reserved:world`, ...).
pub const SOURCE_RESERVED: &str = "reserved";
/// Label source for CIDR identities.
pub const SOURCE_CIDR: &str = "cidr";
/// The selector source that matches any source.
pub const SOURCE_ANY: &str = "any";
/// The pod namespace label key Cilium attaches to every pod.
pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// Prefix of the namespace's own labels as mirrored onto its pods.
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";
/// The cluster-name label Cilium attaches to every pod.
pub const POLICY_CLUSTER: &str = "io.cilium.k8s.policy.cluster";
/// The service-account label Cilium attaches to every pod.
pub const POLICY_SERVICEACCOUNT: &str = "io.cilium.k8s.policy.serviceaccount";

/// One label.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Label {
    /// Who attached the label.
    pub source: String,
    /// Label key.
    pub key: String,
    /// Label value (empty for reserved labels).
    pub value: String,
}

impl Label {
    /// A label from its parts.
    pub fn new(source: &str, key: &str, value: &str) -> Self {
        Label {
            source: source.to_owned(),
            key: key.to_owned(),
            value: value.to_owned(),
        }
    }

    /// Parses `source:key=value`, `key=value`, `source:key` or `key`; a missing source is `any`.
    pub fn parse(text: &str) -> Result<Self, LabelError> {
        let text = text.trim();
        let (key_part, value) = match text.split_once('=') {
            Some((k, v)) => (k, v),
            None => (text, ""),
        };
        let (source, key) = split_source(key_part);
        if key.is_empty() {
            return Err(LabelError::EmptyKey(text.to_owned()));
        }
        Ok(Label::new(source, key, value))
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() && self.source == SOURCE_RESERVED {
            write!(f, "{}:{}", self.source, self.key)
        } else {
            write!(f, "{}:{}={}", self.source, self.key, self.value)
        }
    }
}

/// Splits a selector or label key into (source, key); no source means `any`.
pub fn split_source(key: &str) -> (&str, &str) {
    match key.split_once(':') {
        Some((source, rest)) if !source.is_empty() => (source, rest),
        _ => (SOURCE_ANY, key),
    }
}

/// Errors from label parsing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// A label without a key.
    #[error("label {0:?} has an empty key")]
    EmptyKey(String),
}

/// A sorted, de-duplicated set of labels: an endpoint's or an identity's.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LabelSet(Vec<Label>);

impl LabelSet {
    /// The empty set.
    pub fn new() -> Self {
        LabelSet(Vec::new())
    }

    /// Builds a set from labels, sorting and removing duplicates.
    pub fn from_labels(labels: impl IntoIterator<Item = Label>) -> Self {
        let mut v: Vec<Label> = labels.into_iter().collect();
        v.sort();
        v.dedup();
        LabelSet(v)
    }

    /// Parses a comma-separated list such as `k8s:org=empire,k8s:class=deathstar`.
    pub fn parse(text: &str) -> Result<Self, LabelError> {
        let labels = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Label::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::from_labels(labels))
    }

    /// Adds a label, keeping the set sorted.
    pub fn insert(&mut self, label: Label) {
        if let Err(pos) = self.0.binary_search(&label) {
            self.0.insert(pos, label);
        }
    }

    /// The labels, sorted.
    pub fn iter(&self) -> impl Iterator<Item = &Label> {
        self.0.iter()
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no labels.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Values of every label with `key` whose source matches `source`. `any` matches every
    /// source on either side: a selector for `any:app` matches `k8s:app`, and a label given
    /// as `app=x` (source `any`, as `policy trace` takes it) matches a selector for `k8s:app`.
    pub fn values<'a>(
        &'a self,
        source: &'a str,
        key: &'a str,
    ) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |l| {
                l.key == key
                    && (source == SOURCE_ANY || l.source == source || l.source == SOURCE_ANY)
            })
            .map(|l| l.value.as_str())
    }

    /// True if a label with this key exists under a matching source.
    pub fn has_key(&self, source: &str, key: &str) -> bool {
        self.values(source, key).next().is_some()
    }

    /// True if any label has source `reserved`.
    pub fn has_reserved(&self) -> bool {
        self.0.iter().any(|l| l.source == SOURCE_RESERVED)
    }

    /// The value of the pod namespace label, if any.
    pub fn namespace(&self) -> Option<&str> {
        self.values(SOURCE_K8S, POD_NAMESPACE).next()
    }
}

impl fmt::Display for LabelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, l) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{l}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources_keys_and_values() {
        let table = [
            ("k8s:org=empire", ("k8s", "org", "empire")),
            ("org=empire", ("any", "org", "empire")),
            ("reserved:host", ("reserved", "host", "")),
            (
                "k8s:io.kubernetes.pod.namespace=default",
                ("k8s", "io.kubernetes.pod.namespace", "default"),
            ),
            ("any:app=a=b", ("any", "app", "a=b")),
        ];
        for (text, (s, k, v)) in table {
            assert_eq!(Label::parse(text).unwrap(), Label::new(s, k, v), "{text}");
        }
        assert!(Label::parse("k8s:=x").is_err());
    }

    #[test]
    fn any_source_matches_every_source() {
        let set = LabelSet::parse("k8s:app=web,container:app=other").unwrap();
        let mut all: Vec<_> = set.values("any", "app").collect();
        all.sort();
        assert_eq!(all, ["other", "web"]);
        assert_eq!(set.values("k8s", "app").collect::<Vec<_>>(), ["web"]);
        assert!(!set.has_key("reserved", "app"));
        let bare = LabelSet::parse("org=empire").unwrap();
        assert_eq!(bare.values("k8s", "org").collect::<Vec<_>>(), ["empire"]);
    }
}
