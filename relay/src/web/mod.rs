//! The relay's web page: a picture of the mesh. One HTTP address (loopback unless told
//! otherwise) serves a plain HTML/CSS/JavaScript page compiled into the binary (no build
//! chain, nothing fetched from the internet) and the two JSON APIs it polls:
//!
//! - `GET /api/map`: the service map, workloads as nodes and flows as edges with their
//!   allowed and denied counts and the denying rules or reasons;
//! - `GET /api/flows?pod=&namespace=&identity=&verdict=&type=&port=&method=&path=&node=&limit=`:
//!   the latest flows, newest first, with `membrane monitor --all-nodes`'s filters.
//!
//! Both are aggregated here, from the merged event stream, in a bounded [`View`]: the page
//! never sees the raw stream. A bad query parameter gets a 400 naming it.

mod filter;
mod view;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use membrane_api::monitor::Event;
use serde_json::json;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::broadcast;

pub use filter::{parse as parse_query, FilterError, DEFAULT_LIMIT, MAX_LIMIT};
pub use view::{peer, workload, Edge, Limits, Map, Node, Peer, View};

/// Where the page is served when no address is configured: loopback only, since the
/// page shows every flow of the mesh to whoever can reach it.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:12000";

/// What can stop the web page.
#[derive(Debug, Error)]
pub enum WebError {
    /// The address could not be bound.
    #[error("web page: bind {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("web page on {addr}: {source}")]
    Serve {
        /// The address served.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// The page bound to its address, not yet serving.
#[derive(Debug)]
pub struct Web {
    listener: TcpListener,
    addr: SocketAddr,
    view: Shared,
}

/// The view the feed writes and the handlers read.
#[derive(Clone, Debug)]
struct Shared(Arc<Mutex<View>>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, View> {
        // A handler that panicked mid-read leaves the view as it was: keep serving it.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Serve the page on `addr` from `feed` (the relay's merged stream) with the default
/// limits, until the process ends.
pub async fn serve(addr: SocketAddr, feed: broadcast::Receiver<Event>) -> Result<(), WebError> {
    Web::bind(addr, Limits::default()).await?.run(feed).await
}

impl Web {
    /// Bind `addr` (port 0: any free port, see [`Web::local_addr`]).
    pub async fn bind(addr: SocketAddr, limits: Limits) -> Result<Web, WebError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| WebError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| WebError::Bind { addr, source })?;
        Ok(Web {
            listener,
            addr,
            view: Shared(Arc::new(Mutex::new(View::new(limits)))),
        })
    }

    /// The address the page is served on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Take `feed` into the view and serve the page. A closed feed leaves the last view
    /// up; only a failing listener ends it.
    pub async fn run(self, feed: broadcast::Receiver<Event>) -> Result<(), WebError> {
        tokio::spawn(follow(feed, self.view.clone()));
        let addr = self.addr;
        axum::serve(self.listener, router(self.view))
            .await
            .map_err(|source| WebError::Serve { addr, source })
    }
}

/// The page's routes over `view`, fed by `feed` (for tests that drive the routes
/// without a socket).
pub fn app(limits: Limits, feed: broadcast::Receiver<Event>) -> Router {
    let view = Shared(Arc::new(Mutex::new(View::new(limits))));
    tokio::spawn(follow(feed, view.clone()));
    router(view)
}

async fn follow(mut feed: broadcast::Receiver<Event>, view: Shared) {
    loop {
        match feed.recv().await {
            Ok(e) => view.lock().add(e),
            Err(broadcast::error::RecvError::Lagged(n)) => view.lock().missed(n),
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

fn router(view: Shared) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(script))
        .route("/style.css", get(style))
        .route("/api/map", get(map))
        .route("/api/flows", get(flows))
        .fallback(not_found)
        .with_state(view)
}

/// The page's own files, compiled in.
const INDEX: &str = include_str!("../../web/index.html");
const SCRIPT: &str = include_str!("../../web/app.js");
const STYLE: &str = include_str!("../../web/style.css");

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            // Everything the page loads is its own: nothing from elsewhere runs in it.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:",
            ),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

fn fresh(body: serde_json::Value) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

type Params = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// The query string's pairs, or why it is no query string.
fn params(q: Params) -> Result<Vec<(String, String)>, String> {
    q.map(|Query(p)| p)
        .map_err(|e| format!("bad query string: {e}"))
}

async fn map(State(view): State<Shared>, q: Params) -> Response {
    let refused = match params(q) {
        Ok(pairs) => pairs
            .first()
            .map(|(name, _)| format!("unknown query parameter {name:?} (the map takes none)")),
        Err(e) => Some(e),
    };
    if let Some(e) = refused {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let m = view.lock().map();
    fresh(serde_json::to_value(m).unwrap_or_default())
}

async fn flows(State(view): State<Shared>, q: Params) -> Response {
    let parsed = params(q).and_then(|pairs| filter::parse(&pairs).map_err(|e| e.to_string()));
    let (filter, limit) = match parsed {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let v = view.lock();
    let (flows, matched) = v.flows(|e| filter.matches(e), limit);
    fresh(json!({ "flows": flows, "matched": matched }))
}

async fn not_found(uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no such page: {}", uri.path()),
    )
}
