//! Reading policy objects out of Kubernetes-shaped YAML or JSON text.
//!
//! A file may hold several YAML documents, `List` objects with `items`, and kinds other than
//! Cilium's policies (Deployments, Services, ...), which are skipped. Each policy object is
//! parsed strictly and compiled; its result carries the file, kind, namespace and name so a
//! rejection can say exactly which object and which field was wrong. Text in, values out:
//! no file system access here.

use crate::model::PolicyDocument;
use crate::rule::{compile, CompiledPolicy, FieldError, PolicyKey, PolicyKind};
use serde::Deserialize;
use std::fmt;
use std::sync::Arc;

/// Errors that make a whole file unreadable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// The text is not YAML/JSON.
    #[error("{file}: document {doc}: {message}")]
    Syntax {
        /// File name as given.
        file: String,
        /// 1-based document number.
        doc: usize,
        /// Parser message (with line and column).
        message: String,
    },
}

/// One policy object found in a file, valid or not.
#[derive(Debug, Clone)]
pub struct LoadedObject {
    /// File name as given.
    pub file: String,
    /// Kind.
    pub kind: PolicyKind,
    /// Effective namespace (`default` when the object names none); `None` for cluster-wide.
    pub namespace: Option<String>,
    /// Object name (empty if missing).
    pub name: String,
    /// The compiled policy, or every field error found.
    pub result: Result<Arc<CompiledPolicy>, Vec<FieldError>>,
}

impl LoadedObject {
    /// `CiliumNetworkPolicy default/rule1`.
    pub fn describe(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind.as_str(), self.name),
            None => format!("{} {}", self.kind.as_str(), self.name),
        }
    }

    /// One line per warning of an accepted object.
    pub fn warning_lines(&self) -> Vec<String> {
        match &self.result {
            Ok(p) => p
                .warnings
                .iter()
                .map(|w| format!("{}: {}: warning: {w}", self.file, self.describe()))
                .collect(),
            Err(_) => vec![],
        }
    }

    /// One line per error: `file: Kind ns/name: path: message`.
    pub fn error_lines(&self) -> Vec<String> {
        match &self.result {
            Ok(_) => vec![],
            Err(errs) => errs
                .iter()
                .map(|e| format!("{}: {}: {e}", self.file, self.describe()))
                .collect(),
        }
    }
}

impl fmt::Display for LoadedObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Parses every policy object in `text`. `file` names the source in messages.
pub fn parse_file(file: &str, text: &str) -> Result<Vec<LoadedObject>, LoadError> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = serde_json::Value::deserialize(doc).map_err(|e| LoadError::Syntax {
            file: file.to_owned(),
            doc: i + 1,
            message: e.to_string(),
        })?;
        collect(file, &value, &mut out);
    }
    Ok(out)
}

fn collect(file: &str, value: &serde_json::Value, out: &mut Vec<LoadedObject>) {
    let Some(obj) = value.as_object() else { return };
    let kind = obj.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    if kind == "List" || (kind.ends_with("List") && obj.contains_key("items")) {
        for item in obj
            .get("items")
            .and_then(|i| i.as_array())
            .into_iter()
            .flatten()
        {
            collect(file, item, out);
        }
        return;
    }
    let Some(kind) = PolicyKind::from_kind(kind) else {
        return;
    };
    let meta = obj.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or("")
        .to_owned();
    let namespace = match kind {
        PolicyKind::Clusterwide => None,
        PolicyKind::Namespaced => Some(
            meta.and_then(|m| m.get("namespace"))
                .and_then(|n| n.as_str())
                .filter(|s| !s.is_empty())
                .unwrap_or("default")
                .to_owned(),
        ),
    };
    let key = PolicyKey {
        kind,
        namespace: namespace.clone(),
        name: name.clone(),
    };
    let result = match serde_path_to_error::deserialize::<_, PolicyDocument>(value) {
        Err(e) => {
            let path = e.path().to_string();
            let mut message = clean_serde_message(&e.inner().to_string());
            if path.contains("Deny[") && path.ends_with(".rules") {
                message = format!(
                    "L7 rules are not allowed in deny rules, which match ports only ({message})"
                );
            }
            Err(vec![FieldError {
                path: if path == "." { "(object)".into() } else { path },
                message,
            }])
        }
        Ok(doc) => {
            let mut errs = Vec::new();
            if kind == PolicyKind::Clusterwide
                && doc
                    .metadata
                    .namespace
                    .as_deref()
                    .is_some_and(|n| !n.is_empty())
            {
                // The API server drops it; say so rather than pretend it scopes anything.
                errs.push(FieldError {
                    path: "metadata.namespace".into(),
                    message: "a CiliumClusterwideNetworkPolicy is not namespaced".into(),
                });
            }
            match compile(&doc, key) {
                Ok(p) if errs.is_empty() => Ok(Arc::new(p)),
                Ok(_) => Err(errs),
                Err(mut e) => {
                    errs.append(&mut e);
                    Err(errs)
                }
            }
        }
    };
    out.push(LoadedObject {
        file: file.to_owned(),
        kind,
        namespace,
        name,
        result,
    });
}

/// serde's messages name Rust types; users wrote YAML.
fn clean_serde_message(m: &str) -> String {
    m.replace("invalid type: integer", "found a number")
        .replace("invalid type: string", "found a string")
        .replace("invalid type: map", "found a map")
        .replace("invalid type: sequence", "found a list")
        .replace("invalid type: boolean", "found a boolean")
        .replace("invalid type: null", "found null")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_lists_and_other_kinds() {
        let text = r#"
apiVersion: v1
kind: Service
metadata: {name: svc}
---
apiVersion: v1
kind: List
items:
- apiVersion: cilium.io/v2
  kind: CiliumNetworkPolicy
  metadata: {name: a, namespace: prod}
  spec: {endpointSelector: {}, ingress: [{}]}
- apiVersion: cilium.io/v2
  kind: CiliumClusterwideNetworkPolicy
  metadata: {name: b}
  spec: {endpointSelector: {}}
---
{"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "c"}, "spec": {"endpointSelector": {}}}
"#;
        let objs = parse_file("x.yaml", text).unwrap();
        let names: Vec<_> = objs.iter().map(|o| o.describe()).collect();
        assert_eq!(
            names,
            [
                "CiliumNetworkPolicy prod/a",
                "CiliumClusterwideNetworkPolicy b",
                "CiliumNetworkPolicy default/c"
            ]
        );
        assert!(objs.iter().all(|o| o.result.is_ok()));
    }

    #[test]
    fn errors_name_file_object_and_field() {
        let text = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: rule1}
spec:
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports:
      - port: "8o8o8o8o8o8o8o8o8o"
"#;
        let objs = parse_file("policy.yaml", text).unwrap();
        let lines = objs[0].error_lines();
        assert_eq!(
            lines,
            ["policy.yaml: CiliumNetworkPolicy default/rule1: spec.ingress[0].toPorts[0].ports[0].port: \"8o8o8o8o8o8o8o8o8o\" is not a port number or a port name"]
        );
        let unknown = parse_file("u.yaml", "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: u}\nspec:\n  endpointSelector: {}\n  ingres: []\n").unwrap();
        let line = &unknown[0].error_lines()[0];
        assert!(
            line.starts_with(
                "u.yaml: CiliumNetworkPolicy default/u: spec.ingres: unknown field `ingres`"
            ),
            "{line}"
        );
    }

    #[test]
    fn syntax_errors_are_file_errors() {
        let e = parse_file("bad.yaml", "a: [1,\n").unwrap_err();
        assert!(e.to_string().starts_with("bad.yaml: document 1:"), "{e}");
    }
}
