//! The node: the endpoints membrane-cni registered, the control plane's resources in force,
//! and the programming that keeps each endpoint's maps equal to them.
//!
//! One endpoint is one datapath pin directory, `<bpffs>/endpoints/NAMESPACE_POD/`, attached
//! to the pod's cgroup (connect-time egress policy, capture, splice) and its network
//! namespace (sk_lookup: ingress policy, inbound capture with a sidecar). Every write is a
//! diff against what the maps hold (`sync_policy`, `sync_ipcache`, services, settings only
//! when they differ), so re-applying what is in force changes nothing, and an agent that
//! restarts adopts the pins as they are: it never detaches, re-attaches or flushes.
//!
//! A resource type the agent never received (nor recorded in its state directory) is left
//! alone in the maps rather than taken as empty: a restarted agent must not wipe the
//! ipcache because NPHDS has not arrived yet.
//!
//! An endpoint registered before the control plane describes it (or after it stopped
//! describing it) is enforced with no allow entry: every connection from or to it is
//! denied until its policy arrives. Cilium holds such pods in its "init" identity; here
//! the safe default is simply deny.

use std::collections::BTreeMap;
use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use membrane_datapath::api::Registration;
use membrane_datapath::{Capture, Datapath, DatapathSettings};
use serde::Serialize;

use crate::resources::{self, EndpointSpec, Held, Kind, Spec};
use crate::store::{self, Store};

/// What programming the node failed at.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A map or attach operation failed.
    #[error("endpoint {endpoint}: {what}: {source}")]
    Datapath {
        /// `NAMESPACE/POD`.
        endpoint: String,
        /// The step.
        what: &'static str,
        /// The cause (boxed: the datapath's error is large).
        #[source]
        source: Box<membrane_datapath::Error>,
    },
    /// The state directory could not be read or written.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// A registration that cannot be enforced.
    #[error("registration of {endpoint}: {why}")]
    Registration {
        /// `NAMESPACE/POD`.
        endpoint: String,
        /// What is wrong.
        why: String,
    },
    /// No endpoint by that name.
    #[error("no endpoint {0} is registered on this node")]
    NoEndpoint(String),
}

type Result<T> = std::result::Result<T, NodeError>;

/// Map changes one programming pass made for one endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Changes {
    /// The settings row was rewritten.
    pub settings: bool,
    /// Policy map entries added, changed, removed.
    pub policy: (usize, usize, usize),
    /// ipcache entries added, changed, removed.
    pub ipcache: (usize, usize, usize),
    /// Service frontends set or deleted.
    pub services: usize,
    /// Attachments made (cgroup, netns).
    pub attached: usize,
    /// The packet path's tc programs attached or its endpoints-map row rewritten.
    pub tc: bool,
}

impl Changes {
    /// Nothing was written.
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }

    /// How many writes these are.
    pub fn count(&self) -> usize {
        let sum = |(a, c, r): (usize, usize, usize)| a + c + r;
        usize::from(self.settings)
            + sum(self.policy)
            + sum(self.ipcache)
            + self.services
            + self.attached
            + usize::from(self.tc)
    }
}

/// What the agent knows about one endpoint's enforcement.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EndpointState {
    /// The policy revision the maps hold (None: no policy from the control plane yet,
    /// so the endpoint is enforced with no allow entry).
    pub applied_revision: Option<u64>,
    /// The changes of the last programming pass.
    pub last_changes: Changes,
    /// Map writes (entries, settings rows, attachments) this agent process made for the
    /// endpoint in all: an adopted endpoint the control plane did not change stays at 0.
    pub writes: usize,
    /// The last programming error, if the last pass failed.
    pub error: Option<String>,
}

/// The control-plane connection, for `membrane status`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct XdsState {
    /// The control plane's address.
    pub address: String,
    /// A stream is open now.
    pub connected: bool,
    /// Per type: the system version of the last response put in force (ACKed).
    pub versions: BTreeMap<Kind, String>,
    /// Responses ACKed and NACKed since start.
    pub acks: u64,
    /// Responses NACKed since start.
    pub nacks: u64,
    /// The last NACK's message.
    pub last_nack: Option<String>,
}

/// The node agent's state.
#[derive(Debug)]
pub struct Node {
    pub(crate) name: String,
    pub(crate) bpffs: PathBuf,
    pub(crate) store: Store,
    pub(crate) regs: BTreeMap<String, Registration>,
    pub(crate) held: BTreeMap<Kind, Held>,
    pub(crate) states: BTreeMap<String, EndpointState>,
    /// The node's packet path (tc), when the daemon runs it.
    pub(crate) packet: Option<crate::tc::PacketPath>,
    /// The node-wide writes of the last packet-path pass.
    pub(crate) node_changes: crate::tc_sync::NodeChanges,
    /// The control-plane connection.
    pub xds: XdsState,
    /// The sidecars' records socket's counters (`status`).
    pub records: std::sync::Arc<crate::records::RecordStats>,
}

pub(crate) fn dp_err<'a>(
    endpoint: &'a str,
    what: &'static str,
) -> impl FnOnce(membrane_datapath::Error) -> NodeError + 'a {
    move |source| NodeError::Datapath {
        endpoint: endpoint.to_owned(),
        what,
        source: Box::new(source),
    }
}

impl Node {
    /// The node `name` with its pins under `bpffs` and its state in `store`: the recorded
    /// registrations and resources are loaded, nothing is programmed yet ([`Node::adopt`]).
    /// Returns warnings for records that could not be used.
    pub fn open(name: &str, bpffs: &Path, store: Store) -> Result<(Node, Vec<String>)> {
        let (regs, damaged) = store.registrations()?;
        let mut warnings: Vec<String> = damaged.iter().map(|e| e.to_string()).collect();
        let mut held = BTreeMap::new();
        for kind in Kind::ALL {
            let Some(stored) = store.resources(kind)? else {
                continue;
            };
            let decoded: std::result::Result<Held, _> = stored
                .into_iter()
                .map(|(n, (v, body))| {
                    let spec = resources::decode(kind, &n, &body)?;
                    Ok::<_, resources::ResourceError>((n, (v, body, spec)))
                })
                .collect();
            match decoded {
                Ok(h) => {
                    held.insert(kind, h);
                }
                // Then that type counts as never received: the maps keep what they hold
                // and the control plane sends it in full.
                Err(e) => warnings.push(format!("recorded {}: {e}", kind.name())),
            }
        }
        Ok((
            Node {
                name: name.to_owned(),
                bpffs: bpffs.to_path_buf(),
                store,
                regs,
                held,
                states: BTreeMap::new(),
                packet: None,
                node_changes: Default::default(),
                xds: XdsState::default(),
                records: Default::default(),
            },
            warnings,
        ))
    }

    /// Runs the node's packet path: endpoints programmed from now on get their tc
    /// programs, and the node-wide maps are kept with the resources.
    pub fn set_packet_path(&mut self, p: crate::tc::PacketPath) {
        self.packet = Some(p);
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pin directory of an endpoint.
    pub fn endpoint_dir(&self, key: &str) -> PathBuf {
        self.bpffs.join("endpoints").join(store::flat(key))
    }

    /// The pin directories of the registered endpoints.
    pub fn endpoint_dirs(&self) -> Vec<PathBuf> {
        self.regs.keys().map(|k| self.endpoint_dir(k)).collect()
    }

    /// Versions of the resources held, for delta `initial_resource_versions`.
    pub fn held_versions(&self, kind: Kind) -> BTreeMap<String, String> {
        self.held
            .get(&kind)
            .map(|h| {
                h.iter()
                    .map(|(n, (v, _, _))| (n.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Adopts every recorded endpoint: a pod whose network namespace is gone is forgotten
    /// (its pins removed); the others are programmed as a diff against their pinned maps
    /// (an endpoint the recorded resources describe as its maps hold sees no change).
    /// Returns one line per endpoint.
    pub fn adopt(&mut self) -> Vec<String> {
        let keys: Vec<String> = self.regs.keys().cloned().collect();
        let mut out = Vec::new();
        for key in keys {
            let reg = self.regs[&key].clone();
            if !reg.netns.exists() {
                let r = self.forget(&key);
                out.push(format!(
                    "{key}: network namespace {} is gone; forgotten ({r:?})",
                    reg.netns.display()
                ));
                continue;
            }
            match self.program(&key) {
                Ok(c) => out.push(format!("{key}: adopted, changes {c:?}")),
                Err(e) => out.push(format!("{key}: adoption failed: {e}")),
            }
        }
        out
    }

    /// Programs again every endpoint whose last pass failed (a transient kernel error must
    /// not leave it behind until the control plane's next change). Returns one line each.
    pub fn retry_failed(&mut self) -> Vec<String> {
        let failed: Vec<String> = self
            .states
            .iter()
            .filter(|(k, s)| s.error.is_some() && self.regs.contains_key(*k))
            .map(|(k, _)| k.clone())
            .collect();
        failed
            .into_iter()
            .map(|k| match self.program(&k) {
                Ok(c) => format!("{k}: programmed on retry, changes {c:?}"),
                Err(e) => format!("{k}: retry failed: {e}"),
            })
            .collect()
    }

    /// membrane-cni ADD: records the pod and attaches and programs its datapath. A pod
    /// registered again (ADD retried) is programmed as a diff. On failure nothing of it
    /// stays (the runtime retries ADD).
    pub fn register(&mut self, reg: Registration) -> Result<Changes> {
        let key = store::endpoint_key(&reg.namespace, &reg.pod)?;
        let reg_err = |why: String| NodeError::Registration {
            endpoint: key.clone(),
            why,
        };
        if !reg.cgroup.is_absolute() || !reg.netns.is_absolute() {
            return Err(reg_err("cgroup and netns must be absolute paths".into()));
        }
        if let Some(old) = self.regs.get(&key) {
            if old.container_id != reg.container_id && old.netns != reg.netns {
                // A new sandbox for the same pod (the old one's DEL was lost): start over.
                self.forget(&key)?;
            }
        }
        self.store.save_registration(&reg)?;
        self.regs.insert(key.clone(), reg);
        match self.program(&key) {
            Ok(c) => Ok(c),
            Err(e) => {
                let _ = self.forget(&key);
                Err(e)
            }
        }
    }

    /// membrane-cni DEL: the endpoint of that container's interface, forgotten. None is
    /// not an error (DEL twice). Returns its key.
    pub fn unregister(&mut self, container_id: &str, ifname: &str) -> Result<Option<String>> {
        let key = self
            .regs
            .iter()
            .find(|(_, r)| r.container_id == container_id && r.ifname == ifname)
            .map(|(k, _)| k.clone());
        if let Some(k) = &key {
            self.forget(k)?;
        }
        Ok(key)
    }

    /// Unpins the endpoint's datapath (its links, so it is detached) and drops its record.
    fn forget(&mut self, key: &str) -> Result<()> {
        let dir = self.endpoint_dir(key);
        if let Ok(dp) = Datapath::open(&dir) {
            if let Some(reg) = self.regs.get(key) {
                self.forget_tc(key, reg, &dp)?;
            }
            dp.teardown().map_err(dp_err(key, "unpin"))?;
        } else if dir.exists() {
            let _ = fs::remove_dir_all(&dir);
        }
        self.store.remove_registration(key)?;
        self.regs.remove(key);
        self.states.remove(key);
        Ok(())
    }

    /// Puts one response's worth of resources of `kind` in force: `updated` (name,
    /// version, body) replace or add, `removed` go. Everything is decoded and checked
    /// first; on the first bad resource nothing changes and the error names it. Then the
    /// affected endpoints are programmed and the resources recorded. Returns the endpoints
    /// programmed with their changes, or the first programming error.
    pub fn apply(
        &mut self,
        kind: Kind,
        updated: Vec<(String, String, Vec<u8>)>,
        removed: &[String],
    ) -> std::result::Result<BTreeMap<String, Changes>, String> {
        let mut next = self.held.get(&kind).cloned().unwrap_or_default();
        let mut touched: Vec<String> = Vec::new();
        for (name, version, body) in updated {
            let spec = resources::decode(kind, &name, &body).map_err(|e| e.to_string())?;
            touched.push(name.clone());
            next.insert(name, (version, body, spec));
        }
        for name in removed {
            if next.remove(name).is_some() {
                touched.push(name.clone());
            }
        }
        if kind == Kind::Hosts {
            ipcache_of(&next)?;
        }
        if kind == Kind::Prefilter {
            // Written before it is held: a union the maps cannot take keeps the last good.
            self.apply_prefilter_lists(&next)?;
        }
        self.held.insert(kind, next);
        let endpoints: Vec<String> = match kind {
            Kind::Endpoint => touched
                .into_iter()
                .filter(|k| self.regs.contains_key(k))
                .collect(),
            // Node: the joined ipcache (node addresses, tunnel endpoints) changes too.
            Kind::Hosts | Kind::Service | Kind::Node => self.regs.keys().cloned().collect(),
            // The node-wide deny maps only, written above.
            Kind::Prefilter => Vec::new(),
        };
        let mut out = BTreeMap::new();
        let mut first_error = None;
        for key in endpoints {
            match self.program(&key) {
                Ok(c) => {
                    out.insert(key, c);
                }
                Err(e) => {
                    first_error.get_or_insert(e.to_string());
                }
            }
        }
        if !matches!(kind, Kind::Endpoint | Kind::Prefilter) {
            if let Err(e) = self.sync_packet_path() {
                first_error.get_or_insert(e);
            }
        }
        let record: store::Bodies = self.held[&kind]
            .iter()
            .map(|(n, (v, b, _))| (n.clone(), (v.clone(), b.clone())))
            .collect();
        self.store
            .save_resources(kind, &record)
            .map_err(|e| e.to_string())?;
        match first_error {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    pub(crate) fn spec(&self, key: &str) -> Option<Option<&EndpointSpec>> {
        self.held.get(&Kind::Endpoint).map(|h| {
            h.get(key).and_then(|(_, _, s)| match s {
                Spec::Endpoint(e) => Some(e.as_ref()),
                _ => None,
            })
        })
    }

    /// The settings an endpoint is enforced with.
    fn settings(reg: &Registration, spec: Option<&EndpointSpec>) -> DatapathSettings {
        let mut addrs: Vec<IpAddr> = reg.ips.clone();
        if let Some(s) = spec {
            addrs.extend(&s.ips);
        }
        addrs.sort_unstable();
        addrs.dedup();
        let sidecar = spec.is_some_and(|s| s.sidecar);
        DatapathSettings {
            capture: sidecar.then(Capture::default),
            policy_enforce: true,
            pod_identity: spec.map_or(0, |s| s.identity),
            capture_inbound: sidecar,
            // What the settings read back as for 0, so an unchanged endpoint compares equal.
            inbound_port: 15006,
            pod_addrs: addrs,
            ..DatapathSettings::default()
        }
    }

    /// Attaches (when not attached yet) and programs one endpoint as a diff.
    fn program(&mut self, key: &str) -> Result<Changes> {
        let reg = self
            .regs
            .get(key)
            .cloned()
            .ok_or_else(|| NodeError::NoEndpoint(key.to_owned()))?;
        let dir = self.endpoint_dir(key);
        let spec = self.spec(key);
        let mut changes = Changes::default();
        let result: Result<()> = (|| {
            let desired = Self::settings(&reg, spec.flatten());
            let cg_ino = fs::metadata(&reg.cgroup)
                .map_err(|e| NodeError::Registration {
                    endpoint: key.to_owned(),
                    why: format!("cgroup {}: {e}", reg.cgroup.display()),
                })?
                .ino();
            let dp = match Datapath::open(&dir) {
                Ok(dp) => dp,
                Err(_) => {
                    // A new endpoint: enforced from its first moment; until the policy
                    // below is written it has no allow entry, so it denies.
                    changes.attached += 1;
                    changes.settings = true;
                    Datapath::attach(&dir, &reg.cgroup, &desired)
                        .map_err(dp_err(key, "attach to the pod's cgroup"))?
                }
            };
            let linked = dp
                .attachments()
                .map_err(dp_err(key, "list attachments"))?
                .contains(&cg_ino.to_string());
            if !linked {
                changes.attached += 1;
                Datapath::attach(&dir, &reg.cgroup, &desired)
                    .map_err(dp_err(key, "attach to the pod's cgroup"))?;
            }
            let cookie = membrane_datapath::netns_cookie(&reg.netns)
                .map_err(dp_err(key, "open the pod's network namespace"))?;
            if !dp.netns_attached(cookie) {
                changes.attached += 1;
                dp.attach_netns(&reg.netns)
                    .map_err(dp_err(key, "attach to the pod's network namespace"))?;
            }
            // Settings and policy: from the control plane's endpoint, or "deny" when it
            // does not describe this one; left as pinned when no endpoint was ever
            // received.
            if let Some(spec) = spec {
                let current = dp.settings().map_err(dp_err(key, "read settings"))?;
                if current != desired {
                    changes.settings = true;
                    dp.set_settings(&desired)
                        .map_err(dp_err(key, "write settings"))?;
                }
                let rules = spec.map(|s| s.rules.as_slice()).unwrap_or(&[]);
                let r = dp
                    .sync_policy(rules)
                    .map_err(dp_err(key, "sync the policy map"))?;
                changes.policy = (r.added, r.changed, r.removed);
            }
            // The ipcache the packet path uses too (NPHDS joined with the nodes).
            if let Some(entries) = self.joined_identities() {
                let r = dp
                    .sync_ipcache(&entries)
                    .map_err(dp_err(key, "sync the ipcache"))?;
                changes.ipcache = (r.added, r.changed, r.removed);
            }
            if let Some(svcs) = self.held.get(&Kind::Service) {
                changes.services =
                    sync_services(&dp, svcs).map_err(dp_err(key, "sync services"))?;
            }
            // Last: the packet path attaches with the policy map already written.
            changes.tc = self.program_tc(key, &reg, spec.flatten(), &dp)?;
            Ok(())
        })();
        let applied = spec.map(|s| s.map(|s| s.revision));
        let state = self.states.entry(key.to_owned()).or_default();
        match result {
            Ok(()) => {
                state.last_changes = changes;
                state.writes += changes.count();
                state.error = None;
                if let Some(revision) = applied {
                    state.applied_revision = revision;
                }
                Ok(changes)
            }
            Err(e) => {
                state.error = Some(e.to_string());
                Err(e)
            }
        }
    }
}

/// The ipcache the held NPHDS resources make; a prefix given two identities is an error.
pub(crate) fn ipcache_of(hosts: &Held) -> std::result::Result<Vec<(IpNet, u32)>, String> {
    let mut by_net: BTreeMap<IpNet, (u32, &str)> = BTreeMap::new();
    for (name, (_, _, spec)) in hosts {
        let Spec::Hosts(entries) = spec else { continue };
        for (net, id) in entries {
            if let Some((other, other_name)) = by_net.insert(*net, (*id, name)) {
                if other != *id {
                    return Err(format!(
                        "NetworkPolicyHosts {name:?}: {net} is identity {id} here and {other} in {other_name:?}"
                    ));
                }
            }
        }
    }
    Ok(by_net.into_iter().map(|(n, (id, _))| (n, id)).collect())
}

/// Services: TCP frontends (the connect-time balancer's map is keyed by address and port
/// alone), written where they differ from the map, removed where the map has more.
fn sync_services(
    dp: &Datapath,
    held: &Held,
) -> std::result::Result<usize, membrane_datapath::Error> {
    let desired: BTreeMap<SocketAddr, Vec<SocketAddr>> = held
        .values()
        .filter_map(|(_, _, s)| match s {
            Spec::Service(s) if s.protocol == 6 => Some((s.frontend, s.backends.clone())),
            _ => None,
        })
        .collect();
    let current: BTreeMap<SocketAddr, Vec<SocketAddr>> = dp.services()?.into_iter().collect();
    let mut n = 0;
    for (fe, bes) in &desired {
        if current.get(fe) != Some(bes) {
            dp.set_service(*fe, bes)?;
            n += 1;
        }
    }
    for fe in current.keys() {
        if !desired.contains_key(fe) {
            dp.delete_service(*fe)?;
            n += 1;
        }
    }
    Ok(n)
}
