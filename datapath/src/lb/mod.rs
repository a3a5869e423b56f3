//! Service load balancing in tc: the desired services ([`LbService`]) as
//! the node's frontend, slot, backend, reverse NAT and Maglev maps
//! (`lib/lb.h`), written as a difference that never shows a packet a
//! frontend without its backends or a half-written slot set, and read back.
//! [`maglev`] computes the lookup tables. The kernel side translates what
//! the socket LB never sees: UDP without connect, NodePort, the host.

mod host;
pub mod maglev;
mod node;
mod sync;

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

pub use sync::{read_services, sync_services};

/// One service as the packet path balances it: a ClusterIP frontend, an
/// optional NodePort on the node's address, and its ready backends.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LbService {
    /// The ClusterIP address and port.
    pub frontend: SocketAddr,
    /// IP protocol: 6 (TCP) or 17 (UDP).
    pub proto: u8,
    /// The NodePort on the node's `node_ip4` (IPv4 frontends); 0 = none.
    pub node_port: u16,
    /// `externalTrafficPolicy: Local`: NodePort traffic goes only to this
    /// node's backends and keeps the client's address.
    pub external_local: bool,
    /// Backends; order does not matter (kept sorted, so every node builds
    /// the same Maglev table), duplicates count once. Empty: packets to
    /// the frontend are dropped (reason `lb-no-backend`).
    pub backends: Vec<SocketAddr>,
}

/// Errors of the service maps.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    /// A service the maps cannot take; nothing was written.
    #[error("invalid service {service}: {what}")]
    Invalid {
        /// The service, as `ADDR:PORT/PROTO`.
        service: String,
        /// What is wrong with it.
        what: String,
    },
    /// More than the maps hold; nothing was written.
    #[error("services do not fit: {0}")]
    TooMany(String),
    /// The service maps are not pinned under the node directory.
    #[error("{0}: no service maps pinned here (load the node datapath first)")]
    NotLoaded(PathBuf),
    /// A map operation failed.
    #[error("map {name}: {source}")]
    Map {
        /// The map's name.
        name: &'static str,
        /// The cause.
        #[source]
        source: aya::maps::MapError,
    },
}

/// How a service is named in errors: `ADDR:PORT/PROTO`.
fn service_name(s: &LbService) -> String {
    let proto = match s.proto {
        6 => "TCP".to_owned(),
        17 => "UDP".to_owned(),
        p => format!("protocol {p}"),
    };
    format!("{}/{proto}", s.frontend)
}

/// Unspecified, multicast or broadcast: no frontend or backend can be one.
fn unusable(ip: IpAddr) -> bool {
    ip.is_unspecified() || ip.is_multicast() || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast())
}

impl LbService {
    /// Check what the maps need, with the backends sorted and deduplicated.
    fn normalised(&self) -> Result<LbService, LbError> {
        let err = |what: String| LbError::Invalid {
            service: service_name(self),
            what,
        };
        if self.proto != 6 && self.proto != 17 {
            return Err(err(format!(
                "protocol {} is not TCP (6) or UDP (17)",
                self.proto
            )));
        }
        if self.frontend.port() == 0 || unusable(self.frontend.ip()) {
            return Err(err("the frontend needs an address and a port".to_owned()));
        }
        if self.node_port != 0 && !self.frontend.is_ipv4() {
            return Err(err(format!(
                "node port {}: NodePort is served on the node's IPv4 address only",
                self.node_port
            )));
        }
        let mut backends = self.backends.clone();
        backends.sort();
        backends.dedup();
        for b in &backends {
            if b.port() == 0 || unusable(b.ip()) {
                return Err(err(format!("backend {b}: needs an address and a port")));
            }
            if b.is_ipv4() != self.frontend.is_ipv4() {
                return Err(err(format!(
                    "backend {b}: not of the frontend's address family"
                )));
            }
        }
        Ok(LbService {
            backends,
            ..self.clone()
        })
    }
}
