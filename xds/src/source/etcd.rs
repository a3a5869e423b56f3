//! The etcd source: one object per key under `/membrane/objects/v1/` (layout
//! in [`crate::kvstore`]), JSON values parsed with the directory source's
//! parser.
//!
//! A background task lists the prefix, then watches it from the list's
//! revision; a compacted revision, a cancelled watch or a lost connection
//! makes it list again. A key is all or nothing, like a file: a bad value
//! (not JSON, an invalid object, or an object whose kind, namespace or name
//! disagree with its key) is rejected and reported with the key named, and
//! the key's last good value stays in force. While etcd is unreachable the
//! last good state stays in force.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use serde_json::{json, Value};
use tracing::{info, warn};

use super::dir::{parse, FileContents};
use super::{ClusterState, ScanReport, Source};
use crate::kvstore::{parse_object_key, within, OBJECTS};

#[derive(Debug)]
struct Entry {
    mod_revision: i64,
    good: Option<Arc<FileContents>>,
    error: Option<String>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: BTreeMap<String, Entry>,
    changed: bool,
    rejected: Vec<String>,
    connected: bool,
    revision: i64,
    lists: u64,
    last_error: Option<String>,
}

impl Inner {
    /// Applies one key's new value.
    fn put(&mut self, key: &str, value: &[u8], mod_revision: i64) {
        if self
            .entries
            .get(key)
            .is_some_and(|e| e.mod_revision == mod_revision)
        {
            return;
        }
        let entry = self.entries.entry(key.to_owned()).or_insert(Entry {
            mod_revision,
            good: None,
            error: None,
        });
        entry.mod_revision = mod_revision;
        match parse_value(key, value) {
            Ok(c) => {
                entry.good = Some(Arc::new(c));
                entry.error = None;
                self.changed = true;
            }
            Err(e) => {
                warn!(%key, error = %e, "etcd value rejected; its last good value stays in force");
                self.rejected.push(e.clone());
                entry.error = Some(e);
            }
        }
    }

    fn delete(&mut self, key: &str) {
        if self.entries.remove(key).is_some() {
            self.changed = true;
        }
    }
}

/// Parses one key's value; the object must be the one the key names.
pub fn parse_value(key: &str, value: &[u8]) -> Result<FileContents, String> {
    let (kind, ns, name) = parse_object_key(key)?;
    let text = std::str::from_utf8(value).map_err(|e| format!("{key}: value is not UTF-8: {e}"))?;
    let v: Value =
        serde_json::from_str(text).map_err(|e| format!("{key}: value is not JSON: {e}"))?;
    let got_kind = v.get("kind").and_then(Value::as_str).unwrap_or("");
    let got_name = v
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let got_ns = v
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty());
    if got_kind != kind {
        return Err(format!(
            "{key}: kind: {got_kind:?} does not match the key ({kind})"
        ));
    }
    if got_name != name {
        return Err(format!(
            "{key}: metadata.name: {got_name:?} does not match the key ({name})"
        ));
    }
    if let Some(ns) = &ns {
        if got_ns.unwrap_or("default") != ns {
            return Err(format!(
                "{key}: metadata.namespace: {got_ns:?} does not match the key ({ns})"
            ));
        }
    }
    let c = parse(key, text).map_err(|e| e.to_string())?;
    if c.objects.len() != 1 {
        return Err(format!(
            "{key}: holds {} objects; one key holds exactly one",
            c.objects.len()
        ));
    }
    Ok(c)
}

/// Objects from etcd, kept current by a watch.
#[derive(Debug)]
pub struct EtcdSource {
    endpoints: Vec<String>,
    inner: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EtcdSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EtcdSource {
    /// Starts the list-and-watch task on the current runtime; `wake` fires
    /// on every change. Waits up to `first_list` for the first listing, so
    /// the first snapshot already holds what etcd has (an unreachable etcd
    /// only delays start-up by that much; until it is listed the source is
    /// not [`Source::synced`] and no snapshot is published).
    pub async fn start(
        client: Client,
        endpoints: Vec<String>,
        wake: Arc<tokio::sync::Notify>,
        first_list: Duration,
    ) -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let listed = Arc::new(tokio::sync::Notify::new());
        let task = tokio::spawn(run(
            endpoints.clone(),
            client,
            inner.clone(),
            wake,
            listed.clone(),
        ));
        if tokio::time::timeout(first_list, listed.notified())
            .await
            .is_err()
        {
            warn!(
                ?endpoints,
                "etcd not listed yet; publishing no snapshot until it is"
            );
        }
        EtcdSource {
            endpoints,
            inner,
            task,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn lock(inner: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|e| e.into_inner())
}

async fn run(
    endpoints: Vec<String>,
    mut client: Client,
    inner: Arc<Mutex<Inner>>,
    wake: Arc<tokio::sync::Notify>,
    listed: Arc<tokio::sync::Notify>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match list_and_watch(&mut client, &inner, &wake, &listed).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                let mut g = lock(&inner);
                if g.connected || g.last_error.is_none() {
                    warn!(error = %e, "etcd source lost; the last good state stays in force");
                    // Reported once per loss, as a rejection: it shows in
                    // status and in the source error metric.
                    g.rejected.push(format!(
                        "etcd {}: unreachable, the last good state stays in force: {e}",
                        endpoints.join(",")
                    ));
                    drop(g);
                    wake.notify_one();
                    g = lock(&inner);
                }
                g.connected = false;
                g.last_error = Some(e);
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// One list, then the watch until it ends. `Ok` when the watch ended in a
/// way that calls for a new list (compaction, cancellation), `Err` on a
/// connection failure.
async fn list_and_watch(
    client: &mut Client,
    inner: &Mutex<Inner>,
    wake: &tokio::sync::Notify,
    listed: &tokio::sync::Notify,
) -> Result<(), String> {
    let r = within(
        Duration::from_secs(5),
        client.get(OBJECTS, Some(GetOptions::new().with_prefix())),
    )
    .await
    .map_err(|e| e.to_string())?;
    let revision = r.header().map(|h| h.revision()).unwrap_or(0);
    {
        let mut g = lock(inner);
        let keys: Vec<String> = r
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect();
        let gone: Vec<String> = g
            .entries
            .keys()
            .filter(|k| !keys.contains(k))
            .cloned()
            .collect();
        for k in gone {
            g.delete(&k);
        }
        for (k, kv) in keys.iter().zip(r.kvs()) {
            g.put(k, kv.value(), kv.mod_revision());
        }
        if !g.connected {
            info!(revision, keys = keys.len(), "etcd source listed");
            // Connected again: republish status (and re-check state).
            g.changed = true;
        }
        g.connected = true;
        g.last_error = None;
        g.revision = revision;
        g.lists += 1;
    }
    listed.notify_one();
    wake.notify_one();
    watch_from(client, inner, wake, revision + 1).await
}

/// Applies watch events from `start` on until the watch ends: `Ok` when it
/// was cancelled or its revision compacted (list again), `Err` when the
/// connection failed.
async fn watch_from(
    client: &mut Client,
    inner: &Mutex<Inner>,
    wake: &tokio::sync::Notify,
    start: i64,
) -> Result<(), String> {
    let mut stream = client
        .watch(
            OBJECTS,
            Some(WatchOptions::new().with_prefix().with_start_revision(start)),
        )
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let Some(msg) = stream.message().await.map_err(|e| e.to_string())? else {
            return Err("watch stream ended".into());
        };
        if msg.compact_revision() > 0 || msg.canceled() {
            info!(
                compact_revision = msg.compact_revision(),
                reason = msg.cancel_reason(),
                "etcd watch cancelled; listing again"
            );
            return Ok(());
        }
        if msg.events().is_empty() {
            continue;
        }
        let mut g = lock(inner);
        for ev in msg.events() {
            let Some(kv) = ev.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            match ev.event_type() {
                EventType::Put => g.put(&key, kv.value(), kv.mod_revision()),
                EventType::Delete => g.delete(&key),
            }
            g.revision = g.revision.max(kv.mod_revision());
        }
        drop(g);
        wake.notify_one();
    }
}

impl Source for EtcdSource {
    fn name(&self) -> &'static str {
        "etcd"
    }

    fn scan(&mut self) -> ScanReport {
        let mut g = self.lock();
        ScanReport {
            changed: std::mem::take(&mut g.changed),
            rejected: std::mem::take(&mut g.rejected),
        }
    }

    fn state(&self) -> ClusterState {
        let g = self.lock();
        let mut s = ClusterState::default();
        for c in g.entries.values().filter_map(|e| e.good.as_ref()) {
            s.extend(c.state.clone());
        }
        s
    }

    fn synced(&self) -> bool {
        self.lock().lists > 0
    }

    fn status(&self) -> Value {
        let g = self.lock();
        let keys: Vec<Value> = g
            .entries
            .iter()
            .map(|(k, e)| {
                json!({
                    "key": k,
                    "in_force": e.good.is_some(),
                    "objects": e.good.as_ref().map(|c| c.objects.clone()).unwrap_or_default(),
                    "rejected": e.error,
                })
            })
            .collect();
        json!({
            "endpoints": self.endpoints,
            "connected": g.connected,
            "revision": g.revision,
            "lists": g.lists,
            "last_error": g.last_error,
            "keys": keys,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real etcd on free loopback ports in a temp dir, killed on drop.
    struct Etcd {
        child: std::process::Child,
        url: String,
        _dir: tempfile::TempDir,
    }

    impl Drop for Etcd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn etcd() -> Etcd {
        let port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let dir = tempfile::tempdir().unwrap();
        let (url, peer) = (
            format!("http://127.0.0.1:{}", port()),
            format!("http://127.0.0.1:{}", port()),
        );
        let child = std::process::Command::new("etcd")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--name", "t", "--listen-client-urls", &url])
            .args(["--advertise-client-urls", &url, "--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn etcd (Debian etcd-server)");
        Etcd {
            child,
            url,
            _dir: dir,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_compacted_watch_revision_ends_the_watch_so_the_source_lists_again() {
        let e = etcd();
        let mut c = crate::kvstore::connect(std::slice::from_ref(&e.url))
            .await
            .unwrap();
        let start = std::time::Instant::now();
        while c.status().await.is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "etcd does not answer"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let key = "/membrane/objects/v1/Namespace/n1";
        let v = r#"{"kind":"Namespace","metadata":{"name":"n1"}}"#;
        let mut last = 0;
        for _ in 0..3 {
            last = c
                .put(key, v, None)
                .await
                .unwrap()
                .header()
                .unwrap()
                .revision();
        }
        c.compact(last, None).await.unwrap();
        let inner = Mutex::new(Inner::default());
        let wake = tokio::sync::Notify::new();
        // A watch from before the compaction is refused: the caller lists again.
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            watch_from(&mut c, &inner, &wake, last - 1),
        )
        .await
        .expect("the watch ends");
        assert_eq!(r, Ok(()));
        // A watch from the compaction point on sees new events.
        let mut c2 = c.clone();
        let watching = tokio::spawn(async move {
            let inner = Mutex::new(Inner::default());
            let wake = tokio::sync::Notify::new();
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                watch_from(&mut c2, &inner, &wake, last + 1),
            )
            .await;
            let n = lock(&inner).entries.len();
            n
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.put(
            "/membrane/objects/v1/Namespace/n2",
            v.replace("n1", "n2"),
            None,
        )
        .await
        .unwrap();
        assert_eq!(watching.await.unwrap(), 1);
    }

    #[test]
    fn values_must_be_the_object_their_key_names() {
        let key = "/membrane/objects/v1/Pod/default/p1";
        let pod = r#"{"kind":"Pod","metadata":{"name":"p1","namespace":"default"},"status":{"podIP":"10.0.0.1"}}"#;
        let c = parse_value(key, pod.as_bytes()).unwrap();
        assert_eq!(c.state.pods.len(), 1);
        let e = parse_value("/membrane/objects/v1/Pod/default/p2", pod.as_bytes()).unwrap_err();
        assert!(
            e.contains("metadata.name: \"p1\" does not match the key (p2)"),
            "{e}"
        );
        let e = parse_value(key, b"{not json").unwrap_err();
        assert!(e.starts_with(&format!("{key}: value is not JSON")), "{e}");
        let bad = pod.replace("\"name\":\"p1\"", "\"name\":\"p1\",\"labels\":{\"a\":7}");
        let e = parse_value(key, bad.as_bytes()).unwrap_err();
        assert!(
            e.contains(&format!("{key}: Pod default/p1: metadata.labels")),
            "{e}"
        );

        // A bad value keeps the key's last good value.
        let mut inner = Inner::default();
        inner.put(key, pod.as_bytes(), 2);
        assert!(std::mem::take(&mut inner.changed));
        inner.put(key, b"{", 3);
        assert!(!inner.changed);
        assert_eq!(inner.rejected.len(), 1);
        assert!(inner.entries[key].good.is_some());
        inner.delete(key);
        assert!(inner.changed && inner.entries.is_empty());
    }
}
