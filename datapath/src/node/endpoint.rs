//! A pod's tc programs: loading `bpf_lxc.c` into the endpoint's pin directory wired to the
//! node's maps, attaching it to the host veth with pinned tcx links, and the node's
//! `mb_endpoints` map (every local pod by each of its addresses).

use crate::bpffs::PinLayout;
use std::{collections::BTreeMap, fs, io, path::Path};

use aya::{
    maps::{Array, HashMap, Map, MapData},
    programs::{
        links::{FdLink, LinkOrder},
        tc::TcAttachOptions,
        SchedClassifier, TcAttachType,
    },
    EbpfLoader,
};

use super::{LocalEndpoint, NodeDatapath};
use crate::{
    abi::{self, MbEndpointValue, MbIpKey, MbLxcConfig},
    feature_error, io_err,
    loader::prog_mut,
    maps::ip_key,
    Datapath, Error, Result,
};

const ENDPOINTS: &str = "mb_endpoints";
const LXC: &str = "mb_lxc";
/// tc ingress of the host veth: what the pod sends.
pub(crate) const PROG_FROM_CONTAINER: &str = "mb_from_container";
/// tc egress of the host veth: what goes to the pod.
pub(crate) const PROG_TO_CONTAINER: &str = "mb_to_container";

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> Error {
    move |source| Error::Map { name, source }
}

/// The link directory of one host veth under the endpoint's pin directory.
pub(crate) fn tc_link_dir(endpoint: &Datapath, ifindex: u32) -> std::path::PathBuf {
    endpoint.links_dir().join(format!("tc-{ifindex}"))
}

impl LocalEndpoint {
    fn validate(&self) -> Result<()> {
        let bad = |what: &str| {
            Err(Error::Invalid(format!(
                "endpoint {} (ifindex {}): {what}",
                self.id, self.ifindex
            )))
        };
        if self.id == 0 {
            return bad("endpoint id 0 is reserved for \"no endpoint\"");
        }
        if self.ifindex == 0 {
            return bad("ifindex 0 is no device");
        }
        if self.ips.is_empty() {
            return bad("no addresses (its packets would all be dropped as spoofed)");
        }
        if self.identity == 0 {
            return bad("identity 0 is not an identity");
        }
        Ok(())
    }
}

impl NodeDatapath {
    fn endpoints_map(&self) -> Result<HashMap<MapData, MbIpKey, MbEndpointValue>> {
        HashMap::try_from(Map::HashMap(self.map(ENDPOINTS)?)).map_err(map_err(ENDPOINTS))
    }

    /// Attach the packet path to a pod's host veth: load `bpf_lxc.c` into `endpoint`'s pin
    /// directory the first time, write its `mb_lxc` row and its addresses into
    /// `mb_endpoints` (dropping addresses it no longer has), then attach
    /// `mb_from_container` (tcx ingress) and `mb_to_container` (tcx egress) with links
    /// pinned under `links/tc-<ifindex>/`. Idempotent. Must run in the node's network
    /// namespace (the ifindex is resolved there).
    pub fn attach_endpoint(&self, endpoint: &Datapath, ep: &LocalEndpoint) -> Result<()> {
        ep.validate()?;
        // An unknown index comes back as an error or (nix 0.32) as an empty name.
        let ifname = nix::net::if_::if_indextoname(ep.ifindex)
            .ok()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "endpoint {}: ifindex {}: no such device in this network namespace",
                    ep.id, ep.ifindex
                ))
            })?;
        self.check_addresses(ep)?;
        if !endpoint.progs_dir().join(PROG_FROM_CONTAINER).exists()
            || !endpoint.progs_dir().join(PROG_TO_CONTAINER).exists()
        {
            self.load_lxc(endpoint)?;
        }
        let mut lxc: Array<MapData, MbLxcConfig> =
            Array::try_from(Map::Array(endpoint.map(LXC)?)).map_err(map_err(LXC))?;
        lxc.set(
            0,
            MbLxcConfig {
                ifindex: ep.ifindex,
                identity: ep.identity,
                endpoint_id: ep.id,
                pad: 0,
                ip4: ep
                    .ips
                    .iter()
                    .find(|ip| ip.is_ipv4())
                    .map_or(0, |ip| abi::encode_ip(*ip).0[0]),
            },
            0,
        )
        .map_err(map_err(LXC))?;
        self.write_endpoint(ep)?;

        let link_dir = tc_link_dir(endpoint, ep.ifindex);
        remove_other_tc_links(endpoint, &link_dir)?;
        fs::create_dir_all(&link_dir).map_err(io_err(&link_dir, "create link directory"))?;
        for (prog, kind, pin) in [
            (PROG_FROM_CONTAINER, TcAttachType::Ingress, "ingress"),
            (PROG_TO_CONTAINER, TcAttachType::Egress, "egress"),
        ] {
            let pin = link_dir.join(pin);
            if pin.exists() {
                continue;
            }
            if let Err(e) = attach_tcx(&endpoint.progs_dir().join(prog), prog, &ifname, kind, &pin)
            {
                // Both directions or neither: unpinning detaches the other one.
                let _ = fs::remove_dir_all(&link_dir);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Refuse an address another endpoint holds (before anything is written).
    fn check_addresses(&self, ep: &LocalEndpoint) -> Result<()> {
        let m = self.endpoints_map()?;
        for ip in &ep.ips {
            if let Ok(other) = m.get(&ip_key(*ip), 0) {
                if other.endpoint_id != ep.id {
                    return Err(Error::Invalid(format!(
                        "endpoint {}: address {ip} belongs to endpoint {}",
                        ep.id, other.endpoint_id
                    )));
                }
            }
        }
        Ok(())
    }

    /// Write `ep`'s addresses into `mb_endpoints`: new ones first, then the addresses
    /// the same endpoint id held before and no longer has are removed.
    fn write_endpoint(&self, ep: &LocalEndpoint) -> Result<()> {
        let mut m = self.endpoints_map()?;
        let value = MbEndpointValue {
            ifindex: ep.ifindex,
            identity: ep.identity,
            endpoint_id: ep.id,
            mac: ep.mac,
            node_mac: ep.node_mac,
            pad: 0,
        };
        let keep: Vec<MbIpKey> = ep.ips.iter().map(|ip| ip_key(*ip)).collect();
        for k in &keep {
            m.insert(k, value, 0).map_err(map_err(ENDPOINTS))?;
        }
        let stale: Vec<MbIpKey> = m
            .iter()
            .filter_map(|kv| kv.ok())
            .filter(|(k, v)| v.endpoint_id == ep.id && !keep.contains(k))
            .map(|(k, _)| k)
            .collect();
        for k in stale {
            m.remove(&k).map_err(map_err(ENDPOINTS))?;
        }
        Ok(())
    }

    /// Detach the pod's tc programs (unpin its links) and forget its addresses and its
    /// conntrack entries. Detaching what is not attached is not an error.
    pub fn detach_endpoint(&self, endpoint: &Datapath, ep: &LocalEndpoint) -> Result<()> {
        let link_dir = tc_link_dir(endpoint, ep.ifindex);
        if link_dir.exists() {
            fs::remove_dir_all(&link_dir).map_err(io_err(&link_dir, "unpin tc links"))?;
        }
        let mut m = self.endpoints_map()?;
        let mine: Vec<MbIpKey> = m
            .iter()
            .filter_map(|kv| kv.ok())
            .filter(|(_, v)| v.endpoint_id == ep.id)
            .map(|(k, _)| k)
            .collect();
        for k in mine {
            m.remove(&k).map_err(map_err(ENDPOINTS))?;
        }
        self.ct_forget_endpoint(ep.id)?;
        Ok(())
    }

    /// Every local pod `mb_endpoints` holds, by endpoint id, addresses sorted.
    pub fn endpoints(&self) -> Result<Vec<LocalEndpoint>> {
        let m = self.endpoints_map()?;
        let mut by_id: BTreeMap<u16, LocalEndpoint> = BTreeMap::new();
        for kv in m.iter() {
            let (k, v) = kv.map_err(map_err(ENDPOINTS))?;
            let ep = by_id.entry(v.endpoint_id).or_insert_with(|| LocalEndpoint {
                id: v.endpoint_id,
                ifindex: v.ifindex,
                ips: Vec::new(),
                identity: v.identity,
                mac: v.mac,
                node_mac: v.node_mac,
            });
            ep.ips.push(abi::decode_ip(k.ip, k.family));
        }
        Ok(by_id
            .into_values()
            .map(|mut ep| {
                ep.ips.sort();
                ep
            })
            .collect())
    }

    /// Load `bpf_lxc.c` for one endpoint: its own maps from the endpoint's directory, the
    /// node-wide ones (every map pinned under the node's `maps/`) from the node's, and pin
    /// both programs under the endpoint's `progs/`.
    fn load_lxc(&self, endpoint: &Datapath) -> Result<()> {
        let node_maps = self.node_map_names()?;
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(endpoint.maps_dir());
        for name in &node_maps {
            loader.map_pin_path(name.as_str(), self.maps_dir().join(name));
        }
        let mut obj = loader
            .load(crate::loader::objects::LXC)
            .map_err(|e| feature_error("tc programs (BPF_PROG_TYPE_SCHED_CLS)", e))?;
        for name in [PROG_FROM_CONTAINER, PROG_TO_CONTAINER] {
            let p: &mut SchedClassifier = prog_mut(&mut obj, name)?;
            p.load()
                .map_err(|e| feature_error("tc programs (BPF_PROG_TYPE_SCHED_CLS)", e))?;
            let pin = endpoint.progs_dir().join(name);
            if pin.exists() {
                fs::remove_file(&pin).map_err(io_err(&pin, "replace pinned program"))?;
            }
            p.pin(&pin).map_err(|e| Error::Io {
                path: pin.clone(),
                what: "pin program",
                source: io::Error::other(e.to_string()),
            })?;
        }
        Ok(())
    }
}

/// The endpoint's host veth changed (the pod's network was set up again): the links on
/// the old device go, so one endpoint is attached to one device.
fn remove_other_tc_links(endpoint: &Datapath, keep: &Path) -> Result<()> {
    let links = endpoint.links_dir();
    let Ok(dir) = fs::read_dir(&links) else {
        return Ok(());
    };
    for e in dir.filter_map(|e| e.ok()) {
        let path = e.path();
        let is_tc = e.file_name().to_string_lossy().starts_with("tc-");
        if is_tc && path != keep {
            fs::remove_dir_all(&path).map_err(io_err(&path, "unpin stale tc links"))?;
        }
    }
    Ok(())
}

/// Attach a pinned tc program to `ifname` with a tcx link (last in the device's chain)
/// and pin the link, so the attachment outlives this process.
pub(crate) fn attach_tcx(
    prog_pin: &Path,
    name: &'static str,
    ifname: &str,
    kind: TcAttachType,
    pin: &Path,
) -> Result<()> {
    let perr = |what| move |source| Error::Program { name, what, source };
    let mut p = SchedClassifier::from_pin(prog_pin).map_err(perr("open pinned"))?;
    let id = p
        .attach_with_options(
            ifname,
            kind,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(|source| Error::DeviceAttach {
            program: name,
            device: format!("{ifname} (tcx {kind:?})"),
            source,
        })?;
    let link = p.take_link(id).map_err(perr("take link"))?;
    let link = FdLink::try_from(link).map_err(|e| feature_error("tcx links (Linux 6.6+)", e))?;
    link.pin(pin).map_err(|e| Error::Io {
        path: pin.to_path_buf(),
        what: "pin tc link",
        source: io::Error::other(e.to_string()),
    })?;
    Ok(())
}
