//! The agent's state directory: what a restarted agent needs to adopt the node as it was
//! left. `endpoints/NAMESPACE_POD.json` holds each registration membrane-cni made;
//! `xds/TYPE.json` holds the control plane's resources last put in force (name, version,
//! body), so a restarted agent tells membrane-xds what it has (delta
//! `initial_resource_versions`) and gets only what changed meanwhile. Every file is
//! written to a temporary name and renamed, so a killed agent leaves the old file or the
//! new one, never half of one.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use membrane_datapath::api::Registration;
use serde::{Deserialize, Serialize};

use crate::resources::Kind;

/// A state directory operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading, writing or listing a file failed.
    #[error("{path}: {what}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operation.
        what: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file does not hold what it should.
    #[error("{path}: damaged: {why}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A registration names no valid pod.
    #[error("{0}")]
    Name(String),
}

type Result<T> = std::result::Result<T, StoreError>;

/// Resources of one type by name: (version, protobuf body).
pub type Bodies = BTreeMap<String, (String, Vec<u8>)>;

/// One held resource as stored: its version and protobuf body.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stored {
    /// The version the control plane gave it.
    pub version: String,
    /// The protobuf body, base64.
    pub body: String,
}

/// The state directory.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

/// `NAMESPACE/POD` after checking both are Kubernetes names (lowercase letters, digits,
/// `-` and `.`), so that `NAMESPACE_POD` names one file and one pin directory.
pub fn endpoint_key(namespace: &str, pod: &str) -> Result<String> {
    for (what, v) in [("namespace", namespace), ("pod", pod)] {
        let ok = !v.is_empty()
            && v.len() <= 253
            && v.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && v != "."
            && v != "..";
        if !ok {
            return Err(StoreError::Name(format!(
                "{what} {v:?}: not a Kubernetes name (lowercase letters, digits, '-' and '.')"
            )));
        }
    }
    Ok(format!("{namespace}/{pod}"))
}

/// The file and pin directory name of an endpoint key: `NAMESPACE_POD`.
pub fn flat(key: &str) -> String {
    key.replacen('/', "_", 1)
}

fn io_err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_err(dir, "create directory"))?;
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes).map_err(io_err(&tmp, "write"))?;
    fs::rename(&tmp, path).map_err(io_err(path, "rename into place"))
}

impl Store {
    /// The state directory at `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn endpoint_file(&self, key: &str) -> PathBuf {
        self.dir
            .join("endpoints")
            .join(format!("{}.json", flat(key)))
    }

    /// Records a registration.
    pub fn save_registration(&self, reg: &Registration) -> Result<()> {
        let key = endpoint_key(&reg.namespace, &reg.pod)?;
        let path = self.endpoint_file(&key);
        let text = serde_json::to_vec_pretty(reg).map_err(|e| StoreError::Damaged {
            path: path.clone(),
            why: e.to_string(),
        })?;
        write_atomically(&path, &text)
    }

    /// Forgets a registration; none recorded is not an error.
    pub fn remove_registration(&self, key: &str) -> Result<()> {
        let path = self.endpoint_file(key);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&path, "remove")(e)),
            _ => Ok(()),
        }
    }

    /// Every recorded registration by endpoint key. A damaged file is reported and
    /// skipped (its pod's maps stay as they are; DEL or a new ADD replaces it).
    pub fn registrations(&self) -> Result<(BTreeMap<String, Registration>, Vec<StoreError>)> {
        let dir = self.dir.join("endpoints");
        let mut out = BTreeMap::new();
        let mut damaged = Vec::new();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((out, damaged)),
            Err(e) => return Err(io_err(&dir, "list")(e)),
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let read = fs::read(&path)
                .map_err(io_err(&path, "read"))
                .and_then(|b| {
                    serde_json::from_slice::<Registration>(&b).map_err(|e| StoreError::Damaged {
                        path: path.clone(),
                        why: e.to_string(),
                    })
                })
                .and_then(|r| Ok((endpoint_key(&r.namespace, &r.pod)?, r)));
            match read {
                Ok((key, r)) => {
                    out.insert(key, r);
                }
                Err(e) => damaged.push(e),
            }
        }
        Ok((out, damaged))
    }

    fn xds_file(&self, kind: Kind) -> PathBuf {
        self.dir.join("xds").join(format!("{}.json", kind.name()))
    }

    /// Records the resources of `kind` in force: name -> (version, body).
    pub fn save_resources(
        &self,
        kind: Kind,
        held: &BTreeMap<String, (String, Vec<u8>)>,
    ) -> Result<()> {
        let path = self.xds_file(kind);
        let b64 = base64::engine::general_purpose::STANDARD;
        let out: BTreeMap<&String, Stored> = held
            .iter()
            .map(|(n, (v, body))| {
                (
                    n,
                    Stored {
                        version: v.clone(),
                        body: b64.encode(body),
                    },
                )
            })
            .collect();
        let text = serde_json::to_vec(&out).map_err(|e| StoreError::Damaged {
            path: path.clone(),
            why: e.to_string(),
        })?;
        write_atomically(&path, &text)
    }

    /// The resources of `kind` recorded, if any were ever.
    pub fn resources(&self, kind: Kind) -> Result<Option<Bodies>> {
        let path = self.xds_file(kind);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path, "read")(e)),
        };
        let damaged = |why: String| StoreError::Damaged {
            path: path.clone(),
            why,
        };
        let stored: BTreeMap<String, Stored> =
            serde_json::from_slice(&bytes).map_err(|e| damaged(e.to_string()))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        stored
            .into_iter()
            .map(|(n, s)| {
                let body = b64
                    .decode(&s.body)
                    .map_err(|e| damaged(format!("{n}: body: {e}")))?;
                Ok((n, (s.version, body)))
            })
            .collect::<Result<_>>()
            .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_and_resources_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let reg = Registration {
            namespace: "default".into(),
            pod: "web-1".into(),
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: "/run/netns/x".into(),
            cgroup: "/sys/fs/cgroup/x".into(),
            ips: vec!["10.0.0.1".parse().unwrap()],
            host_ifname: Some("lxc1".into()),
            mac: Some("02:00:00:00:00:01".into()),
        };
        store.save_registration(&reg).unwrap();
        let (regs, damaged) = store.registrations().unwrap();
        assert!(damaged.is_empty());
        assert_eq!(regs["default/web-1"], reg);
        store.remove_registration("default/web-1").unwrap();
        store.remove_registration("default/web-1").unwrap();
        assert!(store.registrations().unwrap().0.is_empty());

        assert_eq!(store.resources(Kind::Endpoint).unwrap(), None);
        let held = BTreeMap::from([("a/b".to_string(), ("v1".to_string(), vec![1, 2, 255]))]);
        store.save_resources(Kind::Endpoint, &held).unwrap();
        assert_eq!(store.resources(Kind::Endpoint).unwrap(), Some(held));
    }

    #[test]
    fn names_are_checked_and_damage_is_reported() {
        assert!(endpoint_key("default", "web").is_ok());
        let e = endpoint_key("default", "../x").unwrap_err().to_string();
        assert!(e.contains("pod \"../x\""), "{e}");
        assert!(endpoint_key("", "web").is_err());
        assert!(endpoint_key("a_b", "web").is_err());
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("endpoints")).unwrap();
        fs::write(dir.path().join("endpoints/x_y.json"), "{").unwrap();
        let (regs, damaged) = Store::new(dir.path()).registrations().unwrap();
        assert!(regs.is_empty());
        assert!(damaged[0].to_string().contains("damaged"), "{:?}", damaged);
    }
}
