//! The one place the proxy meets the policy engine (`membrane-policy`): what a verdict is
//! ([`Decision`], [`Checked`], [`TlsPlan`]), the snapshot in force ([`PolicyHandle`]) and its
//! rooms: the [`Enforcer`] (`enforcer`: the three questions the transport asks), the
//! standalone loader (`load`: CNP files, the endpoint's identity, the static ipcache), the
//! NPDS path (`npds`), and the header actions an allowing rule asks for (`headers`). The
//! semantics are the engine's, not ours.

use std::sync::Arc;

use arc_swap::ArcSwap;
use http::header::HeaderMap;

mod enforcer;
mod headers;
mod load;

pub use enforcer::{Enforcer, Source};
pub use headers::apply_header_actions;
pub use load::{deny_all, load, LoadError};
// The NPDS path parses NPHDS prefixes as `--peer` does.

/// The parts of a request a verdict depends on; `path` is normalized and includes the query.
pub struct RequestView<'a> {
    /// Method.
    pub method: &'a str,
    /// Normalized path plus `?query`, exactly as forwarded.
    pub path: &'a str,
    /// `:authority` or `Host`.
    pub host: Option<&'a str>,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// The server name the connection's TLS ClientHello indicated (`None`: plaintext, or
    /// no SNI); rules with serverNames apply only when it is one of theirs.
    pub sni: Option<&'a str>,
    /// The verified SPIFFE id of the mesh peer (inbound mTLS), `None` otherwise. Cilium's
    /// rules have no principal to match it against; what they can match is the
    /// `x-forwarded-client-cert` header the proxy sets from it before the check.
    pub peer_id: Option<&'a str>,
    /// Where secrets named by `headerMatches` are read (the secret store as it is now).
    pub secrets: &'a dyn SecretResolver,
}

pub use membrane_policy::http::{NoSecrets, SecretResolver};

pub use membrane_policy::rule::{PortTls, TlsSource};

/// What the policy says about a connection on a port whose rules carry serverNames or TLS
/// contexts, once its ClientHello (if any) has been read.
#[derive(Debug, Clone)]
pub struct TlsPlan {
    /// The connection verdict when no HTTP rules apply to it (`None`: each request is
    /// checked).
    pub l4: Option<Checked>,
    /// The TLS contexts to apply: terminate with `terminating`, originate to the upstream
    /// with `originating`.
    pub tls: Option<Arc<PortTls>>,
}

pub use membrane_policy::http::HeaderAction;

/// The verdict for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Forward, after applying the header actions.
    Allow {
        /// `namespace/name` and rule of the policy that allowed it.
        decided_by: String,
        /// Header changes to make before forwarding.
        header_actions: Vec<HeaderAction>,
    },
    /// Answer 403 (or gRPC status 7).
    Deny {
        /// Why: the policy and rule, or "no rule matched".
        decided_by: String,
    },
}

/// A verdict with the remote identity it was computed for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Numeric identity of the remote side (ipcache lookup of the peer for ingress, of the
    /// destination for egress).
    pub remote_identity: u32,
    /// Numeric identity of the endpoint the policy is enforced for (0 when unknown).
    pub local_identity: u32,
    /// The verdict.
    pub decision: Decision,
    /// The decision's `decided_by` names the rule that decided (false: it says why no
    /// rule did, e.g. a default denial); the sidecar's L7 records carry it as the rule.
    pub by_rule: bool,
}

pub use membrane_policy::Direction;

/// The current snapshot; swapping it is atomic, and a request loads it exactly once.
#[derive(Clone)]
pub struct PolicyHandle(Arc<ArcSwap<Enforcer>>);

impl PolicyHandle {
    /// Starts with `e` in force.
    pub fn new(e: Enforcer) -> Self {
        PolicyHandle(Arc::new(ArcSwap::from_pointee(e)))
    }

    /// The snapshot in force now.
    pub fn load(&self) -> Arc<Enforcer> {
        self.0.load_full()
    }

    /// Puts `e` in force for every request that starts from now on.
    pub fn store(&self, e: Enforcer) {
        self.0.store(Arc::new(e));
    }
}

// Cilium's NPDS/NPHDS → an Enforcer (documented in the module).
pub mod npds;
