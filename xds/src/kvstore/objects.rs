//! Objects as the CLI stores them: keys under `OBJECTS` (kind, namespace,
//! name), the objects of a manifest file split into keyed values, and the
//! batched write.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{Client, Txn, TxnOp};
use serde_json::Value;

use super::{within, KvError, KINDS, MAX_TXN_OPS, OBJECTS};

/// Whether `kind` is stored, and if it is namespaced.
pub fn kind_scope(kind: &str) -> Option<bool> {
    KINDS.iter().find(|(k, _)| *k == kind).map(|(_, ns)| *ns)
}

/// The key of an object: namespaced kinds need `namespace`.
pub fn object_key(kind: &str, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{OBJECTS}{kind}/{ns}/{name}"),
        None => format!("{OBJECTS}{kind}/{name}"),
    }
}

/// What a key under [`OBJECTS`] names: (kind, namespace, name).
pub fn parse_object_key(key: &str) -> Result<(String, Option<String>, String), String> {
    let rest = key
        .strip_prefix(OBJECTS)
        .ok_or_else(|| format!("{key}: not under {OBJECTS}"))?;
    let parts: Vec<&str> = rest.split('/').collect();
    let kind = parts[0];
    let Some(namespaced) = kind_scope(kind) else {
        return Err(format!(
            "{key}: kind {kind:?} is not one of {}",
            KINDS.iter().map(|k| k.0).collect::<Vec<_>>().join(", ")
        ));
    };
    match (namespaced, &parts[1..]) {
        (true, [ns, name]) if !ns.is_empty() && !name.is_empty() => {
            Ok((kind.into(), Some((*ns).into()), (*name).into()))
        }
        (false, [name]) if !name.is_empty() => Ok((kind.into(), None, (*name).into())),
        (true, _) => Err(format!("{key}: expected {OBJECTS}{kind}/NAMESPACE/NAME")),
        (false, _) => Err(format!("{key}: expected {OBJECTS}{kind}/NAME")),
    }
}

/// One object ready to be stored: its key and JSON text.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredObject {
    /// Its key under [`OBJECTS`].
    pub key: String,
    /// `Kind namespace/name`.
    pub describe: String,
    /// The object as JSON.
    pub value: String,
}

fn flatten(v: Value, out: &mut Vec<Value>) {
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or("");
    if kind == "List" || (kind.ends_with("List") && v.get("items").is_some()) {
        if let Some(Value::Array(items)) = v.get("items").cloned() {
            for i in items {
                flatten(i, out);
            }
        }
        return;
    }
    out.push(v);
}

/// Validates one file's text the way the control plane will (policies with
/// the policy engine, the core kinds with their parser) and splits it into
/// storable objects. `allowed` limits the kinds (empty: every stored kind).
/// Errors name file, object and field.
pub fn objects_from_file(
    file: &str,
    text: &str,
    allowed: &[&str],
) -> Result<Vec<StoredObject>, Vec<String>> {
    crate::source::dir::parse(file, text)
        .map_err(|e| e.to_string().lines().map(str::to_owned).collect::<Vec<_>>())?;
    let mut values = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        use serde::Deserialize;
        let v = Value::deserialize(doc)
            .map_err(|e| vec![format!("{file}: document {}: {e}", i + 1)])?;
        if !v.is_null() {
            flatten(v, &mut values);
        }
    }
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for mut v in values {
        let kind = v
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let name = v
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let namespaced = match kind_scope(&kind) {
            Some(n) if allowed.is_empty() || allowed.contains(&kind.as_str()) => n,
            _ => {
                let want = if allowed.is_empty() {
                    KINDS.iter().map(|k| k.0).collect::<Vec<_>>()
                } else {
                    allowed.to_vec()
                };
                errors.push(format!(
                    "{file}: {} {name}: kind: {kind:?} is not stored here; expected one of {}",
                    if kind.is_empty() { "object" } else { &kind },
                    want.join(", ")
                ));
                continue;
            }
        };
        if name.is_empty() || name.contains('/') {
            errors.push(format!(
                "{file}: {kind}: metadata.name: {name:?} is not a valid object name"
            ));
            continue;
        }
        let ns = if namespaced {
            let ns = v
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .unwrap_or("default")
                .to_owned();
            if ns.contains('/') {
                errors.push(format!(
                    "{file}: {kind} {name}: metadata.namespace: {ns:?} is not a valid namespace"
                ));
                continue;
            }
            // Stored with its namespace spelled out, so the value alone says
            // where it belongs.
            if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                m.insert("namespace".into(), Value::String(ns.clone()));
            }
            Some(ns)
        } else {
            None
        };
        let describe = match &ns {
            Some(ns) => format!("{kind} {ns}/{name}"),
            None => format!("{kind} {name}"),
        };
        out.push(StoredObject {
            key: object_key(&kind, ns.as_deref(), &name),
            describe,
            value: v.to_string(),
        });
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Writes `objects`, all in one transaction per 128 (etcd's limit), so a
/// small import lands whole or not at all. An object given twice is written
/// once, in its last version (etcd refuses a key twice in one transaction).
pub async fn put_objects(client: &mut Client, objects: &[StoredObject]) -> Result<(), KvError> {
    let mut last: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, o) in objects.iter().enumerate() {
        last.insert(&o.key, i);
    }
    let mut order: Vec<usize> = last.into_values().collect();
    order.sort_unstable();
    let objects: Vec<&StoredObject> = order.into_iter().map(|i| &objects[i]).collect();
    for chunk in objects.chunks(MAX_TXN_OPS) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|o| TxnOp::put(o.key.as_str(), o.value.as_str(), None))
            .collect();
        within(
            Duration::from_secs(10),
            client.txn(Txn::new().and_then(ops)),
        )
        .await?;
    }
    Ok(())
}
