//! Compiled label selectors: Kubernetes `matchLabels`/`matchExpressions` over Cilium labels.
//!
//! A selector is a conjunction of requirements on `(source, key)`; a requirement whose source
//! is `any` is satisfied by a label of that key from any source. Requirements are kept sorted
//! so two selectors that mean the same thing compare equal, which is what lets the selector
//! cache share one identity set between every rule that uses the same peer selector.

use crate::labels::{split_source, LabelSet, SOURCE_ANY};
use crate::model::LabelSelector;
use std::fmt;

/// A set-based operator.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operator {
    /// The label exists with one of the values.
    In(Vec<String>),
    /// The label is absent, or has none of the values.
    NotIn(Vec<String>),
    /// The label exists.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    /// Label source (`any` matches every source).
    pub source: String,
    /// Label key.
    pub key: String,
    /// The test.
    pub op: Operator,
}

impl Requirement {
    fn matches(&self, labels: &LabelSet) -> bool {
        let mut values = labels.values(&self.source, &self.key);
        match &self.op {
            Operator::In(vs) => values.any(|v| vs.iter().any(|x| x == v)),
            Operator::NotIn(vs) => values.all(|v| !vs.iter().any(|x| x == v)),
            Operator::Exists => values.next().is_some(),
            Operator::DoesNotExist => values.next().is_none(),
        }
    }
}

/// A compiled selector. The empty selector matches every label set.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    reqs: Vec<Requirement>,
}

/// Errors from compiling a selector, each naming the offending field relative to the selector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// An operator outside `In|NotIn|Exists|DoesNotExist`.
    #[error("matchExpressions[{index}].operator: {found:?} is not a valid label selector operator (expected In, NotIn, Exists or DoesNotExist)")]
    BadOperator {
        /// Index in matchExpressions.
        index: usize,
        /// What was found.
        found: String,
    },
    /// `In`/`NotIn` without values, or `Exists`/`DoesNotExist` with values.
    #[error("matchExpressions[{index}].values: {message}")]
    BadValues {
        /// Index in matchExpressions.
        index: usize,
        /// What is wrong.
        message: &'static str,
    },
    /// An empty key.
    #[error("{field}: label key must not be empty")]
    EmptyKey {
        /// Field path.
        field: String,
    },
}

impl Selector {
    /// The selector that matches everything.
    pub fn wildcard() -> Self {
        Selector::default()
    }

    /// A selector requiring exactly one label.
    pub fn with_label(source: &str, key: &str, value: &str) -> Self {
        let mut s = Selector::default();
        s.add_match(source, key, value);
        s
    }

    /// Compiles a Kubernetes label selector.
    pub fn compile(sel: &LabelSelector) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            let (source, key) = split_source(k);
            if key.is_empty() {
                return Err(SelectorError::EmptyKey {
                    field: format!("matchLabels[{k:?}]"),
                });
            }
            reqs.push(Requirement {
                source: source.to_owned(),
                key: key.to_owned(),
                op: Operator::In(vec![v.clone()]),
            });
        }
        for (index, e) in sel.match_expressions.iter().flatten().enumerate() {
            let (source, key) = split_source(&e.key);
            if key.is_empty() {
                return Err(SelectorError::EmptyKey {
                    field: format!("matchExpressions[{index}].key"),
                });
            }
            let mut values = e.values.clone().unwrap_or_default();
            values.sort();
            values.dedup();
            let op = match e.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(SelectorError::BadValues {
                        index,
                        message: "must be non-empty for In and NotIn",
                    })
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(SelectorError::BadValues {
                        index,
                        message: "must be empty for Exists and DoesNotExist",
                    })
                }
                "In" => Operator::In(values),
                "NotIn" => Operator::NotIn(values),
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    return Err(SelectorError::BadOperator {
                        index,
                        found: other.to_owned(),
                    })
                }
            };
            reqs.push(Requirement {
                source: source.to_owned(),
                key: key.to_owned(),
                op,
            });
        }
        reqs.sort();
        reqs.dedup();
        Ok(Selector { reqs })
    }

    /// Adds `source:key=value` as a requirement.
    pub fn add_match(&mut self, source: &str, key: &str, value: &str) {
        self.push(Requirement {
            source: source.to_owned(),
            key: key.to_owned(),
            op: Operator::In(vec![value.to_owned()]),
        });
    }

    /// Adds an `Exists` requirement.
    pub fn add_exists(&mut self, source: &str, key: &str) {
        self.push(Requirement {
            source: source.to_owned(),
            key: key.to_owned(),
            op: Operator::Exists,
        });
    }

    fn push(&mut self, r: Requirement) {
        if let Err(pos) = self.reqs.binary_search(&r) {
            self.reqs.insert(pos, r);
        }
    }

    /// Removes every requirement on `key` under `source` (or `any`).
    pub fn remove_key(&mut self, source: &str, key: &str) {
        self.reqs
            .retain(|r| !(r.key == key && (r.source == source || r.source == SOURCE_ANY)));
    }

    /// True if some requirement is on exactly this `(source, key)`.
    pub fn has_key(&self, source: &str, key: &str) -> bool {
        self.reqs.iter().any(|r| r.source == source && r.key == key)
    }

    /// True if some requirement's source is `source`.
    pub fn has_source(&self, source: &str) -> bool {
        self.reqs.iter().any(|r| r.source == source)
    }

    /// True if some requirement's key (under `source`) starts with `prefix`.
    pub fn has_key_prefix(&self, source: &str, prefix: &str) -> bool {
        self.reqs
            .iter()
            .any(|r| r.source == source && r.key.starts_with(prefix))
    }

    /// The conjunction of two selectors.
    pub fn and(&self, other: &Selector) -> Selector {
        let mut s = self.clone();
        for r in &other.reqs {
            s.push(r.clone());
        }
        s
    }

    /// True for the selector that matches everything.
    pub fn is_wildcard(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Tests a label set.
    pub fn matches(&self, labels: &LabelSet) -> bool {
        self.reqs.iter().all(|r| r.matches(labels))
    }

    /// The requirements, sorted.
    pub fn requirements(&self) -> &[Requirement] {
        &self.reqs
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.reqs.is_empty() {
            return f.write_str("{}");
        }
        for (i, r) in self.reqs.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match &r.op {
                Operator::In(v) if v.len() == 1 => write!(f, "{}:{}={}", r.source, r.key, v[0])?,
                Operator::In(v) => write!(f, "{}:{} in ({})", r.source, r.key, v.join(","))?,
                Operator::NotIn(v) => write!(f, "{}:{} notin ({})", r.source, r.key, v.join(","))?,
                Operator::Exists => write!(f, "{}:{}", r.source, r.key)?,
                Operator::DoesNotExist => write!(f, "!{}:{}", r.source, r.key)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LabelSelectorRequirement;
    use std::collections::BTreeMap;

    fn sel(labels: &[(&str, &str)], exprs: &[(&str, &str, &[&str])]) -> LabelSelector {
        LabelSelector {
            match_labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            match_expressions: Some(
                exprs
                    .iter()
                    .map(|(k, op, vs)| LabelSelectorRequirement {
                        key: k.to_string(),
                        operator: op.to_string(),
                        values: if vs.is_empty() {
                            None
                        } else {
                            Some(vs.iter().map(|s| s.to_string()).collect())
                        },
                    })
                    .collect(),
            ),
        }
    }

    #[test]
    fn kubernetes_selector_semantics() {
        let ep = LabelSet::parse("k8s:org=empire,k8s:class=deathstar").unwrap();
        let table: &[(LabelSelector, bool)] = &[
            (sel(&[("org", "empire")], &[]), true),
            (sel(&[("k8s:org", "empire")], &[]), true),
            (sel(&[("container:org", "empire")], &[]), false),
            (sel(&[("org", "alliance")], &[]), false),
            (sel(&[], &[("class", "In", &["deathstar", "xwing"])]), true),
            (sel(&[], &[("class", "NotIn", &["deathstar"])]), false),
            (sel(&[], &[("missing", "NotIn", &["x"])]), true),
            (sel(&[], &[("org", "Exists", &[])]), true),
            (sel(&[], &[("org", "DoesNotExist", &[])]), false),
            (LabelSelector::default(), true),
        ];
        for (i, (s, want)) in table.iter().enumerate() {
            assert_eq!(
                Selector::compile(s).unwrap().matches(&ep),
                *want,
                "case {i}: {s:?}"
            );
        }
    }

    #[test]
    fn rejects_what_kubernetes_rejects() {
        let e = Selector::compile(&sel(&[], &[("a", "in", &["x"])])).unwrap_err();
        assert!(
            e.to_string()
                .contains("\"in\" is not a valid label selector operator"),
            "{e}"
        );
        assert!(Selector::compile(&sel(&[], &[("a", "In", &[])])).is_err());
        assert!(Selector::compile(&sel(&[], &[("a", "Exists", &["x"])])).is_err());
    }

    #[test]
    fn equal_meaning_compares_equal() {
        let a = Selector::compile(&sel(&[("a", "1"), ("b", "2")], &[])).unwrap();
        let b = Selector::compile(&sel(&[("b", "2")], &[("a", "In", &["1"])])).unwrap();
        assert_eq!(a, b);
    }
}
