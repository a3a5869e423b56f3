//! membrane's policy engine: Cilium's `cilium.io/v2` network policies turned into exact,
//! explainable verdicts.
//!
//! It owns the policy model ([`model`]), parsing and validation with field-precise errors
//! ([`load`], [`rule`]), labels and selectors, identities and their allocation
//! ([`identity`]), resolution of an endpoint's policy ([`resolve`]), incremental
//! recomputation ([`engine`]), the ipcache ([`ipcache`]), user regexes ([`regexp`]),
//! HTTP rule matching ([`http`]; the values of secrets come from a resolver the caller
//! passes with each request) and tracing ([`trace`]).
//!
//! It must never do I/O: no files, sockets, async runtimes, protobuf or kernel maps. Text
//! comes in, values go out; adapters (the CLI, the xDS server, the proxy, the datapath)
//! translate at the edges.

pub mod engine;
pub mod http;
pub mod identity;
pub mod ipcache;
pub mod labels;
pub mod load;
pub mod model;
pub mod regexp;
pub mod resolve;
pub mod rule;
pub mod selector;
pub mod trace;

pub use engine::Engine;
pub use identity::{Identity, IdentityAllocator, MemoryAllocator};
pub use labels::{Label, LabelSet};
pub use load::{parse_file, LoadedObject};
pub use resolve::{
    AllowLocalhost, ConnPolicy, Direction, Endpoint, Repository, ResolvedPolicy, SelectorCache,
    UnenforcedL7Mode, Verdict,
};
pub use rule::{CompiledPolicy, PolicyKey, PolicyKind, Proto};
