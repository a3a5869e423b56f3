//! The sidecar behind the eBPF capture (no netfilter), privileged, against a hostile peer:
//! a pod network namespace with its own cgroup, the datapath attached to both (connect4/6
//! steer the pod's connects to the outbound listener, sk_lookup hands inbound connections
//! to the inbound listener), membrane-proxy in the pod as uid 1337 with the capture
//! listeners the injector gives it, an application, and a peer namespace on a veth pair
//! whose addresses stand for other pods. Namespaces, cgroup and pins are removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use membrane_datapath::policy_map::{Direction, MapVerdict, PolicyRule};
use membrane_datapath::{Capture, Datapath, DatapathSettings, InboundPorts};
use membrane_test_support::{sandbox, Cgroup, ChildGuard, Netns, PinDir};

/// The pod's address; the peer namespace has .1 (`org=empire`) and .3 (`role=ops`).
const NET: &str = "10.252";

struct Pod {
    pod: String,
    peer: String,
    ip: String,
    cgroup: PathBuf,
    bpffs: PathBuf,
    dir: PathBuf,
    children: Vec<ChildGuard>,
    dp: Option<Datapath>,
    // Torn down after `Drop for Pod` detached the datapath: pins, cgroup, namespaces.
    _pins: PinDir,
    cg: Cgroup,
    nets: [Netns; 2],
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.children.clear();
        if let Some(dp) = &self.dp {
            let _ = dp.detach_netns(&self.nets[0].path());
            let _ = dp.detach(&self.cgroup);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(args: &[&str]) {
    membrane_test_support::process::run_args(args);
}

/// The ingress policy of the pod (`app=backend`): the empire may GET /v1/.* on 8080;
/// ops may reach every port at L3 (so nothing but the capture itself stands between ops
/// and a port of the pod).
const POLICY: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: backend, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {org: empire}}]
    toPorts:
    - ports: [{port: \"8080\", protocol: TCP}]
      rules: {http: [{method: GET, path: /v1/.*}]}
  - fromEndpoints: [{matchLabels: {role: ops}}]
";

/// The datapath as the agent sets it for an injected pod: outbound capture for every
/// process but the sidecar (uid 1337), inbound capture but for the sidecar's own
/// metrics/health ports; L3/L4 enforcement as asked, with no decision at all for the
/// pod's connects (so the sidecar's own delivery to the pod's address must not need one).
fn settings(pod_ip: std::net::IpAddr, enforce: bool) -> DatapathSettings {
    DatapathSettings {
        capture: Some(Capture {
            proxy_uid: Some(1337),
            proxy_mark: None,
            ..Capture::default()
        }),
        policy_enforce: enforce,
        pod_identity: 4242,
        policy_revision: 1,
        capture_inbound: true,
        inbound_ports: InboundPorts::AllExcept(
            membrane_datapath::istio::ALWAYS_EXCLUDED_INBOUND.to_vec(),
        ),
        pod_addrs: vec![pod_ip],
        ..DatapathSettings::default()
    }
}

/// A deny-all ingress policy for the pod.
const DENY_ALL: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: backend, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress: [{}]
";

impl Pod {
    /// The pod and its peer, the datapath attached, an application on 0.0.0.0:8080
    /// (logging the requests it serves to `app.log`) and a localhost-only one on
    /// 127.0.0.1:9090; `net` keeps concurrent tests apart.
    fn new(tag: &str, net: u8) -> Pod {
        let id = std::process::id() % 100_000;
        let name = format!("mbe{tag}-{id}");
        let pins = PinDir::new(&name);
        let cg = Cgroup::create(&name);
        membrane_datapath::ensure_bpffs(pins.path()).unwrap();
        let nets = [
            Netns::add(&format!("{name}-pod")),
            Netns::add(&format!("{name}-peer")),
        ];
        let (va, vb) = (format!("mep{tag}{id}"), format!("mer{tag}{id}"));
        let (pod_addr, peer_addr) = (format!("{NET}.{net}.2/24"), format!("{NET}.{net}.1/24"));
        sandbox::veth(&nets[0], &va, &pod_addr, &nets[1], &vb, &peer_addr);
        nets[1].ip(&["addr", "add", &format!("{NET}.{net}.3/24"), "dev", &vb]);
        let mut p = Pod {
            pod: nets[0].name.clone(),
            peer: nets[1].name.clone(),
            ip: format!("{NET}.{net}.2"),
            cgroup: cg.path.clone(),
            bpffs: pins.path.clone(),
            dir: std::env::temp_dir().join(&name),
            children: Vec::new(),
            dp: None,
            _pins: pins,
            cg,
            nets,
        };
        std::fs::create_dir_all(p.dir.join("v1")).unwrap();
        std::fs::write(p.dir.join("v1/x"), "app-file\n").unwrap();
        // The proxy (uid 1337) must read its files and execute its binary.
        std::fs::copy(
            env!("CARGO_BIN_EXE_membrane-proxy"),
            p.dir.join("membrane-proxy"),
        )
        .unwrap();
        run(&["chmod", "-R", "a+rX", p.dir.to_str().unwrap()]);
        let ip: std::net::IpAddr = p.ip.parse().unwrap();
        let dp = Datapath::attach(&p.bpffs, &p.cgroup, &settings(ip, false)).unwrap();
        dp.sync_ipcache(&[(ip.into(), 4242)]).unwrap();
        dp.attach_netns(&p.nets[0].path()).unwrap();
        p.dp = Some(dp);
        let dir = p.dir.to_str().unwrap().to_owned();
        let log = p.dir.join("app.log");
        p.spawn_in_pod(
            &["python3", "-m", "http.server", "8080", "--bind", "0.0.0.0"],
            &["--directory", &dir],
            Some(&log),
        );
        p.spawn_in_pod(
            &[
                "python3",
                "-m",
                "http.server",
                "9090",
                "--bind",
                "127.0.0.1",
            ],
            &["--directory", &dir],
            None,
        );
        // Both apps answer inside the pod (loopback is never captured) before any test.
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in [8080, 9090] {
            let url = format!("http://127.0.0.1:{port}/v1/x");
            loop {
                let out = Command::new("ip")
                    .args(["netns", "exec", &p.pod, "curl", "-s", "-o", "/dev/null"])
                    .args(["-w", "%{http_code}", &url])
                    .output()
                    .unwrap();
                if out.stdout == b"200" {
                    break;
                }
                assert!(Instant::now() < deadline, "app on {port} did not start");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        p
    }

    fn dp(&self) -> &Datapath {
        self.dp.as_ref().unwrap()
    }

    /// `cmd` in the pod's cgroup and namespace; stdout and stderr to `log` or nowhere.
    fn spawn_in_pod(&mut self, cmd: &[&str], more: &[&str], log: Option<&Path>) {
        let out = |l: Option<&Path>| match l {
            Some(p) => Stdio::from(std::fs::File::create(p).unwrap()),
            None => Stdio::null(),
        };
        let child = self
            .cg
            .command("ip", &["netns", "exec", &self.pod])
            .args(cmd)
            .args(more)
            .stdin(Stdio::null())
            .stdout(out(log))
            .stderr(out(log))
            .spawn()
            .unwrap();
        self.children.push(ChildGuard(child));
    }

    /// membrane-proxy in the pod, as uid 1337, with the injector's listeners and
    /// `policy`; returns once its health endpoint answers from the peer.
    fn sidecar(&mut self, policy: &str) {
        let capture = [
            "--capture-outbound",
            membrane_api::sidecar::CAPTURE_OUTBOUND,
            "--capture-inbound",
            membrane_api::sidecar::CAPTURE_INBOUND,
        ];
        let file = self.dir.join("policy.yaml");
        std::fs::write(&file, policy).unwrap();
        run(&["chmod", "a+r", file.to_str().unwrap()]);
        let bin = self.dir.join("membrane-proxy");
        let (empire, ops) = (
            format!("{}.1/32=k8s:org=empire", self.subnet()),
            format!("{}.3/32=k8s:role=ops", self.subnet()),
        );
        let mut cmd: Vec<&str> = sandbox::AS_SIDECAR.to_vec();
        cmd.extend([bin.to_str().unwrap(), "standalone"]);
        cmd.extend(capture);
        cmd.extend([
            "--admin",
            "127.0.0.1:15000",
            "--metrics",
            "0.0.0.0:15020",
            "--health",
            "0.0.0.0:15021",
            "--listen",
            "127.0.0.1:15007",
            "--upstream",
            "127.0.0.1:8080",
            "--endpoint-labels",
            "k8s:app=backend",
            "--peer",
            &empire,
            "--peer",
            &ops,
            "--log",
            "debug",
            "--access-log",
            "false",
            "--policy",
            file.to_str().unwrap(),
        ]);
        let log = self.dir.join("proxy.log");
        self.spawn_in_pod(&cmd, &[], Some(&log));
        let ready = format!("http://{}:15021/healthz/ready", self.ip);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.curl(".1", &[&ready]).0 != "200" {
            assert!(
                Instant::now() < deadline,
                "the sidecar did not become ready: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn subnet(&self) -> &str {
        self.ip.rsplit_once('.').unwrap().0
    }

    /// curl from the peer, from address `.1` or `.3`: (status code, body).
    fn curl(&self, from: &str, args: &[&str]) -> (String, String) {
        let src = format!("{}{from}", self.subnet());
        let mut all = vec!["--interface", &src];
        all.extend_from_slice(args);
        sandbox::curl_in(&self.peer, &all)
    }

    /// The sidecar's and the app's logs, for a failure message.
    fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!(
            "proxy.log:\n{}\napp.log:\n{}\ncounters: {:?}",
            read("proxy.log"),
            read("app.log"),
            self.dp().counters()
        )
    }

    /// The proxy's Prometheus text, read from the peer.
    fn metrics(&self) -> String {
        let url = format!("http://{}:15020/stats/prometheus", self.ip);
        self.curl(".1", &[&url]).1
    }
}

/// From the peer's `.3`, one source port: a request to POD:`first`, closed with a reset
/// (SO_LINGER 0, so the port is free at once), then one to POD:`second` from the same
/// address and port. Prints each answer's first line, or the error.
const SAME_PORT_TWICE: &str = r#"
import socket, struct, sys
src, dst, first, second = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
port = 0
for dport, path in ((first, "/v1/x"), (second, "/v1/x?via-outbound-listener")):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.settimeout(3)
    s.bind((src, port))
    port = s.getsockname()[1]
    try:
        s.connect((dst, dport))
        s.sendall(("GET %s HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n" % path).encode())
        data = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
        line = data.split(b"\r\n")[0].decode() or "closed"
    except OSError as e:
        line = "error " + type(e).__name__
    print("%d %s" % (dport, line), flush=True)
    s.close()
"#;

#[test]
fn a_peer_cannot_enter_through_the_outbound_listener() {
    let mut pod = Pod::new("o", 1);
    pod.sidecar(DENY_ALL);
    let src = format!("{}.3", pod.subnet());
    let out = Command::new("ip")
        .args(["netns", "exec", &pod.peer, "python3", "-c", SAME_PORT_TWICE])
        .args([&src, &pod.ip, "8080", "15001"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let app = std::fs::read_to_string(pod.dir.join("app.log")).unwrap_or_default();
    assert!(
        out.lines().next().is_some_and(|l| l.starts_with("8080 ")),
        "{out}"
    );
    assert!(
        !app.contains("via-outbound-listener"),
        "a peer reached the app through the outbound listener:\n{out}\napp log:\n{app}"
    );
    let second = out.lines().nth(1).unwrap_or("");
    assert!(
        second.contains("error") || second.ends_with("closed"),
        "the connection to the outbound listener was answered: {out}"
    );
    let look = pod.dp().counters_of("mb_sk_lookup").unwrap();
    assert_eq!(look.refused, 1, "counted as a drop by sk_lookup: {look:?}");

    // Inside the pod, a connection the datapath did not steer (loopback is never
    // steered) reaches the outbound listener itself: no original destination is
    // answered for it, so the proxy refuses it and counts it.
    let out = Command::new("ip")
        .args(["netns", "exec", &pod.pod, "curl", "-s", "--max-time", "3"])
        .args(["-w", "%{http_code}", "http://127.0.0.1:15001/v1/x"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "000");
    let refused = "membrane_capture_refused_total{listener=\"outbound\",reason=\"no_original_destination\"} 1";
    assert!(pod.metrics().contains(refused), "{}", pod.metrics());
    assert!(!std::fs::read_to_string(pod.dir.join("app.log"))
        .unwrap_or_default()
        .contains("via-outbound-listener"));
}

#[test]
fn inbound_capture_delivers_to_the_pod_address_and_never_to_the_sidecar() {
    let mut pod = Pod::new("i", 2);
    pod.sidecar(POLICY);
    let at = |port: u16, path: &str| format!("http://{}:{port}{path}", pod.ip);
    // The admin API and the sidecar's own listener: not reachable from another pod, even
    // one the policy lets reach every port.
    let (code, body) = pod.curl(".3", &[&at(15000, "/config_dump")]);
    assert_eq!(code, "000", "the admin API answered a peer: {body}");
    let (code, body) = pod.curl(".3", &[&at(15007, "/v1/x")]);
    assert_eq!(
        code, "000",
        "the sidecar's own listener answered a peer: {body}"
    );
    // An application port bound to localhost only stays the pod's own.
    let (code, body) = pod.curl(".3", &[&at(9090, "/v1/x")]);
    assert!(
        code != "200" && !body.contains("app-file"),
        "a localhost-only port answered a peer: {code} {body}"
    );
    // The application on 0.0.0.0 is reached through the sidecar, under the L7 policy.
    assert_eq!(
        pod.curl(".1", &[&at(8080, "/v1/x")]),
        ("200".to_owned(), "app-file\n".to_owned()),
        "{}",
        pod.logs()
    );
    let (code, body) = pod.curl(".1", &["-X", "PUT", &at(8080, "/v1/x")]);
    assert_eq!((code.as_str(), body.as_str()), ("403", "Access denied\r\n"));
    let (code, _) = pod.curl(".1", &[&at(8080, "/admin")]);
    assert_eq!(code, "403");
    assert!(pod.dp().counters_of("mb_sk_lookup").unwrap().redirected >= 3);

    // With L3/L4 enforcement on and no decision for the pod's own connects, the
    // sidecar's delivery to the pod's address is neither refused nor captured again.
    // Inbound connections are decided in the kernel too (sk_lookup): the pod's ingress
    // policy sends every port to the sidecar.
    let ip = pod.ip.parse().unwrap();
    let to_sidecar = PolicyRule {
        direction: Direction::Ingress,
        remote_identity: 0,
        proto: 6,
        ports: (1, 65535),
        verdict: MapVerdict::Redirect,
    };
    pod.dp().sync_policy(&[to_sidecar]).unwrap();
    pod.dp().set_settings(&settings(ip, true)).unwrap();
    assert_eq!(
        pod.curl(".1", &[&at(8080, "/v1/x")]),
        ("200".to_owned(), "app-file\n".to_owned())
    );
    let (code, _) = pod.curl(".3", &[&at(15000, "/config_dump")]);
    assert_eq!(code, "000");
    let refused = "membrane_capture_refused_total{listener=\"inbound\"";
    assert!(!pod.metrics().contains(refused), "{}", pod.metrics());
}
