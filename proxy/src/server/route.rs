//! Where a connection goes: the configured upstream, or (capture) the original
//! destination the datapath reports, and the pooled clients that reach it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpStream;

use super::{peer_ip, Shared};
use crate::metrics::CaptureRefusal;
use crate::policy::Direction;
use crate::upstream::Upstreams;

/// Where a listener's connections are delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// To the configured upstream (`--upstream`).
    Upstream,
    /// Transparent inbound capture: to the original destination itself (the pod's address
    /// and the port the client dialled: the accepted socket's own address after sk_lookup,
    /// SO_ORIGINAL_DST after a NAT redirect), under the ingress policy of that port, as
    /// Istio does since 1.10. Never to one of the sidecar's own ports.
    CapturedInbound,
    /// Transparent outbound capture: to the original destination, under the endpoint's
    /// egress policy (remote identity from the destination address). Only a connection
    /// whose original destination the datapath (or NAT) answered for is forwarded.
    CapturedOutbound,
}

/// Where one connection goes and the pooled clients that reach it.
#[derive(Clone)]
pub struct Route {
    pub(super) target: SocketAddr,
    pub(super) upstreams: Upstreams,
    pub(super) dir: Direction,
    /// Requests go upstream over TLS.
    pub(super) https: bool,
    /// Name the upstream certificate is verified against (and sent as SNI), instead of
    /// the request's authority.
    pub(super) server_name: Option<Arc<str>>,
    /// Which side of Istio mutual TLS this connection is on, if any.
    pub(super) mesh: Option<MeshSide>,
}

/// A capture connection's place in the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeshSide {
    /// Inbound capture with mesh mTLS configured (any mode): XFCC is Istio's.
    Inbound,
    /// Outbound capture to a meshed destination: Istio mTLS is originated.
    Outbound,
}

impl Route {
    /// The address whose identity the policy looks at: the peer for ingress, the
    /// destination for egress.
    pub(super) fn remote(&self, peer: SocketAddr) -> IpAddr {
        match self.dir {
            Direction::Ingress => peer_ip(peer),
            Direction::Egress => peer_ip(self.target),
        }
    }
}

impl Shared {
    /// Where `stream` goes, or why a capture listener refuses it.
    pub(super) fn route(
        &self,
        stream: &TcpStream,
        delivery: Delivery,
    ) -> Result<Route, CaptureRefusal> {
        let (target, dir) = match delivery {
            Delivery::Upstream => {
                return Ok(Route {
                    target: self.settings.upstream,
                    upstreams: self.upstreams.clone(),
                    dir: Direction::Ingress,
                    https: self.settings.upstream_tls,
                    server_name: self.settings.upstream_server_name.as_deref().map(Arc::from),
                    mesh: None,
                })
            }
            Delivery::CapturedInbound => {
                // sk_lookup hands the connection over with its destination as the socket's
                // own address; a NAT redirect leaves the socket on the capture port and
                // SO_ORIGINAL_DST names what the client dialled.
                let local = stream
                    .local_addr()
                    .map_err(|_| CaptureRefusal::no_original_destination)?;
                let orig = crate::orig_dst::original_dst(stream).unwrap_or(local);
                let orig = SocketAddr::new(orig.ip().to_canonical(), orig.port());
                // Dialled a sidecar port (this listener included: it would loop back
                // here), or loopback, which inbound capture never hands over.
                if self
                    .settings
                    .proxy_ports
                    .binary_search(&orig.port())
                    .is_ok()
                {
                    return Err(CaptureRefusal::proxy_port);
                }
                if orig.ip().is_loopback() || orig.ip().is_unspecified() {
                    return Err(CaptureRefusal::not_redirected);
                }
                (orig, Direction::Ingress)
            }
            Delivery::CapturedOutbound => {
                // Only a redirected connection has an original destination: the eBPF
                // datapath answers for the sockets of connects it steered, NAT for the
                // connections it rewrote. Anything else dialled this listener itself.
                let orig = crate::orig_dst::original_dst(stream)
                    .ok_or(CaptureRefusal::no_original_destination)?;
                let orig = SocketAddr::new(orig.ip().to_canonical(), orig.port());
                // Conntrack answers a connection it did not rewrite with the socket's own
                // address; capture never steers a connect to loopback.
                let local = stream
                    .local_addr()
                    .ok()
                    .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()));
                if orig.ip().is_loopback() || orig.ip().is_unspecified() || local == Some(orig) {
                    return Err(CaptureRefusal::not_redirected);
                }
                (orig, Direction::Egress)
            }
        };
        // A meshed destination of outbound capture gets Istio mTLS; inbound capture serves
        // the mesh's side when mesh TLS is configured.
        let mesh = match (&self.mesh, dir) {
            (Some(m), Direction::Egress) if m.meshed(target.ip()) => Some(m.clone()),
            _ => None,
        };
        let upstreams = {
            let mut cache = self
                .capture_upstreams
                .lock()
                .map_err(|_| CaptureRefusal::no_original_destination)?;
            match cache.get(&target) {
                Some(u) => u.clone(),
                None => {
                    let u = match &mesh {
                        Some(m) => Upstreams::new_mesh(
                            target,
                            self.connect_timeout,
                            m,
                            &self.settings.pool,
                            &self.h2_limit,
                        ),
                        None => Upstreams::new(
                            target,
                            self.connect_timeout,
                            self.upstream_tls.as_ref(),
                            &self.settings.pool,
                            &self.h2_limit,
                        ),
                    }
                    .map_err(|_| CaptureRefusal::no_original_destination)?;
                    cache.insert(target, u.clone());
                    u
                }
            }
        };
        let side = match (mesh.is_some(), dir) {
            (true, _) => Some(MeshSide::Outbound),
            (false, Direction::Ingress) if self.mesh.is_some() => Some(MeshSide::Inbound),
            _ => None,
        };
        Ok(Route {
            target,
            upstreams,
            dir,
            https: self.settings.upstream_tls || side == Some(MeshSide::Outbound),
            server_name: self.settings.upstream_server_name.as_deref().map(Arc::from),
            mesh: side,
        })
    }

    /// `route` re-pointed to originate TLS with the material of `src`, verifying the
    /// upstream as `server_name` (the client's SNI) when given.
    pub(super) fn originating(
        &self,
        mut route: Route,
        src: &crate::policy::TlsSource,
        server_name: Option<&str>,
    ) -> Result<Route, String> {
        let material = self.secrets.client_tls(src).map_err(|e| e.to_string())?;
        let key = (route.target, material.id);
        let mut cache = self
            .origin_upstreams
            .lock()
            .map_err(|_| "upstream cache poisoned".to_owned())?;
        let upstreams = match cache.get(&key) {
            Some(u) => u.clone(),
            None => {
                let tls = crate::upstream::UpstreamTls {
                    roots: material.roots.clone(),
                    client_cert: material.client_cert.clone(),
                };
                let u = Upstreams::new(
                    route.target,
                    self.connect_timeout,
                    Some(&tls),
                    &self.settings.pool,
                    &self.h2_limit,
                )
                .map_err(|e| e.to_string())?;
                // Each secret change makes a new key; bound what old material can hold.
                if cache.len() >= 256 {
                    cache.clear();
                }
                cache.insert(key, u.clone());
                u
            }
        };
        route.upstreams = upstreams;
        route.https = true;
        if let Some(n) = server_name {
            route.server_name = Some(Arc::from(n));
        }
        Ok(route)
    }
}
