//! The XDP prefilter as the daemon keeps it: the deny maps equal to the union of the
//! entries `membrane prefilter add` made on this node, recorded in `<state
//! dir>/prefilter.json`, and the cluster-wide deny lists the control plane serves
//! (`membrane.agent.v1.PrefilterDenyList`, held and recorded as every served type is). A
//! restarted agent keeps both: the maps stay pinned, and at start they are synced with the
//! recorded entries and lists before the control plane is reached (fail-static).
//!
//! Every request is checked whole before anything is written: one bad CIDR refuses it and
//! the maps and the recorded entries stay as they were. A control-plane update whose union
//! the maps cannot take is refused (NACK) and the last good lists stay in force. The CLI
//! deletes only its own entries: a prefix a deny list holds is deleted where it comes from.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::PathBuf;

use ipnet::IpNet;
use membrane_datapath::node::{parse_prefixes, PrefilterChanges};
use serde_json::{json, Value};

use crate::node::Node;
use crate::resources::{Held, Kind, Spec};
use crate::store;

/// A prefilter request or sync that failed; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum PrefilterError {
    /// The request's entries are not CIDRs the prefilter can hold.
    #[error(transparent)]
    Invalid(#[from] membrane_datapath::node::PrefilterError),
    /// A delete named an entry the CLI did not add.
    #[error("{0}")]
    NotAdded(String),
    /// A delete named an entry of a control-plane deny list.
    #[error(
        "prefilter entry {cidr} comes from the control plane (PrefilterDenyList {lists}); \
         delete it there (kubectl edit prefilterdenylist NAME); nothing was deleted"
    )]
    ControlPlane {
        /// The entry.
        cidr: IpNet,
        /// The lists holding it, comma-separated.
        lists: String,
    },
    /// The recorded CLI entries could not be read or written.
    #[error("{path}: {what}: {why}")]
    State {
        /// The file.
        path: PathBuf,
        /// The operation.
        what: &'static str,
        /// The cause.
        why: String,
    },
    /// The node has no packet path (no underlay device: nothing to filter on).
    #[error("the prefilter is not running (the agent needs --underlay-device)")]
    NotRunning,
    /// Writing the deny maps failed.
    #[error("prefilter maps: {0}")]
    Datapath(String),
}

type Result<T> = std::result::Result<T, PrefilterError>;

impl Node {
    fn prefilter_file(&self) -> PathBuf {
        self.store.dir().join("prefilter.json")
    }

    /// The entries `membrane prefilter add` made, as recorded.
    pub fn prefilter_cli(&self) -> Result<BTreeSet<IpNet>> {
        let path = self.prefilter_file();
        let state = |what, why: String| PrefilterError::State {
            path: path.clone(),
            what,
            why,
        };
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
            Err(e) => return Err(state("read", e.to_string())),
        };
        let list: Vec<String> =
            serde_json::from_slice(&text).map_err(|e| state("damaged", e.to_string()))?;
        parse_prefixes(&list).map_err(|e| state("damaged", e.to_string()))
    }

    fn save_prefilter_cli(&self, set: &BTreeSet<IpNet>) -> Result<()> {
        let path = self.prefilter_file();
        let list: Vec<String> = set.iter().map(IpNet::to_string).collect();
        let text = serde_json::to_vec(&list).expect("a list of strings serialises");
        store::write_atomically(&path, &text).map_err(|e| PrefilterError::State {
            path,
            what: "write",
            why: e.to_string(),
        })
    }

    /// Make the deny maps hold `cli` and the control plane's `lists` (the union).
    fn sync_prefilter_sets(
        &self,
        cli: &BTreeSet<IpNet>,
        lists: Option<&Held>,
    ) -> Result<PrefilterChanges> {
        let p = self.packet.as_ref().ok_or(PrefilterError::NotRunning)?;
        if p.prefilter.is_none() {
            return Err(PrefilterError::NotRunning);
        }
        let mut set = cli.clone();
        set.extend(control_plane(lists).into_keys());
        p.dp.sync_prefilter(&set).map_err(|e| match e {
            membrane_datapath::Error::Prefilter(e) => PrefilterError::Invalid(e),
            e => PrefilterError::Datapath(e.to_string()),
        })
    }

    /// Make the deny maps hold `cli` and the held control-plane lists.
    fn sync_prefilter_with(&self, cli: &BTreeSet<IpNet>) -> Result<PrefilterChanges> {
        self.sync_prefilter_sets(cli, self.held.get(&Kind::Prefilter))
    }

    /// Re-sync the deny maps with the recorded CLI entries and control-plane lists (at
    /// start).
    pub fn sync_prefilter(&self) -> Result<PrefilterChanges> {
        self.sync_prefilter_with(&self.prefilter_cli()?)
    }

    /// Puts the control plane's deny lists `next` in force before they are held: a union
    /// the maps cannot take is refused with nothing written. A node without a prefilter
    /// (no underlay device) just holds them.
    pub(crate) fn apply_prefilter_lists(&self, next: &Held) -> std::result::Result<(), String> {
        let cli = self.prefilter_cli().map_err(|e| e.to_string())?;
        match self.sync_prefilter_sets(&cli, Some(next)) {
            Ok(c) => {
                if c.added + c.deleted > 0 {
                    tracing::info!(changes = ?c, "prefilter deny lists from the control plane in force");
                }
                Ok(())
            }
            Err(PrefilterError::NotRunning) => Ok(()),
            Err(e) => Err(format!("PrefilterDenyList: {e}")),
        }
    }

    /// `membrane prefilter add CIDR...`.
    pub fn prefilter_add(&self, cidrs: &[String]) -> Result<Value> {
        let add = parse_prefixes(cidrs)?;
        let old = self.prefilter_cli()?;
        let new: BTreeSet<IpNet> = old.union(&add).copied().collect();
        self.change_cli(&old, &new)
    }

    /// `membrane prefilter delete CIDR...`: only entries the CLI added (the control
    /// plane's are deleted where they come from).
    pub fn prefilter_delete(&self, cidrs: &[String]) -> Result<Value> {
        let del = parse_prefixes(cidrs)?;
        let old = self.prefilter_cli()?;
        let lists = control_plane(self.held.get(&Kind::Prefilter));
        if let Some(net) = del.iter().find(|n| !old.contains(n)) {
            if let Some(names) = lists.get(net) {
                return Err(PrefilterError::ControlPlane {
                    cidr: *net,
                    lists: names.join(", "),
                });
            }
            return Err(PrefilterError::NotAdded(format!(
                "prefilter entry {net} was not added with membrane prefilter add; nothing \
                 was deleted"
            )));
        }
        let new: BTreeSet<IpNet> = old.difference(&del).copied().collect();
        self.change_cli(&old, &new)
    }

    /// Write the maps for `new`, then record it; a failed record puts the maps back.
    fn change_cli(&self, old: &BTreeSet<IpNet>, new: &BTreeSet<IpNet>) -> Result<Value> {
        let c = self.sync_prefilter_with(new)?;
        if let Err(e) = self.save_prefilter_cli(new) {
            let _ = self.sync_prefilter_with(old);
            return Err(e);
        }
        let mut v = self.prefilter_list()?;
        v["changes"] = json!(c);
        Ok(v)
    }

    /// `membrane prefilter list`: each denied prefix with where it comes from, the
    /// device and mode, and the counters.
    pub fn prefilter_list(&self) -> Result<Value> {
        let p = self.packet.as_ref().ok_or(PrefilterError::NotRunning)?;
        let held =
            p.dp.prefilter()
                .map_err(|e| PrefilterError::Datapath(e.to_string()))?;
        let cli = self.prefilter_cli()?;
        let lists = control_plane(self.held.get(&Kind::Prefilter));
        let entries: Vec<Value> = held
            .iter()
            .map(|net| {
                // What the maps hold that neither the CLI nor the control plane put there
                // was written by someone else (another agent version, bpftool): shown,
                // never hidden.
                let source = match (cli.contains(net), lists.get(net)) {
                    (true, None) => "cli",
                    (false, Some(_)) => "control-plane",
                    (true, Some(_)) => "cli+control-plane",
                    (false, None) => "unknown",
                };
                let mut e = json!({ "cidr": net.to_string(), "source": source });
                if let Some(names) = lists.get(net) {
                    e["lists"] = json!(names);
                }
                e
            })
            .collect();
        let stats =
            p.dp.prefilter_stats()
                .map_err(|e| PrefilterError::Datapath(e.to_string()))?;
        Ok(json!({
            "device": p.underlay.as_ref().map(|d| &d.name),
            "mode": p.prefilter,
            "entries": entries,
            "stats": stats,
        }))
    }
}

/// The control plane's deny entries: each prefix with the lists (object names) holding it.
fn control_plane(lists: Option<&Held>) -> BTreeMap<IpNet, Vec<String>> {
    let mut out: BTreeMap<IpNet, Vec<String>> = BTreeMap::new();
    for (name, (_, _, spec)) in lists.into_iter().flatten() {
        if let Spec::Prefilter(nets) = spec {
            for net in nets {
                out.entry(*net).or_default().push(name.clone());
            }
        }
    }
    out
}
