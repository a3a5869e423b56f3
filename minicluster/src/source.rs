//! The mini-cluster as the control plane reads it: Kubernetes-shaped YAML in
//! membrane-xds's watched source directory (the Pods with their labels, IPs and
//! node, the deathstar Service with its EndpointSlice, the Node, and the policy),
//! written as `kubectl get -o yaml` would show them, so the demo's control plane
//! is fed exactly as a cluster's would be.

use super::cluster::Pod;
use super::*;
use membrane_xds::inject;
use serde_json::{json, Value};

/// A node of the mini-cluster: its name (`spec.nodeName`, the agent's `--node`),
/// its address on the underlay (the Node's InternalIP, the tunnel endpoint) and
/// its pods' network (the Node's `spec.podCIDRs`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct NodeSpec {
    pub(crate) name: &'static str,
    pub(crate) ip: &'static str,
    pub(crate) pod_cidr: &'static str,
}

/// The two nodes, joined by an underlay /24.
pub(crate) const NODES: [NodeSpec; 2] = [
    NodeSpec {
        name: "node-1",
        ip: "192.168.79.1",
        pod_cidr: "10.200.0.0/24",
    },
    NodeSpec {
        name: "node-2",
        ip: "192.168.79.2",
        pod_cidr: "10.201.0.0/24",
    },
];
/// The node the control plane runs on.
pub(crate) const NODE: &str = NODES[0].name;
/// Where the control plane listens: node-1's underlay address, which the other
/// node's agent and every pod reach (a pod's own loopback is its own).
pub(crate) const NODE_IP: &str = NODES[0].ip;
/// Each node's underlay device (one end of the veth pair between the nodes).
pub(crate) const UNDERLAY: &str = "ul0";
/// The file in the source directory holding the CiliumNetworkPolicy.
pub(crate) const POLICY_FILE: &str = "policy.yaml";
/// The file holding the Pods, the Service, its EndpointSlice and the Node.
pub(crate) const CLUSTER_FILE: &str = "cluster.yaml";

/// `k8s:org=empire,k8s:class=deathstar` as Kubernetes metadata labels.
fn k8s_labels(labels: &str) -> Value {
    let map: serde_json::Map<String, Value> = labels
        .split(',')
        .filter_map(|l| {
            let (k, v) = l.strip_prefix("k8s:").unwrap_or(l).split_once('=')?;
            Some((k.to_owned(), Value::String(v.to_owned())))
        })
        .collect();
    Value::Object(map)
}

/// A pod as the mini-cluster creates it, before admission. The deathstars serve HTTP
/// on a port named `http`, with a readiness probe on it (the injector hands it to the
/// sidecar's status port), and ask through Istio's `proxy.istio.io/config` for a
/// handover socket in `run_dir` (`proxyMetadata`, which the injector puts in the
/// sidecar's environment), so that a successor can take the listeners over. The one
/// on node-1 gets a native sidecar (the default), the one on node-2 a plain container
/// with `holdApplicationUntilProxyStarts`. The ships opt out of injection.
pub(crate) fn pod_object(p: &Pod, run_dir: &Path) -> Value {
    let mut containers = vec![json!({"name": "app", "image": "membrane-demo", "ports": []})];
    let mut annotations = json!({});
    let deathstar = p.labels == DEATHSTAR;
    if deathstar {
        containers[0]["ports"] = json!([{"name": "http", "containerPort": 80, "protocol": "TCP"}]);
        containers[0]["readinessProbe"] = json!({
            "httpGet": {"path": "/", "port": 80},
            "periodSeconds": 1,
        });
        let mut pc = json!({"proxyMetadata": {
            "MEMBRANE_HANDOVER_SOCKET": run_dir.join("handover.sock"),
        }});
        // node-2's replica takes the other shape a sidecar is injected in: a plain
        // container holding the app until it is ready (its postStart hook).
        if p.node == 1 {
            annotations[inject::sidecar::NATIVE_SIDECAR_ANNOTATION] = json!("false");
            pc["holdApplicationUntilProxyStarts"] = json!(true);
        }
        annotations[inject::sidecar::PROXY_CONFIG_ANNOTATION] = Value::String(pc.to_string());
    } else {
        // The ships are not in the mesh.
        annotations[inject::INJECT_KEY] = json!("false");
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": p.name,
            "namespace": "default",
            "labels": k8s_labels(p.labels),
            "annotations": annotations,
        },
        "spec": {
            "nodeName": NODES[p.node].name,
            "serviceAccountName": "default",
            "containers": containers,
        },
    })
}

/// A ship's pod as the API server holds it (not injected), with its status.
pub(crate) fn ship_object(p: &Pod) -> Value {
    let mut pod = pod_object(p, Path::new("/"));
    pod["status"] = json!({"hostIP": NODES[p.node].ip, "podIP": p.ip, "podIPs": [{"ip": p.ip}]});
    pod
}

/// Every object of the mini-cluster but the policy, one YAML document each.
/// `pods` are the Pod objects as the API server holds them (the deathstars as the
/// injector patched them).
pub(crate) fn cluster_yaml(
    pods: &[Value],
    deathstars: &[Pod],
    service: SocketAddr,
) -> Result<String> {
    let mut objects: Vec<Value> = pods.to_vec();
    objects.push(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "deathstar", "namespace": "default"},
        "spec": {
            "clusterIP": service.ip().to_string(),
            "selector": k8s_labels(DEATHSTAR),
            "ports": [{"name": "http", "port": service.port(), "targetPort": "http", "protocol": "TCP"}],
        },
    }));
    objects.push(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "deathstar-1xq7z",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": "deathstar"},
        },
        "addressType": "IPv4",
        "endpoints": deathstars.iter().map(|d| json!({
            "addresses": [d.ip],
            "conditions": {"ready": true},
            "nodeName": NODES[d.node].name,
            "targetRef": {"kind": "Pod", "namespace": "default", "name": d.name},
        })).collect::<Vec<_>>(),
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
    }));
    objects.extend(NODES.iter().map(|n| {
        json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": n.name},
            "spec": {"podCIDR": n.pod_cidr, "podCIDRs": [n.pod_cidr]},
            "status": {"addresses": [
                {"type": "InternalIP", "address": n.ip},
                {"type": "Hostname", "address": n.name},
            ]},
        })
    }));
    let mut out = String::new();
    for o in &objects {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(o).context("render a cluster object as YAML")?);
    }
    Ok(out)
}

/// Writes the source directory `dir` (created by the caller): the cluster and
/// the policy `policy`.
pub(crate) fn write_source(dir: &Path, cluster: &str, policy: &str) -> Result<()> {
    replace_file(dir, CLUSTER_FILE, cluster)?;
    replace_file(dir, POLICY_FILE, policy)
}

/// Replaces `dir/name` with `text` in one rename, as `kubectl apply` changes an
/// object in one step: the watcher never reads half a file (it would reject
/// it, keeping the last good version, and the demo's timing would include
/// that detour). The temporary file sits beside the directory, not in it, so
/// the watcher never sees it.
pub(crate) fn replace_file(dir: &Path, name: &str, text: &str) -> Result<()> {
    let parent = dir.parent().context("the source directory has no parent")?;
    let tmp = parent.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    let to = dir.join(name);
    std::fs::rename(&tmp, &to)
        .with_context(|| format!("rename {} to {}", tmp.display(), to.display()))
}

/// The L7 policy with a second HTTP rule allowing `PUT /v1/exhaust-port`: the
/// live edit of step 7.
pub(crate) fn l7_allowing_exhaust_port() -> Result<String> {
    let landing = "          path: \"/v1/request-landing\"\n";
    if !L7.1.contains(landing) {
        bail!(
            "{}: the Star Wars manifest changed shape (no {landing:?})",
            L7.0
        );
    }
    Ok(L7.1.replace(
        landing,
        &format!("{landing}        - method: \"PUT\"\n          path: \"/v1/exhaust-port\"\n"),
    ))
}

/// `policy` with the Alliance admitted beside the Empire (a second
/// `fromEndpoints` selector): the live edit of step 7 that changes who may
/// connect, so the agent's kernel maps change with the sidecars' rules.
pub(crate) fn admitting_the_alliance(policy: &str) -> Result<String> {
    let empire = "    - matchLabels:\n        org: empire\n";
    if !policy.contains(empire) {
        bail!(
            "{}: the Star Wars manifest changed shape (no {empire:?})",
            L7.0
        );
    }
    Ok(policy.replace(
        empire,
        &format!("{empire}    - matchLabels:\n        org: alliance\n"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_edited_policies_add_the_put_rule_then_the_alliance() {
        let edited = l7_allowing_exhaust_port().unwrap();
        let added: Vec<&str> = edited
            .lines()
            .filter(|l| !L7.1.lines().any(|o| o == *l))
            .collect();
        assert_eq!(
            added,
            [
                "        - method: \"PUT\"",
                "          path: \"/v1/exhaust-port\""
            ]
        );
        let policies = compile_quietly((L7.0, &edited)).unwrap();
        let r = trace_for(&policies, TIEFIGHTER, Some(("PUT", "/v1/exhaust-port"))).unwrap();
        assert_eq!(r.verdict, "allowed");
        let both = admitting_the_alliance(&edited).unwrap();
        let policies = compile_quietly((L7.0, &both)).unwrap();
        let landing = Some(("POST", "/v1/request-landing"));
        assert_eq!(
            trace_for(&policies, XWING, landing).unwrap().verdict,
            "allowed"
        );
        let policies = compile_quietly((L7.0, &edited)).unwrap();
        assert_eq!(
            trace_for(&policies, XWING, landing).unwrap().verdict,
            "denied"
        );
    }

    #[test]
    fn the_cluster_is_kubernetes_yaml_the_labels_without_their_source() {
        let pod = |name, labels, ip, node| Pod {
            name,
            labels,
            ip,
            node,
        };
        let (d, x) = (
            pod("deathstar-1", DEATHSTAR, "10.201.0.11", 1),
            pod("xwing", XWING, "10.200.0.3", 0),
        );
        let run = Path::new("/run/deathstar-1");
        let pods = [
            super::super::kubelet::admitted(&d, run).unwrap(),
            ship_object(&x),
        ];
        let y = cluster_yaml(&pods, &[d], SERVICE.parse().unwrap()).unwrap();
        let docs: Vec<Value> = y
            .split("---\n")
            .filter(|d| !d.trim().is_empty())
            .map(|d| serde_yaml_ng::from_str(d).unwrap())
            .collect();
        let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            ["Pod", "Pod", "Service", "EndpointSlice", "Node", "Node"]
        );
        assert_eq!(docs[0]["metadata"]["labels"]["class"], "deathstar");
        assert_eq!(docs[1]["metadata"]["labels"]["org"], "alliance");
        assert_eq!(docs[0]["spec"]["nodeName"], "node-2");
        assert_eq!(docs[1]["spec"]["nodeName"], "node-1");
        assert_eq!(docs[3]["endpoints"][0]["nodeName"], "node-2");
        assert_eq!(docs[5]["status"]["addresses"][0]["address"], "192.168.79.2");
        // Only the deathstars are injected, by the injector itself.
        assert!(docs[0]["metadata"]["annotations"][inject::STATUS_ANNOTATION].is_string());
        // node-2's replica: a plain container holding the app (see pod_object).
        assert_eq!(docs[0]["spec"]["containers"][0]["name"], inject::CONTAINER);
        assert_eq!(docs[0]["status"]["podIP"], "10.201.0.11");
        assert_eq!(
            docs[1]["metadata"]["annotations"][inject::INJECT_KEY],
            "false"
        );
        assert!(docs[1]["metadata"]["annotations"]
            .get(inject::STATUS_ANNOTATION)
            .is_none());
        assert_eq!(docs[2]["spec"]["clusterIP"], "10.96.0.10");
        assert_eq!(docs[3]["endpoints"][0]["addresses"][0], "10.201.0.11");
    }
}
