//! The node's packet path fed from the resources in force: each endpoint's tc programs
//! (attached with its registration's host veth, detached when it goes), the node ipcache
//! (NPHDS joined with the node registry, [`crate::packet::node_ipcache`]), and the routes
//! to the other nodes' pod CIDRs ([`crate::packet::node_routes`]). Every write is a diff,
//! as for the socket hooks' maps.

use std::collections::BTreeMap;

use ipnet::IpNet;
use membrane_datapath::api::Registration;
use membrane_datapath::node::{IpcacheEntry, Overlay};
use membrane_datapath::Datapath;
use serde::Serialize;

use crate::node::{ipcache_of, Node, NodeError};
use crate::packet;
use crate::resources::{EndpointSpec, Kind, NodeSpec, ServiceSpec, Spec};
use crate::tc::{self, TcError};

type Result<T> = std::result::Result<T, NodeError>;

/// Node-wide writes of the last packet-path pass, for `membrane status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NodeChanges {
    /// Node ipcache entries added, changed, removed.
    pub ipcache: (usize, usize, usize),
    /// Routes to other nodes' pod CIDRs added, replaced or removed.
    pub routes: usize,
    /// Service frontends written or removed in the tc load balancer.
    pub services: usize,
}

fn tc_err(endpoint: &str) -> impl FnOnce(TcError) -> NodeError + '_ {
    move |e| NodeError::Registration {
        endpoint: endpoint.to_owned(),
        why: format!("packet path: {e}"),
    }
}

impl Node {
    /// The node registry held, by name (empty when none was received).
    pub(crate) fn nodes(&self) -> BTreeMap<String, NodeSpec> {
        self.held
            .get(&Kind::Node)
            .map(|h| {
                h.iter()
                    .filter_map(|(n, (_, _, s))| match s {
                        Spec::Node(spec) => Some((n.clone(), spec.clone())),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The node ipcache: None while NPHDS was never received (the maps are left alone).
    pub(crate) fn node_ipcache(&self) -> Option<Vec<IpcacheEntry>> {
        let hosts = self.held.get(&Kind::Hosts)?;
        let identities = ipcache_of(hosts).ok()?;
        let own: Vec<std::net::IpAddr> = self
            .packet
            .as_ref()
            .map(|p| p.settings.node_ip4)
            .filter(|ip| !ip.is_unspecified())
            .map(std::net::IpAddr::V4)
            .into_iter()
            .collect();
        let tunnels = self
            .packet
            .as_ref()
            .is_some_and(|p| p.settings.overlay != Overlay::Native);
        Some(
            packet::node_ipcache(&identities, &self.nodes(), &self.name, &own, tunnels)
                .into_iter()
                .map(|e| IpcacheEntry {
                    prefix: e.prefix,
                    identity: e.identity,
                    tunnel: e.tunnel,
                })
                .collect(),
        )
    }

    /// The identities every endpoint's socket-hook ipcache holds: the node ipcache's,
    /// so that the socket-level and the packet-level decisions see the same identities.
    pub(crate) fn joined_identities(&self) -> Option<Vec<(IpNet, u32)>> {
        Some(
            self.node_ipcache()?
                .into_iter()
                .map(|e| (e.prefix, e.identity))
                .collect(),
        )
    }

    /// Attaches endpoint `key`'s tc programs to its host veth when its registration names
    /// one (and the node runs the packet path); returns whether anything was written.
    pub(crate) fn program_tc(
        &self,
        key: &str,
        reg: &Registration,
        spec: Option<&EndpointSpec>,
        dp: &Datapath,
    ) -> Result<bool> {
        let (Some(p), Some(ifname)) = (&self.packet, &reg.host_ifname) else {
            return Ok(false);
        };
        let veth = tc::host_veth(ifname, p.underlay.as_ref()).map_err(tc_err(key))?;
        let id = p.endpoint_id(veth.ifindex).map_err(tc_err(key))?;
        let ips = spec.map_or_else(|| reg.ips.clone(), |s| s.ips.clone());
        if ips.is_empty() {
            return Err(tc_err(key)(TcError::Flags(
                "no address: the previous plugin's result and the control plane give none".into(),
            )));
        }
        let ep = tc::local_endpoint(
            id,
            &veth,
            &ips,
            spec.map(|s| s.identity),
            reg.mac.as_deref(),
        );
        p.attach(dp, &ep).map_err(tc_err(key))
    }

    /// Forgets endpoint `key`'s row in the packet path (its tc links go with its pin
    /// directory): the endpoints map entries and conntrack of the pod with its addresses.
    pub(crate) fn forget_tc(&self, key: &str, reg: &Registration, dp: &Datapath) -> Result<()> {
        let Some(p) = &self.packet else {
            return Ok(());
        };
        let held = p.dp.endpoints().map_err(|e| NodeError::Datapath {
            endpoint: key.to_owned(),
            what: "read the endpoints map",
            source: Box::new(e),
        })?;
        let mut ips = reg.ips.clone();
        if let Some(spec) = self.spec(key).flatten() {
            ips.extend(&spec.ips);
        }
        let mine = held
            .into_iter()
            .find(|e| e.ips.iter().any(|ip| ips.contains(ip)));
        if let Some(ep) = mine {
            p.dp.detach_endpoint(dp, &ep)
                .map_err(|e| NodeError::Datapath {
                    endpoint: key.to_owned(),
                    what: "detach tc",
                    source: Box::new(e),
                })?;
        }
        Ok(())
    }

    /// The node-wide part of the packet path equal to the resources held: the node
    /// ipcache, the routes to other nodes' pods. A type never received leaves its part
    /// alone.
    pub fn sync_packet_path(&mut self) -> std::result::Result<NodeChanges, String> {
        let Some(p) = &self.packet else {
            return Ok(NodeChanges::default());
        };
        let mut c = NodeChanges::default();
        if let Some(entries) = self.node_ipcache() {
            let r =
                p.dp.sync_ipcache(&entries)
                    .map_err(|e| format!("node ipcache: {e}"))?;
            c.ipcache = (r.added, r.changed, r.removed);
        }
        if let Some(held) = self.held.get(&Kind::Service) {
            let services: Vec<ServiceSpec> = held
                .values()
                .filter_map(|(_, _, s)| match s {
                    Spec::Service(s) => Some(s.clone()),
                    _ => None,
                })
                .collect();
            let r =
                p.dp.sync_services(&packet::lb_services(&services))
                    .map_err(|e| format!("tc load balancer: {e}"))?;
            c.services = r.added + r.changed + r.removed;
        }
        if self.held.contains_key(&Kind::Node) {
            let (routes, mtu) = packet::node_routes(
                &self.nodes(),
                &self.name,
                p.settings.overlay,
                p.settings.underlay_mtu,
            );
            c.routes = tc::sync_routes(&routes, mtu).map_err(|e| e.to_string())?;
        }
        self.node_changes = c;
        Ok(c)
    }

    /// `membrane bpf ct list`: the node's conntrack table.
    pub fn conntrack(&self) -> serde_json::Value {
        match &self.packet {
            None => serde_json::json!({"error": "the packet path is not running"}),
            Some(p) => match p.dp.conntrack() {
                Ok(entries) => serde_json::json!({ "entries": entries }),
                Err(e) => serde_json::json!({ "error": format!("read conntrack: {e}") }),
            },
        }
    }

    /// `membrane bpf tc stats`: forwards and drops by reason, summed over CPUs.
    pub fn tc_stats(&self) -> serde_json::Value {
        match &self.packet {
            None => serde_json::json!({"error": "the packet path is not running"}),
            Some(p) => match p.dp.tc_stats() {
                Ok(rows) => serde_json::json!({ "stats": rows }),
                Err(e) => serde_json::json!({ "error": format!("read tc stats: {e}") }),
            },
        }
    }

    /// The packet path's part of `membrane status`.
    pub(crate) fn packet_status(&self) -> serde_json::Value {
        let Some(p) = &self.packet else {
            return serde_json::Value::Null;
        };
        let s = &p.settings;
        let endpoints = p.dp.endpoints().map(|eps| {
            eps.into_iter()
                .map(|e| {
                    serde_json::json!({
                        "id": e.id,
                        "ifindex": e.ifindex,
                        "ips": e.ips,
                        "identity": e.identity,
                    })
                })
                .collect::<Vec<_>>()
        });
        serde_json::json!({
            "pins": p.dp.dir(),
            "overlay": s.overlay.to_string(),
            "underlay_device": p.underlay.as_ref().map(|d| &d.name),
            "node_ip": s.node_ip4,
            "underlay_mtu": s.underlay_mtu,
            "lb_algorithm": s.lb_algorithm.to_string(),
            "tc_policy": s.policy,
            "prefilter": p.prefilter,
            "tc_endpoints": endpoints.map_err(|e| e.to_string()).unwrap_or_default(),
            "lb_services": p.dp.lb_services().map(|svcs| {
                svcs.iter()
                    .map(|s| {
                        serde_json::json!({
                            "frontend": s.frontend,
                            "proto": s.proto,
                            "node_port": s.node_port,
                            "external_local": s.external_local,
                            "backends": s.backends,
                        })
                    })
                    .collect::<Vec<_>>()
            }).unwrap_or_default(),
            "last_changes": self.node_changes,
        })
    }
}
