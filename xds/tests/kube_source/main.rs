//! `membrane-xds --kube` against a recorded Kubernetes API: a loopback HTTPS
//! server (its CA in the generated kubeconfig) answers LIST and WATCH for the seven kinds with the objects in
//! `tests/data/kube/` (JSON as the API server sends it), takes status
//! patches like the API server does, and records every request.
//!
//! Asserted: the Star Wars policy reaches a deathstar sidecar over NPDS; a
//! watch MODIFIED event changes what is served, ADDED and DELETED ones add
//! and remove objects; the invalid CNP gets a
//! `Valid=False` status patch naming its field, the valid policies
//! `Valid=True`, each once; a 410 Gone forces a relist that keeps the state
//! and drops what was deleted meanwhile. The recorded objects themselves are
//! checked against the CRD schemas and Kubernetes' own schemas.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use membrane_xds::proto::network_policy_discovery_service_client::NetworkPolicyDiscoveryServiceClient;
use membrane_xds::proto::{port_network_policy_rule::L7, NetworkPolicy};
use prost::Message;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tokio_stream::StreamExt;
use tonic::Streaming;

use common::*;

fn data_dir() -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("tests/data/kube")
}

fn read_json(name: &str) -> Value {
    let p = data_dir().join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    query: String,
    content_type: String,
    authorization: String,
    body: String,
}

#[derive(Default)]
struct Api {
    /// Collection path -> (list kind, apiVersion, items).
    lists: HashMap<String, (String, String, Vec<Value>)>,
    rv: u64,
    requests: Vec<Recorded>,
    /// Open watches: collection path -> senders of event lines.
    watches: Vec<(String, mpsc::UnboundedSender<Bytes>)>,
}

/// The recorded API server.
#[derive(Clone)]
struct FakeApi(Arc<Mutex<Api>>);

const COLLECTIONS: [(&str, &str); 7] = [
    ("/api/v1/pods", "pods.json"),
    ("/api/v1/namespaces", "namespaces.json"),
    ("/api/v1/services", "services.json"),
    ("/api/v1/nodes", "nodes.json"),
    (
        "/apis/discovery.k8s.io/v1/endpointslices",
        "endpointslices.json",
    ),
    (
        "/apis/cilium.io/v2/ciliumnetworkpolicies",
        "ciliumnetworkpolicies.json",
    ),
    (
        "/apis/cilium.io/v2/ciliumclusterwidenetworkpolicies",
        "ciliumclusterwidenetworkpolicies.json",
    ),
];
const CNPS: &str = "/apis/cilium.io/v2/ciliumnetworkpolicies";
const PODS: &str = "/api/v1/pods";

fn name_of(v: &Value) -> &str {
    v.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

impl FakeApi {
    fn load() -> Self {
        let mut api = Api {
            rv: 2000,
            ..Api::default()
        };
        for (path, file) in COLLECTIONS {
            let v = read_json(file);
            let kind = v["kind"].as_str().unwrap().to_string();
            let av = v["apiVersion"].as_str().unwrap().to_string();
            let items = v["items"].as_array().unwrap().clone();
            api.lists.insert(path.to_string(), (kind, av, items));
        }
        FakeApi(Arc::new(Mutex::new(api)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Api> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    fn watching(&self, collection: &str) -> usize {
        let mut a = self.lock();
        a.watches.retain(|(_, tx)| !tx.is_closed());
        a.watches.iter().filter(|(c, _)| c == collection).count()
    }

    fn lists_of(&self, collection: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| {
                r.method == "GET" && r.path == collection && !r.query.contains("watch=true")
            })
            .count()
    }

    /// Applies a watch event to the store, as the API server would, and
    /// sends it to the open watches of `collection`.
    fn event(&self, collection: &str, kind: &str, mut object: Value) {
        let mut a = self.lock();
        a.rv += 1;
        let rv = a.rv.to_string();
        object["metadata"]["resourceVersion"] = json!(rv);
        let (list_kind, av, items) = a.lists.get_mut(collection).unwrap();
        // Watch events carry kind and apiVersion, which core list items lack.
        if object.get("kind").is_none() {
            object["kind"] = json!(list_kind.trim_end_matches("List"));
            object["apiVersion"] = json!(av.clone());
        }
        let name = name_of(&object).to_string();
        let pos = items.iter().position(|i| name_of(i) == name);
        match kind {
            "DELETED" => {
                if let Some(p) = pos {
                    items.remove(p);
                }
            }
            _ => {
                // With a status subresource, updates of the main resource
                // leave the stored status alone.
                if let Some(p) = pos {
                    if let Some(st) = items[p].get("status").cloned() {
                        if collection.contains("cilium.io") {
                            object["status"] = st;
                        }
                    }
                    items[p] = object.clone();
                } else {
                    items.push(object.clone());
                }
            }
        }
        let line = format!("{}\n", json!({"type": kind, "object": object}));
        for (c, tx) in &a.watches {
            if c == collection {
                let _ = tx.send(Bytes::from(line.clone()));
            }
        }
    }

    /// Ends the watches of `collection` with a 410 Gone ERROR event.
    fn expire(&self, collection: &str) {
        let mut a = self.lock();
        let line = format!(
            "{}\n",
            json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": "too old resource version: 2001 (2150)",
                "reason": "Expired", "code": 410}})
        );
        a.watches.retain(|(c, tx)| {
            if c == collection {
                let _ = tx.send(Bytes::from(line.clone()));
                false // dropping the sender ends the response
            } else {
                true
            }
        });
    }

    /// Serves HTTPS with `cert`/`key`, as an API server does.
    async fn serve(self, cert: &Path, key: &Path) -> std::net::SocketAddr {
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let config = tokio_rustls::rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let l = TlsListener {
            tcp,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        };
        let app = axum::Router::new().fallback(handle).with_state(self);
        tokio::spawn(async move { axum::serve(l, app).await });
        addr
    }
}

/// TCP plus a TLS handshake per connection (bounded in time).
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((s, peer)) = self.tcp.accept().await else {
                continue;
            };
            let hs = tokio::time::timeout(Duration::from_secs(5), self.acceptor.accept(s));
            if let Ok(Ok(tls)) = hs.await {
                return (tls, peer);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// A CA, and a certificate for 127.0.0.1 it signed: (ca, cert, key).
fn certificates(d: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca = Ca::new("recorded-ca", &d.join("ca.pem"), &d.join("ca.key"));
    let leaf = ca.issue(
        &Leaf::new("kube-apiserver").san("IP:127.0.0.1"),
        &d.join("cert.pem"),
        &d.join("key.pem"),
    );
    (ca.files.cert.clone(), leaf.cert, leaf.key)
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(v.to_string()))
        .unwrap()
}

async fn handle(
    State(api): State<FakeApi>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let h = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    let mut a = api.lock();
    a.requests.push(Recorded {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        content_type: h("content-type"),
        authorization: h("authorization"),
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let not_found = || {
        json_response(
            StatusCode::NOT_FOUND,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
        )
    };
    if method == Method::GET {
        let Some((list_kind, av, items)) = a.lists.get(&path).cloned() else {
            return not_found();
        };
        let rv = a.rv.to_string();
        if !query.split('&').any(|q| q == "watch=true") {
            return json_response(
                StatusCode::OK,
                &json!({"kind": list_kind, "apiVersion": av, "metadata": {"resourceVersion": rv}, "items": items}),
            );
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let kind = list_kind.trim_end_matches("List").to_string();
        let bookmark = json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": av,
            "metadata": {"resourceVersion": rv, "annotations": {"k8s.io/initial-events-end": "true"}}}});
        let _ = tx.send(Bytes::from(format!("{bookmark}\n")));
        a.watches.push((path, tx));
        let stream = UnboundedReceiverStream::new(rx).map(Ok::<_, std::convert::Infallible>);
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from_stream(stream))
            .unwrap();
    }
    if method == Method::PATCH && path.ends_with("/status") {
        // /apis/cilium.io/v2[/namespaces/NS]/PLURAL/NAME/status
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let n = parts.len();
        let (plural, name) = (parts[n - 3], parts[n - 2]);
        let collection = format!("/apis/cilium.io/v2/{plural}");
        let Ok(patch) = serde_json::from_str::<Value>(&String::from_utf8_lossy(&body)) else {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"kind": "Status", "code": 400}),
            );
        };
        let Some(obj) = a
            .lists
            .get(&collection)
            .and_then(|l| l.2.iter().find(|o| name_of(o) == name))
            .cloned()
        else {
            return not_found();
        };
        let mut obj = obj;
        obj["status"] = patch["status"].clone();
        drop(a);
        // The API server announces the status change to the watchers.
        api.event(&collection, "MODIFIED", obj.clone());
        return json_response(StatusCode::OK, &obj);
    }
    not_found()
}

fn kubeconfig(dir: &Path, addr: std::net::SocketAddr, ca: &Path) -> PathBuf {
    let p = dir.join("kubeconfig");
    std::fs::write(
        &p,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: recorded\n  cluster:\n    server: https://{addr}\n    certificate-authority: {}\n\
             users:\n- name: membrane\n  user:\n    token: recorded-token\n\
             contexts:\n- name: recorded\n  context:\n    cluster: recorded\n    user: membrane\n\
             current-context: recorded\n",
            ca.display()
        ),
    )
    .unwrap();
    p
}

const SIDECAR: &str =
    "sidecar~10.244.1.11~deathstar-5b8d7f9c4d-2xkq8.default~default.svc.cluster.local";

async fn npds_stream(
    grpc: std::net::SocketAddr,
) -> (mpsc::Sender<DiscoveryRequest>, Streaming<DiscoveryResponse>) {
    let mut client = NetworkPolicyDiscoveryServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(8);
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: SIDECAR.into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let s = client
        .stream_network_policies(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, s)
}

async fn next(s: &mut Streaming<DiscoveryResponse>) -> DiscoveryResponse {
    tokio::time::timeout(Duration::from_secs(15), s.message())
        .await
        .expect("response in time")
        .expect("stream ok")
        .expect("stream open")
}

/// The HTTP rules (method, path) of the deathstar's ingress policy on port 80.
fn deathstar_http(r: &DiscoveryResponse) -> Vec<(String, String)> {
    let nps: Vec<NetworkPolicy> = r
        .resources
        .iter()
        .map(|a| NetworkPolicy::decode(a.value.as_slice()).unwrap())
        .collect();
    let np = nps
        .iter()
        .find(|p| p.endpoint_ips.contains(&"10.244.1.11".to_string()))
        .unwrap_or_else(|| panic!("no policy for the deathstar in {nps:?}"));
    let mut out = Vec::new();
    for port in np.ingress_per_port_policies.iter().filter(|p| p.port == 80) {
        for rule in &port.rules {
            if let Some(L7::HttpRules(h)) = &rule.l7 {
                for hr in &h.http_rules {
                    let get = |name: &str| {
                        hr.headers
                            .iter()
                            .find(|m| m.name == name)
                            .map(|m| format!("{m:?}"))
                            .unwrap_or_default()
                    };
                    out.push((get(":method"), get(":path")));
                }
            }
        }
    }
    out
}

fn status_patches(api: &FakeApi) -> Vec<Recorded> {
    api.requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect()
}

fn valid_condition(r: &Recorded) -> Value {
    let v: Value = serde_json::from_str(&r.body).unwrap();
    v["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Valid")
        .cloned()
        .unwrap_or_else(|| panic!("no Valid condition in {}", r.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_source_serves_policy_follows_watch_writes_status_and_relists() {
    let api = FakeApi::load();
    let tmp = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(tmp.path());
    let addr = api.clone().serve(&cert, &key).await;
    let kc = kubeconfig(tmp.path(), addr, &ca);
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let xds = start_xds_with(
        &empty,
        &["--kube".as_ref(), "--kubeconfig".as_ref(), kc.as_os_str()],
    );

    // Every kind was listed (and is watched) with the kubeconfig's token.
    for (c, _) in COLLECTIONS {
        assert!(api.lists_of(c) >= 1, "{c} was not listed");
    }
    assert!(api
        .requests()
        .iter()
        .all(|r| r.authorization == "Bearer recorded-token"));

    // The deathstar's sidecar gets the L7 rule of the Star Wars policy.
    let (tx, mut s) = npds_stream(xds.grpc()).await;
    let r1 = next(&mut s).await;
    let rules = deathstar_http(&r1);
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert!(
        rules[0].0.contains("POST") && rules[0].1.contains("/v1/request-landing"),
        "{rules:?}"
    );
    tx.send(DiscoveryRequest {
        version_info: r1.version_info.clone(),
        response_nonce: r1.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();

    // Status: each policy gets its verdict once, as a merge patch on /status.
    let patches = eventually(Duration::from_secs(15), "three status patches", || async {
        let p = status_patches(&api);
        (p.len() >= 3).then_some(p)
    })
    .await;
    let find = |path: &str| {
        patches
            .iter()
            .find(|r| r.path == path)
            .unwrap_or_else(|| panic!("no PATCH of {path} in {patches:?}"))
            .clone()
    };
    let invalid =
        find("/apis/cilium.io/v2/namespaces/default/ciliumnetworkpolicies/invalid-policy/status");
    let rule1 = find("/apis/cilium.io/v2/namespaces/default/ciliumnetworkpolicies/rule1/status");
    let ccnp =
        find("/apis/cilium.io/v2/ciliumclusterwidenetworkpolicies/empire-from-world-deny/status");
    for r in [&invalid, &rule1, &ccnp] {
        assert_eq!(r.content_type, "application/merge-patch+json", "{r:?}");
        assert!(r.query.contains("fieldManager=membrane-xds"), "{r:?}");
    }
    let c = valid_condition(&invalid);
    assert_eq!(c["status"], "False", "{c}");
    assert_eq!(c["reason"], "PolicyInvalid", "{c}");
    let msg = c["message"].as_str().unwrap();
    assert!(
        msg.starts_with("spec.egress[0]"),
        "the message names the field: {msg}"
    );
    assert!(
        c["lastTransitionTime"].as_str().unwrap().ends_with('Z'),
        "{c}"
    );
    for r in [&rule1, &ccnp] {
        let c = valid_condition(r);
        assert_eq!(c["status"], "True", "{c}");
    }
    // The status written is one Cilium's CRD accepts: the invalid CNP with
    // it checks against the CRD's schema.
    let mut with_status = read_json("ciliumnetworkpolicies.json")["items"][1].clone();
    assert_eq!(name_of(&with_status), "invalid-policy");
    with_status["status"] = serde_json::from_str::<Value>(&invalid.body).unwrap()["status"].clone();
    let f = tmp.path().join("invalid-with-status.json");
    std::fs::write(&f, with_status.to_string()).unwrap();
    let out = validate(&[f]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let sourcez = debug_json(xds.debug(), "/debug/sourcez").await;
    let text = sourcez.to_string();
    assert!(
        text.contains("CiliumNetworkPolicy default/invalid-policy"),
        "{text}"
    );

    // A watch MODIFIED event: GET /v1/.* is allowed too, and is pushed.
    eventually(Duration::from_secs(10), "the CNP watch", || async {
        (api.watching(CNPS) > 0).then_some(())
    })
    .await;
    let modified = read_json("watch-rule1-modified.json");
    api.event(CNPS, "MODIFIED", modified["object"].clone());
    let r2 = next(&mut s).await;
    assert_ne!(r2.version_info, r1.version_info);
    let rules = deathstar_http(&r2);
    assert_eq!(rules.len(), 2, "{rules:?}");
    assert!(rules.iter().any(|r| r.0.contains("GET")), "{rules:?}");
    tx.send(DiscoveryRequest {
        version_info: r2.version_info.clone(),
        response_nonce: r2.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();

    // ADDED and DELETED: a second x-wing arrives; the invalid CNP is
    // deleted, and its rejection goes with it.
    eventually(Duration::from_secs(10), "the pods watch", || async {
        (api.watching(PODS) > 0).then_some(())
    })
    .await;
    let mut xwing2 = read_json("pods.json")["items"][3].clone();
    xwing2["metadata"]["name"] = json!("xwing-2");
    xwing2["metadata"]["uid"] = json!("3f1c2a10-6b7e-4d2a-9c1e-5a6b7c8d9e15");
    xwing2["status"]["podIP"] = json!("10.244.1.15");
    xwing2["status"]["podIPs"] = json!([{"ip": "10.244.1.15"}]);
    api.event(PODS, "ADDED", xwing2);
    let invalid_obj = read_json("ciliumnetworkpolicies.json")["items"][1].clone();
    api.event(CNPS, "DELETED", invalid_obj);
    eventually(
        Duration::from_secs(15),
        "the ADDED pod and DELETED CNP",
        || async {
            let text = debug_json(xds.debug(), "/debug/sourcez").await.to_string();
            (text.contains("Pod default/xwing-2") && !text.contains("invalid-policy")).then_some(())
        },
    )
    .await;

    // 410 Gone on the pods and CNP watches: both kinds are listed again.
    // The tiefighter was deleted while the watch was down: the relist drops
    // it; everything else keeps its state.
    let (pod_lists, cnp_lists) = (api.lists_of(PODS), api.lists_of(CNPS));
    api.lock()
        .lists
        .get_mut(PODS)
        .unwrap()
        .2
        .retain(|p| name_of(p) != "tiefighter");
    api.expire(PODS);
    api.expire(CNPS);
    eventually(Duration::from_secs(15), "the relists", || async {
        (api.lists_of(PODS) > pod_lists && api.lists_of(CNPS) > cnp_lists).then_some(())
    })
    .await;
    let pods = eventually(Duration::from_secs(15), "the relisted pods", || async {
        let v = debug_json(xds.debug(), "/debug/sourcez").await;
        let kinds = v["sources"]
            .as_array()?
            .iter()
            .find(|s| s["kind"] == "kube")?["status"]["kinds"]
            .as_array()?
            .clone();
        let pods = kinds.iter().find(|k| k["kind"] == "Pod")?.clone();
        (pods["relists"].as_u64()? >= 1).then_some(pods)
    })
    .await;
    let names = pods["objects"].to_string();
    assert!(!names.contains("tiefighter"), "{names}");
    assert!(names.contains("default/xwing\""), "{names}");
    assert!(names.contains("default/xwing-2"), "{names}");

    // The policy is still served as before, to a new stream too.
    let (_tx2, mut s2) = npds_stream(xds.grpc()).await;
    let r3 = next(&mut s2).await;
    assert_eq!(deathstar_http(&r3), deathstar_http(&r2));

    // Status is written only when it changes: the MODIFIED rule1 is still
    // valid, and the relisted objects carry their conditions already.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let patches = status_patches(&api);
    assert_eq!(patches.len(), 3, "{patches:#?}");
}

/// Runs scripts/k8s-validate.py (kubernetes-validate and jsonschema; see
/// scripts/install-deps.sh) on `files`.
fn validate(files: &[PathBuf]) -> std::process::Output {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("..");
    std::process::Command::new("python3")
        .arg(root.join("scripts/k8s-validate.py"))
        .arg("--crds")
        .arg(root.join("../shared/corpus/cnp/crds"))
        .args(["-k", "1.34.0"])
        .args(files)
        .output()
        .expect("run python3")
}

#[test]
fn recorded_objects_are_valid_for_the_crds_and_kubernetes_schemas() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let out = validate(&files);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("12 objects checked, 0 invalid"), "{text}");

    // The check can fail: a Pod port that is not a number, and a CNP whose
    // ingress is not a list, are both caught.
    let tmp = tempfile::tempdir().unwrap();
    let bad_pod = tmp.path().join("pods.json");
    std::fs::write(
        &bad_pod,
        std::fs::read_to_string(data_dir().join("pods.json"))
            .unwrap()
            .replace("\"containerPort\": 80", "\"containerPort\": \"eighty\""),
    )
    .unwrap();
    let mut cnp = read_json("ciliumnetworkpolicies.json");
    cnp["items"][0]["spec"]["ingress"] = json!("everyone");
    let bad_cnp = tmp.path().join("cnp.json");
    std::fs::write(&bad_cnp, cnp.to_string()).unwrap();
    let out = validate(&[bad_pod, bad_cnp]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("Pod default/deathstar-5b8d7f9c4d-2xkq8"),
        "{text}"
    );
    assert!(text.contains("CiliumNetworkPolicy default/rule1"), "{text}");
}

#[test]
fn a_bad_kubeconfig_is_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let kc = tmp.path().join("kubeconfig");
    std::fs::write(&kc, "apiVersion: v1\nkind: Config\nclusters: {}\n").unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_membrane-xds"))
        .arg("--plaintext-xds")
        .args(["--grpc-addr", "127.0.0.1:0", "--debug-addr", "127.0.0.1:0"])
        .arg("--kube")
        .arg("--kubeconfig")
        .arg(&kc)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("membrane-xds did not exit on a bad kubeconfig");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(
        err.contains(&format!("kubeconfig {}", kc.display())),
        "{err}"
    );
}
