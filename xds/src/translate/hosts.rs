//! NPHDS: which addresses carry which identity, as sidecars and agents are told.
//!
//! Pods' addresses carry their endpoints' identities and the CIDR prefixes policies name
//! their CIDR identities, the same for everyone. Node addresses (each node's InternalIPs)
//! depend on who asks, as in Cilium: a node's own addresses are `reserved:host` (1) on that
//! node and `reserved:remote-node` (6) everywhere else. The cluster-wide view (the shared
//! snapshot, what a client of no known node gets) has every node address as remote-node;
//! node N's agent and the sidecars of the pods on N get N's view, with N's addresses as
//! host, so that N's kubelet probes reach its pods as the host that allow-localhost lets
//! in, in the kernel and in the sidecar alike.

use super::*;

/// The addresses of each identity and their NPHDS resources, for one audience.
#[derive(Debug, Clone)]
pub(super) struct HostsView {
    /// Identity → addresses (sorted), what the RBAC translation reads.
    pub map: BTreeMap<u64, Vec<String>>,
    /// The NPHDS resources, one per identity.
    pub set: Arc<TypeResources>,
    /// Identity → the content hash of its NPHDS resource (of its addresses).
    pub hashes: HashMap<u64, u64>,
}

impl HostsView {
    fn new(map: BTreeMap<u64, Vec<String>>, set: Arc<TypeResources>) -> Self {
        let hashes = set
            .items
            .values()
            .filter_map(|r| Some((r.name.parse::<u64>().ok()?, r.hash)))
            .collect();
        HostsView { map, set, hashes }
    }

    /// What an inbound listener's principals are built from, in this view.
    pub fn peers(&self) -> envoy::Peers<'_> {
        envoy::Peers {
            map: &self.map,
            hashes: &self.hashes,
            version: &self.set.version,
        }
    }
}

/// The cluster-wide view and one view per node that runs a pod.
#[derive(Debug)]
pub(super) struct Hosts {
    /// Every node address as remote-node.
    pub shared: HostsView,
    /// Node name → its own view.
    pub nodes: HashMap<String, HostsView>,
}

impl Hosts {
    /// The view of the sidecar of `pod`: its node's, else (no node yet, or a node the
    /// state does not list) the cluster-wide one.
    pub fn for_pod(&self, pod: &k8s::Pod) -> &HostsView {
        pod.spec
            .node_name
            .as_deref()
            .and_then(|n| self.nodes.get(n))
            .unwrap_or(&self.shared)
    }
}

const HOST: u64 = Identity::HOST.0 as u64;
const REMOTE_NODE: u64 = Identity::REMOTE_NODE.0 as u64;

fn hosts_resource(id: u64, addrs: &[String]) -> Resource {
    let h = NetworkPolicyHosts {
        policy: id,
        host_addresses: addrs.to_vec(),
    };
    Resource::new(NETWORK_POLICY_HOSTS, id.to_string(), &h)
}

/// `shared` with the addresses in `own` moved from remote-node to host.
fn node_view(shared: &HostsView, own: &BTreeSet<String>) -> HostsView {
    let mut map = shared.map.clone();
    let remote: Vec<String> = map
        .remove(&REMOTE_NODE)
        .unwrap_or_default()
        .into_iter()
        .filter(|a| !own.contains(a))
        .collect();
    if !remote.is_empty() {
        map.insert(REMOTE_NODE, remote);
    }
    if !own.is_empty() {
        let host = map.entry(HOST).or_default();
        host.extend(own.iter().cloned());
        host.sort();
        host.dedup();
    }
    let mut items: Vec<Resource> = shared
        .set
        .items
        .values()
        .filter(|r| r.name != HOST.to_string() && r.name != REMOTE_NODE.to_string())
        .cloned()
        .collect();
    for id in [HOST, REMOTE_NODE] {
        if let Some(addrs) = map.get(&id) {
            items.push(hosts_resource(id, addrs));
        }
    }
    HostsView::new(map, TypeResources::shared(items))
}

impl Translator {
    /// The NPHDS views of this pass (see the module docs); the cluster-wide view's
    /// resources are kept between passes while their addresses stay the same.
    pub(super) fn hosts(
        &mut self,
        state: &ClusterState,
        eps: &[(EndpointModel, &k8s::Pod)],
    ) -> Hosts {
        let mut hosts: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
        for (m, _) in eps {
            if let Some(id) = self.engine.identity_of(&m.id) {
                hosts
                    .entry(u64::from(id.0))
                    .or_default()
                    .extend(m.ips.iter().cloned());
            }
        }
        for (net, id) in self.engine.cidr_identities() {
            hosts
                .entry(u64::from(id.0))
                .or_default()
                .insert(net.to_string());
        }
        let mut node_addrs: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for n in &state.nodes {
            for a in n.status.addresses.iter().filter(|a| a.kind == "InternalIP") {
                hosts
                    .entry(REMOTE_NODE)
                    .or_default()
                    .insert(a.address.clone());
                node_addrs
                    .entry(n.metadata.name.as_str())
                    .or_default()
                    .insert(a.address.clone());
            }
        }
        let map: BTreeMap<u64, Vec<String>> = hosts
            .into_iter()
            .map(|(k, v)| (k, v.into_iter().collect()))
            .collect();
        let items: Vec<Resource> = map
            .iter()
            .map(|(id, addrs)| match self.nphds.get(id) {
                Some((built, r)) if built == addrs => r.clone(),
                _ => {
                    let r = hosts_resource(*id, addrs);
                    self.nphds.insert(*id, (addrs.clone(), r.clone()));
                    r
                }
            })
            .collect();
        self.nphds.retain(|id, _| map.contains_key(id));
        let shared = HostsView::new(map, TypeResources::shared(items));
        // A view per node: its sidecars' and its agent's.
        let nodes = node_addrs
            .iter()
            .map(|(name, own)| ((*name).to_owned(), node_view(&shared, own)))
            .collect();
        Hosts { shared, nodes }
    }
}
