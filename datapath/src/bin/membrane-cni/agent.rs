//! ADD, DEL and CHECK with `agentSocket`: the pod registered with the node daemon
//! (`membrane-agent run --xds-address`), which attaches and programs it.

use super::*;

/// How long a request to the node daemon may take (it attaches and programs the pod).
const AGENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// One request to the node daemon; its `error` becomes a CNI error with `code`.
fn ask_agent(socket: &Path, req: &api::Request, code: u32) -> Result<Value, CniError> {
    let reply = api::request(socket, req, AGENT_TIMEOUT).map_err(|e| {
        err(
            code::TRY_AGAIN_LATER,
            "the membrane node agent does not answer (is membrane-agent running?)",
            format!("agentSocket {}: {e}", socket.display()),
        )
    })?;
    match reply.get("error") {
        Some(e) => Err(err(
            code,
            "the membrane node agent refused the request",
            e.as_str().unwrap_or_default().to_owned(),
        )),
        None => Ok(reply),
    }
}

/// ADD with `agentSocket`: register the pod with the node daemon.
pub(crate) fn register(
    cfg: &Config,
    socket: &Path,
    container: String,
    ifname: String,
    netns: String,
) -> Result<Option<Value>, CniError> {
    let need = |key: &str| {
        cni_arg(key).filter(|v| !v.is_empty()).ok_or_else(|| {
            err(
                code::INVALID_ENV,
                format!("CNI_ARGS has no {key}"),
                "with agentSocket the pod is registered by namespace and name",
            )
        })
    };
    let (namespace, pod) = (need("K8S_POD_NAMESPACE")?, need("K8S_POD_NAME")?);
    let cgroup = match cfg.raw.pointer("/runtimeConfig/cgroupPath") {
        Some(Value::String(p)) if !p.is_empty() => {
            let p = Path::new(p);
            if p.starts_with(&cfg.cgroup_root) {
                p.to_path_buf()
            } else {
                cfg.cgroup_root.join(p.strip_prefix("/").unwrap_or(p))
            }
        }
        other => {
            return Err(err(
                code::INVALID_CONFIG,
                "runtimeConfig.cgroupPath is missing: the node agent enforces policy on the pod's cgroup",
                format!(
                    "runtimeConfig.cgroupPath: {}; declare \"capabilities\": {{\"cgroupPath\": true}} so the runtime passes it",
                    other.map_or("absent".to_owned(), |v| v.to_string())
                ),
            ))
        }
    };
    let ips = cfg
        .prev_result
        .as_ref()
        .and_then(|r| r.get("ips"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|ip| ip.get("address")?.as_str())
                .filter_map(|a| a.split('/').next()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let (host_ifname, mac) = cfg
        .prev_result
        .as_ref()
        .map(|r| veth_of(r, &ifname))
        .unwrap_or_default();
    let reg = api::Registration {
        namespace,
        pod,
        container_id: container,
        ifname,
        netns: PathBuf::from(netns),
        cgroup,
        ips,
        host_ifname,
        mac,
    };
    ask_agent(socket, &api::Request::Register(reg), code::DATAPATH)?;
    Ok(Some(add_result(cfg)))
}

/// The pod's host-side interface and the MAC of its own interface `ifname`, from the
/// previous plugin's result: `interfaces` lists host-side interfaces without `sandbox`
/// and the pod's with it. The host-side one is the last without `sandbox` (the bridge
/// plugin lists its bridge first, then the veth; ptp lists only the veth), so a bridge
/// is never taken for the pod's veth when both are there.
pub(crate) fn veth_of(prev: &Value, ifname: &str) -> (Option<String>, Option<String>) {
    let interfaces = prev
        .get("interfaces")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let in_sandbox = |i: &Value| {
        i.get("sandbox")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
    };
    let name = |i: &Value| i.get("name").and_then(Value::as_str).map(str::to_owned);
    let host = interfaces
        .iter()
        .filter(|i| !in_sandbox(i))
        .filter_map(name)
        .next_back();
    let mac = interfaces
        .iter()
        .find(|i| in_sandbox(i) && name(i).as_deref() == Some(ifname))
        .and_then(|i| i.get("mac").and_then(Value::as_str))
        .filter(|m| !m.is_empty())
        .map(str::to_owned);
    (host, mac)
}

/// DEL with `agentSocket`.
pub(crate) fn unregister(
    socket: &Path,
    container_id: String,
    ifname: String,
) -> Result<Option<Value>, CniError> {
    let req = api::Request::Unregister {
        container_id,
        ifname,
    };
    match ask_agent(socket, &req, code::DATAPATH) {
        // No daemon: nothing of the pod can be left programmed by one, and the next
        // daemon forgets the pod when it finds the network namespace gone.
        Err(e) if e.code == code::TRY_AGAIN_LATER && !socket.exists() => Ok(None),
        Err(e) => Err(e),
        Ok(_) => Ok(None),
    }
}

/// CHECK with `agentSocket`: the daemon has the pod registered.
pub(crate) fn check_registered(socket: &Path) -> Result<Option<Value>, CniError> {
    let endpoint = format!(
        "{}/{}",
        pod_namespace().unwrap_or_default(),
        cni_arg("K8S_POD_NAME").unwrap_or_default()
    );
    ask_agent(
        socket,
        &api::Request::EndpointGet { endpoint },
        code::NOT_ATTACHED,
    )?;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_veth_is_the_last_interface_outside_the_sandbox() {
        // What the bridge plugin reports: bridge, host veth, pod interface.
        let bridge = json!({"interfaces": [
            {"name": "cni0", "mac": "02:00:00:00:00:01"},
            {"name": "veth1234", "mac": "02:00:00:00:00:02"},
            {"name": "eth0", "mac": "02:00:00:00:00:03", "sandbox": "/run/netns/p"},
        ]});
        assert_eq!(
            veth_of(&bridge, "eth0"),
            (Some("veth1234".into()), Some("02:00:00:00:00:03".into()))
        );
        // ptp: the pod's interface first, then the host veth.
        let ptp = json!({"interfaces": [
            {"name": "eth0", "mac": "0a:00:00:00:00:03", "sandbox": "/run/netns/p"},
            {"name": "veth9", "mac": "0a:00:00:00:00:02", "sandbox": ""},
        ]});
        assert_eq!(
            veth_of(&ptp, "eth0"),
            (Some("veth9".into()), Some("0a:00:00:00:00:03".into()))
        );
        // Another interface name, or no host side at all: nothing is made up.
        assert_eq!(veth_of(&ptp, "net1"), (Some("veth9".into()), None));
        let pod_only = json!({"interfaces": [{"name": "eth0", "sandbox": "/run/netns/p"}]});
        assert_eq!(veth_of(&pod_only, "eth0"), (None, None));
        assert_eq!(veth_of(&json!({}), "eth0"), (None, None));
    }
}
