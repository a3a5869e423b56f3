//! `membrane-agent`: the node daemon. It learns the node's endpoints, identities
//! (ipcache), per-endpoint L3/L4 policy and services from membrane-xds and keeps the
//! kernel's maps equal to them; membrane-cni registers pods with it over the agent socket.
//!
//! Rooms: [`resources`] (the control plane's resources, decoded and checked), [`store`]
//! (the state directory a restarted agent adopts the node from), [`packet`] (what the
//! packet path is fed: the node ipcache with tunnel endpoints, native routes), [`tc`] and `tc_sync` (the node's packet path:
//! flags, the node pin directory, tc per endpoint, node ipcache and routes), [`node`] (registrations,
//! resources in force, programming each endpoint's datapath as a diff), `views` (what the
//! socket answers about them), [`xds`] (the delta ADS client, fail-static) [`observer`] (the event stream on gRPC, 4244, for the relay), [`metrics`] (Prometheus, 9962) and [`daemon`] (the socket, the event fan-in, the wiring).
//! The single-cgroup commands of the binary (`attach`, `run --cgroup`, ...) stay in the
//! binary.
//!
//! It must never: write a map entry that did not come from the control plane's resources
//! (a pod it knows nothing about gets no allow entry), flush or re-attach an endpoint that
//! is already attached, or apply part of a response it NACKs.

pub mod daemon;
pub mod metrics;
pub mod node;
pub mod observer;
pub mod packet;
pub mod resources;
pub mod store;
pub mod tc;
mod tc_sync;
mod views;
pub mod xds;
