//! The mini-cluster's pods injected for real: each deathstar's Pod object goes through
//! the project's sidecar injector (`membrane_xds::inject::review`, the code
//! membrane-xds's webhook serves) and its sidecar runs as a kubelet would run the
//! `istio-proxy` container the patch added: its command and args, its environment with
//! the downward-API fields (`POD_NAME`, `POD_NAMESPACE`, `INSTANCE_IP`,
//! `SERVICE_ACCOUNT`, `HOST_IP`) resolved from the pod, its user from its
//! securityContext, its workload-certificate Secret materialized in a directory of the
//! pod's own, its startup probe awaited before the application starts (a native
//! sidecar's ordering) or its postStart hook run (a plain container's
//! `holdApplicationUntilProxyStarts`), and the readiness probes the injector rewrote
//! asked on the pod's address.
//!
//! A process here shares the host's file system, so the Secret's directory is named
//! to the sidecar by the contract's override (`MEMBRANE_CERTS_DIR`) rather than
//! mounted at `/etc/certs`; everything else comes from the injected container as is.

use super::cluster::{Bins, Cluster, Pod};
use super::source::{NODES, NODE_IP};
use super::*;
use base64::Engine;
use membrane_xds::inject::{self, Outcome, Sidecar};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;

/// Where membrane-xds serves mTLS xDS (Istio's 15012) on node-1's underlay address.
pub(crate) const XDS_TLS_PORT: u16 = 15012;
/// The workload certificates' trust domain (membrane-xds's default).
const TRUST_DOMAIN: &str = "cluster.local";
/// How long a probe the kubelet runs may take to pass.
const PROBE_WAIT: Duration = Duration::from_secs(20);

/// The injector as the mini-cluster's control plane would serve it: the sidecars dial
/// the mTLS port with the workload certificate of their service account.
pub(crate) fn injector() -> Sidecar {
    Sidecar::new(
        "membrane-proxy",
        &format!("https://{NODE_IP}:{XDS_TLS_PORT}"),
        "default",
    )
}

/// `pod` as the webhook's patch leaves it, or why it was not injected.
pub(crate) fn injected(pod: &Value, sidecar: &Sidecar) -> Result<Value> {
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": format!("minicluster-{}", pod["metadata"]["name"].as_str().unwrap_or("")),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": pod["metadata"]["namespace"],
            "operation": "CREATE",
            "object": pod,
        },
    });
    let r = inject::review(&serde_json::to_vec(&review)?, "/inject", sidecar)?;
    if r.outcome != Outcome::Injected {
        bail!("the injector did not inject {}: {:?}", r.pod, r.outcome);
    }
    let b64 = r.review["response"]["patch"]
        .as_str()
        .context("the injector's answer has no patch")?;
    let patch: json_patch::Patch =
        serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(b64)?)?;
    let mut out = pod.clone();
    json_patch::patch(&mut out, &patch).context("apply the injector's patch")?;
    Ok(out)
}

/// Deathstar `d`'s Pod as the API server stores it after admission: the object the
/// mini-cluster creates (its handover socket in `run_dir`), patched by the injector,
/// with the status the kubelet reports (its address and its node's).
pub(crate) fn admitted(d: &Pod, run_dir: &Path) -> Result<Value> {
    let created = source::pod_object(d, run_dir);
    let mut pod = injected(&created, &injector())?;
    pod["status"] = json!({
        "hostIP": NODES[d.node].ip,
        "podIP": d.ip,
        "podIPs": [{"ip": d.ip}],
    });
    Ok(pod)
}

/// An HTTP probe as the kubelet runs it: `GET http://POD_IP:port/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpProbe {
    pub(crate) port: u16,
    pub(crate) path: String,
}

impl HttpProbe {
    /// The container's `httpGet` probe `which` (e.g. `readinessProbe`), if it has one;
    /// a probe of another kind or a named port is an error (the injector rewrites the
    /// app's probes to numbered `httpGet`s).
    fn of(container: &Value, which: &str) -> Result<Option<HttpProbe>> {
        let Some(p) = container.get(which).filter(|p| !p.is_null()) else {
            return Ok(None);
        };
        let get = p
            .get("httpGet")
            .with_context(|| format!("{which} is not an httpGet probe: {p}"))?;
        let port = get["port"]
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .with_context(|| format!("{which}: port {} is not a port number", get["port"]))?;
        Ok(Some(HttpProbe {
            port,
            path: get["path"].as_str().unwrap_or("/").to_owned(),
        }))
    }
}

/// The injected `istio-proxy` container, as the kubelet starts it.
#[derive(Debug, Clone)]
pub(crate) struct ProxyContainer {
    /// Its command line (`command` then `args`).
    pub(crate) argv: Vec<String>,
    /// Its environment, the downward-API fields resolved.
    pub(crate) env: Vec<(String, String)>,
    /// `securityContext.runAsUser` / `runAsGroup`.
    pub(crate) user: (u32, u32),
    /// A native sidecar (an init container with `restartPolicy: Always`): the
    /// application starts once its startup probe passed.
    pub(crate) native: bool,
    /// `lifecycle.postStart.exec.command`: run to its end before the next container.
    pub(crate) post_start: Option<Vec<String>>,
    /// Its startup and readiness probes.
    pub(crate) startup: Option<HttpProbe>,
    pub(crate) readiness: Option<HttpProbe>,
    /// Whether it mounts the workload-certificate Secret (at `/etc/certs`).
    pub(crate) mounts_certs: bool,
}

/// A downward-API `fieldRef` resolved from the pod (`metadata.name` is
/// `/metadata/name`), as the kubelet resolves it when it starts the container.
fn field_ref(pod: &Value, path: &str) -> Result<String> {
    let pointer = format!("/{}", path.replace('.', "/"));
    match pod.pointer(&pointer) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => bail!("fieldRef {path}: {other} is not a string"),
        None => bail!("fieldRef {path}: the pod has no such field"),
    }
}

impl ProxyContainer {
    /// The `istio-proxy` container of injected pod `pod` (with its status), or what
    /// keeps the kubelet from starting it.
    pub(crate) fn of(pod: &Value) -> Result<ProxyContainer> {
        let spec = &pod["spec"];
        let find = |list: &str| {
            spec[list]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["name"] == inject::CONTAINER)
                .cloned()
        };
        let (c, init) = match (find("initContainers"), find("containers")) {
            (Some(c), _) => (c, true),
            (None, Some(c)) => (c, false),
            (None, None) => bail!("the pod has no {} container", inject::CONTAINER),
        };
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        };
        let mut argv = strings(&c["command"]);
        argv.extend(strings(&c["args"]));
        if argv.is_empty() {
            bail!("{} has neither command nor args", inject::CONTAINER);
        }
        let mut env = Vec::new();
        for e in c["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().context("an env entry has no name")?;
            let value = match (e.get("value"), e.pointer("/valueFrom/fieldRef/fieldPath")) {
                (Some(Value::String(v)), _) => v.clone(),
                (_, Some(Value::String(path))) => {
                    field_ref(pod, path).with_context(|| format!("env {name}"))?
                }
                (None, None) => String::new(),
                _ => bail!("env {name}: {e} is neither a value nor a fieldRef"),
            };
            env.push((name.to_owned(), value));
        }
        let id = |k: &str| {
            c["securityContext"][k]
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .with_context(|| format!("{}: no securityContext.{k}", inject::CONTAINER))
        };
        let mounts_certs = c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["mountPath"] == inject::CERTS_DIR);
        let post_start = c.pointer("/lifecycle/postStart/exec/command").map(strings);
        Ok(ProxyContainer {
            argv,
            env,
            user: (id("runAsUser")?, id("runAsGroup")?),
            native: init && c["restartPolicy"] == "Always",
            post_start,
            startup: HttpProbe::of(&c, "startupProbe")?,
            readiness: HttpProbe::of(&c, "readinessProbe")?,
            mounts_certs,
        })
    }
}

/// The application containers' readiness probes (after injection: the status
/// port's `/app-health/...` for the ones the injector rewrote).
pub(crate) fn app_readiness(pod: &Value) -> Result<Vec<HttpProbe>> {
    let mut out = Vec::new();
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        if c["name"] != inject::CONTAINER {
            out.extend(HttpProbe::of(c, "readinessProbe")?);
        }
    }
    Ok(out)
}

impl Cluster {
    /// The control plane's and the workloads' certificates: a CA, membrane-xds's
    /// serving certificate for node-1's address, and the `membrane.default` Secret's
    /// files (the pods' service account), all made by `membrane cert`.
    pub(crate) fn issue_certs(&self, bins: &Bins) -> Result<()> {
        let pki = self.pki();
        let run = |args: &[&str]| -> Result<()> {
            let out = Command::new(&bins.membrane)
                .arg("cert")
                .args(args)
                .output()
                .context("run membrane cert")?;
            if !out.status.success() {
                bail!(
                    "membrane cert {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Ok(())
        };
        let p = |sub: &str| pki.join(sub).display().to_string();
        run(&["ca", "--out", &p("ca")])?;
        let (ca_cert, ca_key) = (p("ca/ca-cert.pem"), p("ca/ca-key.pem"));
        let issue = |ns: &str, sa: &str, out: &str, extra: &[&str]| {
            let mut a = vec![
                "issue",
                "--ca-cert",
                &ca_cert,
                "--ca-key",
                &ca_key,
                "--trust-domain",
                TRUST_DOMAIN,
                "--namespace",
                ns,
                "--service-account",
                sa,
                "--out",
                out,
            ];
            a.extend_from_slice(extra);
            run(&a)
        };
        issue(
            "membrane-system",
            "membrane-xds",
            &p("xds"),
            &["--ip", NODE_IP],
        )?;
        issue(
            "default",
            "default",
            &p(&self.secret_name("default")),
            &["--secret"],
        )
    }

    /// The mini-cluster's certificates (its temp directory's `pki`).
    pub(crate) fn pki(&self) -> PathBuf {
        self.dir.join("pki")
    }

    fn secret_name(&self, service_account: &str) -> String {
        inject::cert_secret_name(service_account)
    }

    /// Deathstar `d`'s sidecar started as the kubelet starts the injected container
    /// (the first one, or a successor for a hot restart with the same container),
    /// logging to `log`.
    pub(crate) fn run_proxy_container(&self, bins: &Bins, d: &Pod, log: &Path) -> Result<()> {
        let pod = self.injected_pod(d)?;
        let c = ProxyContainer::of(&pod)?;
        let mut env = c.env.clone();
        if c.mounts_certs {
            env.push((
                "MEMBRANE_CERTS_DIR".into(),
                self.mount_certs(d, &pod, c.user)?,
            ));
        }
        // The records volume: the hostPath directory of the pod's node, which here is
        // that node's directory in the mini-cluster's own.
        if let Some(v) = env.iter_mut().find(|(k, _)| k == "MEMBRANE_RECORDS_SOCKET") {
            v.1 = self
                .records_socket(d.node)
                .to_str()
                .context("records socket path is not UTF-8")?
                .to_owned();
        }
        // The image's PATH: the tools the pod's wrapper runs (sh, ip, setpriv).
        env.push(("PATH".into(), std::env::var("PATH").unwrap_or_default()));
        let mut argv = c.argv.clone();
        if argv[0] == "membrane-proxy" {
            argv[0] = bins
                .proxy
                .to_str()
                .context("proxy path is not UTF-8")?
                .to_owned();
        }
        let (uid, gid) = (
            format!("--reuid={}", c.user.0),
            format!("--regid={}", c.user.1),
        );
        let mut cmd: Vec<&str> = vec!["setpriv", &uid, &gid, "--clear-groups"];
        cmd.extend(argv.iter().map(String::as_str));
        self.spawn_with_env(d.name, &cmd, &env, Some(log))
    }

    /// The workload-certificate Secret the injected container mounts, materialized
    /// for pod `d` as the kubelet materializes a Secret volume: a directory of the
    /// pod's own holding its files, readable by the container's user.
    fn mount_certs(&self, d: &Pod, pod: &Value, (uid, gid): (u32, u32)) -> Result<String> {
        let sa = pod["spec"]["serviceAccountName"]
            .as_str()
            .unwrap_or("default");
        let secret = self.pki().join(self.secret_name(sa));
        let dir = self.dir.join(format!("{}-certs", d.name));
        if !dir.exists() {
            std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
            for f in ["cert-chain.pem", "key.pem", "root-cert.pem"] {
                let to = dir.join(f);
                std::fs::copy(secret.join(f), &to)
                    .with_context(|| format!("copy {f} of Secret {}", secret.display()))?;
                std::os::unix::fs::chown(&to, Some(uid), Some(gid))?;
            }
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(dir.to_str().context("temp path is not UTF-8")?.to_owned())
    }

    /// Deathstar `d`'s Pod as the API server stores it after admission: the object the
    /// mini-cluster creates, patched by the injector, with the status the kubelet
    /// reports (its address and its node's).
    pub(crate) fn injected_pod(&self, d: &Pod) -> Result<Value> {
        admitted(d, &self.sidecar_run_dir(d))
    }

    /// Pod `d` brought up as the kubelet brings up an injected pod: the proxy, then (a
    /// native sidecar) once its startup probe passes or (a plain container holding the
    /// application) once its postStart hook returned, the application; then every
    /// readiness probe until it passes.
    pub(crate) fn start_injected_pod(&self, bins: &Bins, d: &Pod, app: &[&str]) -> Result<()> {
        let pod = self.injected_pod(d)?;
        let c = ProxyContainer::of(&pod)?;
        let run = self.sidecar_run_dir(d);
        if !run.exists() {
            std::fs::create_dir(&run).with_context(|| format!("create {}", run.display()))?;
            std::os::unix::fs::chown(&run, Some(c.user.0), Some(c.user.1))
                .with_context(|| format!("chown {}", run.display()))?;
        }
        self.run_proxy_container(bins, d, &self.dir.join(format!("{}.log", d.name)))?;
        if c.native {
            if let Some(p) = &c.startup {
                self.wait_probe(d, p, "the startup probe of istio-proxy")?;
            }
        } else if let Some(hook) = &c.post_start {
            self.post_start(bins, d, hook, c.user)?;
        }
        self.spawn(d.name, app, None)?;
        let mut probes: Vec<(HttpProbe, String)> = c
            .readiness
            .iter()
            .map(|p| (p.clone(), "the readiness probe of istio-proxy".to_owned()))
            .collect();
        probes.extend(
            app_readiness(&pod)?
                .into_iter()
                .map(|p| (p, "the app's readiness probe (rewritten)".to_owned())),
        );
        for (p, what) in &probes {
            self.wait_probe(d, p, what)?;
        }
        Ok(())
    }

    /// A postStart exec hook, run in the pod as the container's user, to its end.
    fn post_start(
        &self,
        bins: &Bins,
        d: &Pod,
        hook: &[String],
        (uid, gid): (u32, u32),
    ) -> Result<()> {
        let mut argv = hook.to_vec();
        if argv.first().map(String::as_str) == Some("membrane-proxy") {
            argv[0] = bins
                .proxy
                .to_str()
                .context("proxy path is not UTF-8")?
                .to_owned();
        }
        let (u, g) = (format!("--reuid={uid}"), format!("--regid={gid}"));
        let mut cmd: Vec<&str> = vec!["setpriv", &u, &g, "--clear-groups"];
        cmd.extend(argv.iter().map(String::as_str));
        let out = self
            .in_pod(d.name, &cmd)
            .output()
            .context("run the postStart hook")?;
        if !out.status.success() {
            bail!(
                "{}'s postStart hook {:?} failed: {}{}",
                d.name,
                hook,
                String::from_utf8_lossy(&out.stderr).trim(),
                self.log_tails()
            );
        }
        Ok(())
    }

    /// Probe `p` asked as the kubelet asks it, on the pod's address from its node
    /// (from the node's own address, which the datapath admits as the host), until
    /// it answers 2xx/3xx, or an error after [`PROBE_WAIT`].
    pub(crate) fn wait_probe(&self, d: &Pod, p: &HttpProbe, what: &str) -> Result<()> {
        let url = format!("http://{}:{}{}", d.ip, p.port, p.path);
        let deadline = Instant::now() + PROBE_WAIT;
        loop {
            let out = Command::new("ip")
                .args(["netns", "exec", &self.node_ns(d.node), "curl", "-sS"])
                .args(["--max-time", "2", "-o", "/dev/null", "-w", "%{http_code}"])
                .args(["--interface", NODES[d.node].ip, &url])
                .output()
                .context("run curl")?;
            let code = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if code.starts_with('2') || code.starts_with('3') {
                return Ok(());
            }
            for c in &mut self.undo().children {
                if let Some(status) = c.try_wait()? {
                    bail!(
                        "a process of the live step exited early ({status}){}",
                        self.log_tails()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: {what} ({url}) did not pass in {} s (last: {code} {}){}",
                    d.name,
                    PROBE_WAIT.as_secs(),
                    String::from_utf8_lossy(&out.stderr).trim(),
                    self.log_tails()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[cfg(test)]
mod tests;
