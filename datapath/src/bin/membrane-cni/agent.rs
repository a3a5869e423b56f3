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
    let reg = api::Registration {
        namespace,
        pod,
        container_id: container,
        ifname,
        netns: PathBuf::from(netns),
        cgroup,
        ips,
    };
    ask_agent(socket, &api::Request::Register(reg), code::DATAPATH)?;
    Ok(Some(add_result(cfg)))
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
