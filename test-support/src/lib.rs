//! Setup shared by membrane's integration tests, written once: process guards and bounded
//! waits, privileged sandboxes (network namespaces, cgroups, bpffs pin directories) that
//! clean up on drop, a test PKI, launchers for etcd, `membrane-xds` and Envoy that let the
//! child pick its ports and report them, and the Star Wars fixtures.
//!
//! A dev-dependency only: no crate's library or binary links it. It depends on no
//! membrane crate, so every crate's tests can use it; what needs a crate's own types (a
//! `Datapath` to detach, `CARGO_BIN_EXE_*` paths) stays in that crate's `tests/common` and
//! wraps these guards.
//!
//! Ports are never bound, dropped and handed on (that races under nextest's parallelism):
//! an in-process server keeps the listener it bound, a child is started on port 0 and the
//! launcher reads back the address it reports.

pub mod envoy;
pub mod etcd;
pub mod pki;
pub mod poll;
pub mod process;
pub mod sandbox;
pub mod starwars;
pub mod xds;

pub use etcd::Etcd;
pub use poll::{eventually, wait_until};
pub use process::{run, ChildGuard};
pub use sandbox::{unique_name, Cgroup, Netns, PinDir};
