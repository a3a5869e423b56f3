//! The pod of the privileged sidecar tests, as a kubelet and Istio's init container leave
//! it: two network namespaces joined by a veth pair (a client, and the pod at the other
//! end), the pod's inbound ports redirected to 15006 by nftables, static-file apps in the
//! pod, and there too the real `membrane-xds` binary and `membrane-proxy sidecar` with
//! Istio's environment and no flag. Everything goes on drop: processes first, then the
//! namespaces, then the test's files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use membrane_test_support::process::sibling_bin;
use membrane_test_support::sandbox::{self, curl_in};
use membrane_test_support::xds::{self as launcher, Xds};
use membrane_test_support::{wait_until, ChildGuard, Netns};

/// Where the pod's control plane listens for xDS, as `PROXY_CONFIG`'s
/// `discoveryAddress` names it (`127.0.0.1:XDS_PORT` inside the pod).
pub const XDS_PORT: u16 = 15010;

/// `membrane-proxy sidecar` (run by `wrapper` when given, e.g. `ip netns exec NS`) with
/// exactly `env` (and PATH) as its environment: no flag, as Istio's injection runs it.
pub fn sidecar_cmd(wrapper: &[&str], env: &[(&str, &str)]) -> Command {
    let bin = env!("CARGO_BIN_EXE_membrane-proxy");
    let mut c = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    c.arg("sidecar")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied());
    c
}

/// curl in namespace `ns` until the status code is `want` (20 s at most, else a panic
/// naming `what`); the last (code, body).
pub fn code_is(ns: &str, args: &[&str], want: &str, what: &str) -> (String, String) {
    wait_until(
        Duration::from_secs(20),
        Duration::from_millis(100),
        what,
        || {
            let got = curl_in(ns, args);
            (got.0 == want).then_some(got)
        },
    )
}

/// Removes the test's files when dropped (after the processes and namespaces).
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A client namespace and a pod namespace joined by a veth pair, the pod's capture
/// rules in place. Fields drop in order: processes, namespaces, files.
pub struct PodSandbox {
    children: Vec<ChildGuard>,
    /// The client's namespace, at the veth pair's other end.
    pub client: Netns,
    /// The pod's namespace: its apps, its sidecar, its control plane.
    pub server: Netns,
    dir: Dir,
    /// The client's address.
    pub client_ip: String,
    /// The pod's address (`INSTANCE_IP`).
    pub server_ip: String,
}

impl PodSandbox {
    /// The namespaces (`mbr-{short}c-ID` and `mbr-{short}s-ID`, ID from the process id),
    /// the pair (`m{short}kID`, `m{short}lID`) on 10.251.`subnet`.0/30 (the client .1,
    /// the pod .2) and the pod's inbound `ports` redirected to 15006 as Istio's init
    /// container does; `tag` names the test's files (`membrane-{tag}-ID` in the temporary
    /// directory: `app/` with `v1/x` in it, `xds/` for the control plane's source) and
    /// its nftables table. Tests that may run at once differ in `short` and `subnet`.
    pub fn new(tag: &str, short: char, subnet: u8, ports: &[u16]) -> PodSandbox {
        let id = std::process::id() % 100_000;
        let dir = Dir(std::env::temp_dir().join(format!("membrane-{tag}-{id}")));
        std::fs::create_dir_all(dir.0.join("app/v1")).unwrap();
        std::fs::create_dir_all(dir.0.join("xds")).unwrap();
        std::fs::write(dir.0.join("app/v1/x"), "app-file\n").unwrap();
        let (client, server) = (
            Netns::add(&format!("mbr-{short}c-{id}")),
            Netns::add(&format!("mbr-{short}s-{id}")),
        );
        let (client_ip, server_ip) = (format!("10.251.{subnet}.1"), format!("10.251.{subnet}.2"));
        sandbox::veth(
            &client,
            &format!("m{short}k{id}"),
            &format!("{client_ip}/30"),
            &server,
            &format!("m{short}l{id}"),
            &format!("{server_ip}/30"),
        );
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        let rules = dir.0.join("capture.nft");
        std::fs::write(
            &rules,
            format!(
                "table ip membrane_{tag}_test {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat;\n    tcp dport {{ {} }} redirect to :15006\n  }}\n}}\n",
                ports.join(", ")
            ),
        )
        .unwrap();
        membrane_test_support::process::run(server.exec("nft").arg("-f").arg(&rules));
        PodSandbox {
            children: Vec::new(),
            client,
            server,
            dir,
            client_ip,
            server_ip,
        }
    }

    /// The directory of the test's own files.
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    /// The files the apps serve.
    pub fn app_dir(&self) -> PathBuf {
        self.dir.0.join("app")
    }

    /// The control plane's source directory.
    pub fn xds_dir(&self) -> PathBuf {
        self.dir.0.join("xds")
    }

    /// An HTTP/1.1 (keep-alive) static file server of `app_dir()` on `port` of every
    /// address of the pod; returns once it answers inside the pod (local connections are
    /// not redirected).
    pub fn app(&mut self, port: u16) {
        let script = "import functools,http.server,sys\n\
                      http.server.SimpleHTTPRequestHandler.protocol_version='HTTP/1.1'\n\
                      h=functools.partial(http.server.SimpleHTTPRequestHandler,directory=sys.argv[2])\n\
                      http.server.ThreadingHTTPServer(('0.0.0.0',int(sys.argv[1])),h).serve_forever()\n";
        let mut c = self.server.exec("python3");
        c.args(["-c", script, &port.to_string()])
            .arg(self.app_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.children.push(ChildGuard(c.spawn().unwrap()));
        code_is(
            &self.server.name,
            &[&format!("http://{}:{port}/v1/x", self.server_ip)],
            "200",
            "the app up",
        );
    }

    /// The source both pods come from: `pods.yaml` (the deathstar, `deathstar-1` at the
    /// pod's address, and a tiefighter at the client's; both empire ships) and `cnp.yaml`,
    /// a CiliumNetworkPolicy admitting empire ships to the deathstar's `to_ports` (YAML
    /// lines under `toPorts:`).
    pub fn write_source(&self, to_ports: &[&str]) {
        let (client, server) = (&self.client_ip, &self.server_ip);
        let pods = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: deathstar-1, namespace: default, labels: {{org: empire, class: deathstar}}}}\nstatus: {{podIP: {server}}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: tiefighter, namespace: default, labels: {{org: empire, class: tiefighter}}}}\nstatus: {{podIP: {client}}}\n"
        );
        std::fs::write(self.xds_dir().join("pods.yaml"), pods).unwrap();
        let mut cnp = vec![
            "apiVersion: cilium.io/v2",
            "kind: CiliumNetworkPolicy",
            "metadata: {name: deathstar, namespace: default}",
            "spec:",
            "  endpointSelector: {matchLabels: {class: deathstar}}",
            "  ingress:",
            "  - fromEndpoints: [{matchLabels: {org: empire}}]",
            "    toPorts:",
        ];
        cnp.extend(to_ports);
        std::fs::write(self.xds_dir().join("cnp.yaml"), cnp.join("\n")).unwrap();
    }

    /// The real `membrane-xds` (the workspace's binary) in the pod, on `xds_dir()`, plaintext xDS on
    /// 127.0.0.1:[`XDS_PORT`], polling every 50 ms. Declare it after the sandbox, so that
    /// it stops before the namespaces go.
    pub fn xds(&self) -> Xds {
        let mut xds = Command::new("ip");
        xds.args(["netns", "exec", &self.server.name])
            .arg(sibling_bin(
                env!("CARGO_BIN_EXE_membrane-proxy"),
                "membrane-xds",
            ))
            .args(["--debug-addr", "127.0.0.1:0", "--tls-addr", "127.0.0.1:0"])
            .args(["--plaintext-xds", "--grpc-addr"])
            .arg(format!("127.0.0.1:{XDS_PORT}"))
            .args(["--poll-ms", "50"]);
        launcher::spawn(xds, &self.xds_dir())
    }

    /// `membrane-proxy sidecar` in the pod with exactly `env` (and PATH); its stdout
    /// discarded.
    pub fn sidecar(&mut self, env: &[(&str, &str)]) {
        let sidecar = sidecar_cmd(&["ip", "netns", "exec", &self.server.name], env)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.children.push(ChildGuard(sidecar));
    }

    /// `membrane-proxy wait` in the pod, as the postStart hook runs it, polling every
    /// 100 ms for at most `timeout`.
    pub fn wait(&self, timeout: &str) -> Output {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.server.name,
                env!("CARGO_BIN_EXE_membrane-proxy"),
                "wait",
            ])
            .args(["--timeout", timeout, "--period", "100ms"])
            .output()
            .expect("run membrane-proxy wait")
    }
}
