//! Incremental reconciliation equals a rebuild from scratch.
//!
//! A long-lived controller follows random edits of a source directory (pods
//! come, go and change labels, policies come, go and change, files turn bad
//! and are fixed); after each edit its published snapshots must equal, key
//! for key and byte for byte (content versions), what a new controller
//! builds from the good files alone. A bad file must leave its last good
//! version in force, so the from-scratch directory holds that version.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use membrane_api::agent::proto;
use membrane_policy::identity::Identity;
use membrane_policy::labels::LabelSet;
use prost::Message;
use serde_json::Value;

use super::Controller;
use crate::identity::ClusterIdentities;
use crate::kvstore::IpEntry;
use crate::recorder::Recorder;
use crate::resource::{content_hash, short_name, AGENT_ENDPOINT};
use crate::snapshot::SnapshotCache;
use crate::source::dir::DirSource;

/// Identities agreed between the two controllers (as etcd makes them agree
/// across replicas), so that history does not change the numbers.
#[derive(Debug, Clone, Default)]
struct Agreed(Arc<Mutex<HashMap<LabelSet, Identity>>>);

impl ClusterIdentities for Agreed {
    fn allocate(&mut self, want: &[LabelSet]) -> (Vec<(LabelSet, Identity)>, Vec<String>) {
        let mut ids = self.0.lock().unwrap();
        let got = want
            .iter()
            .map(|l| {
                let next = Identity(1000 + ids.len() as u32);
                (l.clone(), *ids.entry(l.clone()).or_insert(next))
            })
            .collect();
        (got, Vec::new())
    }

    fn publish(&mut self, _: BTreeMap<String, IpEntry>) {}
}

const APPS: usize = 4;

fn pod(i: usize, app: usize, node: usize) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: pod-{i}, namespace: default, labels: {{app: app-{app}, tier: t}}}}\nspec: {{nodeName: node-{node}, containers: [{{name: c, ports: [{{containerPort: 8080, name: http}}]}}]}}\nstatus: {{podIP: 10.9.0.{}}}\n",
        i + 1
    )
}

fn policy(p: usize, app: usize, from: usize, path: usize) -> String {
    shaped_policy(p, app, from, path, 0)
}

/// Shapes: 0 = app `from` on 8080 with an HTTP rule; 1 = the same on 9090 (a port the
/// pods do not declare: a listener of its own); 2 = `world` on 8080 (its RBAC principal is
/// every address no identity has, so it reads the whole NPHDS view).
fn shaped_policy(p: usize, app: usize, from: usize, path: usize, shape: usize) -> String {
    let (peer, port) = match shape {
        1 => (
            format!("fromEndpoints: [{{matchLabels: {{app: app-{from}}}}}]"),
            9090,
        ),
        2 => ("fromEntities: [world]".to_string(), 8080),
        _ => (
            format!("fromEndpoints: [{{matchLabels: {{app: app-{from}}}}}]"),
            8080,
        ),
    };
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p{p}, namespace: default}}\nspec:\n  endpointSelector: {{matchLabels: {{app: app-{app}}}}}\n  ingress:\n  - {peer}\n    toPorts:\n    - ports: [{{port: \"{port}\", protocol: TCP}}]\n      rules:\n        http: [{{method: GET, path: \"/v{path}/.*\"}}]\n"
    )
}

const FIXED: &str = "apiVersion: v1\nkind: Node\nmetadata: {name: node-0, labels: {topology.kubernetes.io/zone: z0}}\nstatus: {addresses: [{type: InternalIP, address: 192.168.0.10}]}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: node-1, labels: {topology.kubernetes.io/zone: z1}}\nstatus: {addresses: [{type: InternalIP, address: 192.168.0.11}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: app-0, namespace: default}\nspec: {clusterIP: 10.96.0.10, selector: {app: app-0}, ports: [{port: 80, targetPort: http}]}\n";

/// Writes `text` with an mtime of its own: the source notices a change by size or
/// mtime, and two writes within one clock tick may share an mtime.
fn write(dir: &Path, name: &str, text: &str, tick: u64) {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    let f = std::fs::File::options().write(true).open(&path).unwrap();
    f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + tick))
        .unwrap();
}

fn controller(dir: &Path, ids: &Agreed) -> (Controller, Arc<SnapshotCache>) {
    let cache = Arc::new(SnapshotCache::new());
    let c = Controller::new(
        vec![Box::new(DirSource::new(dir, 1 << 20))],
        cache.clone(),
        Arc::new(Recorder::new()),
        Arc::new(Mutex::new(Value::Null)),
    )
    .with_cluster_identities(Box::new(ids.clone()));
    (c, cache)
}

/// What a client of each key in `keys` is served, as each type's version; keys served
/// nothing (or an empty snapshot: the incremental side empties the snapshots of pods that
/// went away) are left out. An agent's endpoints carry the policy revision they were
/// resolved at, which counts policy changes (history, as in Cilium): it is zeroed.
fn served(cache: &SnapshotCache, keys: &BTreeSet<String>) -> BTreeMap<String, Vec<String>> {
    keys.iter()
        .filter_map(|k| {
            let s = cache.get(k)?;
            s.type_urls().next()?;
            let types = s
                .type_urls()
                .map(|t| match t {
                    AGENT_ENDPOINT => {
                        let items = &s.resources(t).unwrap().items;
                        let bodies: Vec<(String, Vec<u8>)> = items
                            .values()
                            .map(|r| {
                                let mut ep: proto::Endpoint = r.decode().unwrap();
                                if let Some(p) = &mut ep.policy {
                                    p.revision = 0;
                                }
                                (r.name.clone(), ep.encode_to_vec())
                            })
                            .collect();
                        format!(
                            "agent_endpoint={:x}",
                            content_hash(&format!("{bodies:?}").into_bytes())
                        )
                    }
                    _ => format!("{}={}", short_name(t), s.type_version(t)),
                })
                .collect();
            Some((k.clone(), types))
        })
        .collect()
}

#[test]
fn random_edits_reconcile_incrementally_to_the_from_scratch_state() {
    for seed in 1..=6u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let live = tempfile::tempdir().unwrap();
        let ids = Agreed::default();
        let (mut c, cache) = controller(live.path(), &ids);
        // The good content of every file: what the from-scratch controller reads.
        let mut good: BTreeMap<String, String> = BTreeMap::new();
        let tick = std::cell::Cell::new(0u64);
        let next = || {
            tick.set(tick.get() + 1);
            tick.get()
        };
        let put = |good: &mut BTreeMap<String, String>, name: String, text: String| {
            write(live.path(), &name, &text, next());
            good.insert(name, text);
        };
        put(&mut good, "fixed.yaml".into(), FIXED.into());
        for i in 0..6 {
            put(&mut good, format!("pod-{i}.yaml"), pod(i, i % APPS, i % 2));
        }
        put(&mut good, "p0.yaml".into(), policy(0, 0, 1, 0));
        c.reconcile();
        for step in 0..30 {
            let what = rng.usize(0..7);
            let i = rng.usize(0..12);
            let p = rng.usize(0..4);
            let desc = match what {
                // A pod appears or changes labels / node.
                0 | 1 => {
                    put(
                        &mut good,
                        format!("pod-{i}.yaml"),
                        pod(i, rng.usize(0..APPS), rng.usize(0..3)),
                    );
                    format!("pod-{i} written")
                }
                // A pod goes away.
                2 => {
                    let _ = std::fs::remove_file(live.path().join(format!("pod-{i}.yaml")));
                    good.remove(&format!("pod-{i}.yaml"));
                    format!("pod-{i} removed")
                }
                // A policy appears or changes.
                3 | 4 => {
                    let shape = rng.usize(0..3);
                    let text =
                        shaped_policy(p, rng.usize(0..APPS), rng.usize(0..APPS), step, shape);
                    put(&mut good, format!("p{p}.yaml"), text);
                    format!("p{p} written")
                }
                // A policy goes away.
                5 => {
                    let _ = std::fs::remove_file(live.path().join(format!("p{p}.yaml")));
                    good.remove(&format!("p{p}.yaml"));
                    format!("p{p} removed")
                }
                // A file turns bad: the last good version stays in force.
                _ => {
                    let name = good.keys().nth(rng.usize(0..good.len())).cloned().unwrap();
                    let bad = good[&name].replacen("8080", "80x80", 1) + "\n::: not yaml";
                    write(live.path(), &name, &bad, next());
                    format!("{name} made bad")
                }
            };
            c.reconcile();
            let scratch = tempfile::tempdir().unwrap();
            for (name, text) in &good {
                std::fs::write(scratch.path().join(name), text).unwrap();
            }
            let (mut fresh, fresh_cache) = controller(scratch.path(), &ids);
            let r = fresh.reconcile();
            assert_eq!(r.rejected, 0, "the good files are good");
            let keys: BTreeSet<String> =
                cache.keys().into_iter().chain(fresh_cache.keys()).collect();
            let want = served(&fresh_cache, &keys);
            let got = served(&cache, &keys);
            assert!(want.len() > 1, "seed {seed} step {step}: nothing published");
            assert_eq!(
                got, want,
                "seed {seed} step {step} ({desc}): incremental != from scratch"
            );
        }
    }
}
