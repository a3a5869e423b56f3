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

#[path = "../common/mod.rs"]
mod common;

mod cases;
mod workload_ca;

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
    if method == Method::POST && path == "/apis/authentication.k8s.io/v1/tokenreviews" {
        // The recorded answer for the token, the request's spec echoed as the API
        // server does; an unknown token is not authenticated.
        let Ok(asked) = serde_json::from_slice::<Value>(&body) else {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"kind": "Status", "code": 400}),
            );
        };
        let token = asked
            .pointer("/spec/token")
            .and_then(Value::as_str)
            .unwrap_or("");
        let recorded = data_dir().join("../tokenreviews.json");
        let recorded: Value =
            serde_json::from_str(&std::fs::read_to_string(recorded).unwrap()).unwrap();
        let mut answer = recorded
            .get(token)
            .cloned()
            .unwrap_or_else(|| json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                "metadata": {}, "status": {"user": {}, "error": "[invalid bearer token, token lookup failed]"}}));
        answer["spec"] = asked["spec"].clone();
        return json_response(StatusCode::CREATED, &answer);
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
