//! Operator-facing behaviour: the admin/metrics/readiness endpoints, policy swaps, and the
//! real binary's access log, SIGTERM drain, SIGHUP reload and startup errors.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;

async fn get(url: &str) -> (u16, String) {
    let (code, _, body) = curl(&[url]).await;
    (code, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_have_envoy_shapes() {
    let p = start_proxy().await;
    let a = p.running.addrs;
    assert_eq!(curl(&[&p.url("/v1/x")]).await.0, 200);
    assert_eq!(
        curl(&["-X", "PUT", &p.url("/v1/exhaust-port")]).await.0,
        403
    );

    let (code, body) = get(&format!("http://{}/ready", a.admin)).await;
    assert_eq!((code, body.as_str()), (200, "LIVE\n"));

    let (code, body) = get(&format!("http://{}/config_dump", a.admin)).await;
    assert_eq!(code, 200);
    let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
    let configs = dump["configs"].as_array().unwrap();
    let types: Vec<&str> = configs
        .iter()
        .map(|c| c["@type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
            "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
            "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
            "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
        ]
    );
    let listener = &configs[1]["static_listeners"][0]["listener"];
    assert_eq!(
        listener["address"]["socket_address"]["port_value"],
        a.listen.port()
    );
    let policy = &listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]
        ["typed_config"]["value"];
    assert_eq!(policy["port"], p.backend.port());
    assert_eq!(policy["l7"], true);
    assert_eq!(
        policy["policies"][0],
        "CiliumNetworkPolicy default/proxy-test"
    );
    let cluster = &configs[2]["static_clusters"][0]["cluster"];
    assert_eq!(
        cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"]["port_value"],
        p.backend.port()
    );

    let (_, stats) = get(&format!("http://{}/stats", a.admin)).await;
    assert!(stats.contains("http.inbound.rbac.allowed: 1\n"), "{stats}");
    assert!(stats.contains("http.inbound.rbac.denied: 1\n"), "{stats}");
    let (_, stats) = get(&format!("http://{}/stats?format=json", a.admin)).await;
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert!(stats["stats"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == "http.inbound.rbac.denied" && s["value"] == 1));

    let (_, info) = get(&format!("http://{}/server_info", a.admin)).await;
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["state"], "LIVE");
    assert!(info["node"]["id"].as_str().unwrap().starts_with("sidecar~"));

    let (_, l) = get(&format!("http://{}/listeners", a.admin)).await;
    assert_eq!(l, format!("inbound::{}\n", a.listen));
    let (_, c) = get(&format!("http://{}/clusters", a.admin)).await;
    assert!(
        c.contains(&format!("::{}::health_flags::healthy", p.backend)),
        "{c}"
    );
    let (code, lg) = get(&format!("http://{}/logging", a.admin)).await;
    assert_eq!(code, 200);
    assert!(lg.starts_with("active loggers:"), "{lg}");
    // In-process tests install no log control: changing the level is refused, not faked.
    let (code, _, _) = curl(&[
        "-X",
        "POST",
        &format!("http://{}/logging?level=debug", a.admin),
    ])
    .await;
    assert_eq!(code, 501);

    let (code, prom) = get(&format!("http://{}/stats/prometheus", a.metrics)).await;
    assert_eq!(code, 200);
    assert!(
        prom.contains(r#"membrane_requests_total{verdict="Allowed",code="200"} 1"#),
        "{prom}"
    );
    assert!(
        prom.contains(r#"membrane_requests_total{verdict="Denied",code="403"} 1"#),
        "{prom}"
    );
    assert!(
        prom.contains("membrane_request_duration_seconds_count 2"),
        "{prom}"
    );
    assert!(
        prom.contains("membrane_downstream_connections_total 2"),
        "{prom}"
    );
    // Each listener serves only its own endpoints.
    assert_eq!(
        get(&format!("http://{}/config_dump", a.metrics)).await.0,
        404
    );
    assert_eq!(
        get(&format!("http://{}/healthz/ready", a.health)).await.0,
        200
    );
    assert_eq!(
        get(&format!("http://{}/config_dump", a.health)).await.0,
        404
    );

    // Draining flips readiness before connections close.
    let admin = a.admin;
    let health = a.health;
    let drain = tokio::spawn(p.running.drain(Duration::from_secs(1)));
    drain.await.unwrap();
    assert_ne!(get(&format!("http://{admin}/ready")).await.0, 200);
    assert_ne!(get(&format!("http://{health}/healthz/ready")).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_swap_applies_to_the_next_request_on_an_open_connection() {
    let p = start_proxy().await;
    let mut send = {
        let s = tokio::net::TcpStream::connect(p.addr()).await.unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
            .await
            .unwrap();
        tokio::spawn(conn);
        send
    };
    let req = || {
        http::Request::get("/v1/x")
            .header("host", "a")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    assert_eq!(send.send_request(req()).await.unwrap().status(), 200);
    // Same endpoint, a policy that allows only POST /v1/request-landing.
    let strict =
        std::env::temp_dir().join(format!("membrane-proxy-strict-{}.yaml", std::process::id()));
    std::fs::write(
        &strict,
        std::fs::read_to_string(policy_file(p.backend.port()))
            .unwrap()
            .replace("        - method: GET\n          path: /v1/.*\n", ""),
    )
    .unwrap();
    let mut cfg = config(p.backend, &[]);
    cfg.policy = vec![strict];
    p.running
        .policy
        .store(membrane_proxy::policy::load(&cfg).unwrap());
    let resp = send.send_request(req()).await.unwrap();
    assert_eq!(
        resp.status(),
        403,
        "the open connection must see the new policy"
    );
}

#[test]
fn invalid_policy_and_labels_are_refused_with_a_precise_message() {
    let bad = std::env::temp_dir().join(format!("membrane-proxy-bad-{}.yaml", std::process::id()));
    std::fs::write(
        &bad,
        std::fs::read_to_string(test_policy())
            .unwrap()
            .replace("PORT", "99999"),
    )
    .unwrap();
    let mut cfg = config("127.0.0.1:1".parse().unwrap(), &[]);
    cfg.policy = vec![bad.clone()];
    let err = membrane_proxy::policy::load(&cfg)
        .err()
        .expect("invalid policy refused")
        .to_string();
    assert!(err.contains(&bad.display().to_string()), "{err}");
    assert!(
        err.contains("CiliumNetworkPolicy default/proxy-test"),
        "{err}"
    );
    assert!(
        err.contains("spec.ingress[0].toPorts[0].ports[0].port"),
        "{err}"
    );

    let mut cfg = config("127.0.0.1:1".parse().unwrap(), &[]);
    cfg.peer = vec!["10.0.0.0/33=k8s:a=b".into()];
    let err = membrane_proxy::policy::load(&cfg)
        .err()
        .expect("bad peer refused")
        .to_string();
    assert!(err.contains("--peer"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_get_identities_from_the_static_ipcache() {
    // Only k8s:org=empire may land; loopback is that peer via --peer, else it is reserved:host.
    let backend = start_backend().await;
    let file =
        std::env::temp_dir().join(format!("membrane-proxy-peer-{}.yaml", std::process::id()));
    std::fs::write(
        &file,
        [
            "apiVersion: cilium.io/v2",
            "kind: CiliumNetworkPolicy",
            "metadata: {name: empire-only, namespace: default}",
            "spec:",
            "  endpointSelector: {matchLabels: {app: backend}}",
            "  ingress:",
            "  - fromEndpoints: [{matchLabels: {org: empire}}]",
            "    toPorts:",
            "    - ports: [{port: \"PORT\", protocol: TCP}]",
            "      rules: {http: [{method: GET}]}",
        ]
        .join("\n")
        .replace("PORT", &backend.port().to_string()),
    )
    .unwrap();
    let path = file.display().to_string();
    for (peer, want) in [
        (None, 403),
        (Some("127.0.0.0/8=k8s:org=empire"), 200),
        (Some("127.0.0.1=k8s:org=alliance"), 403),
    ] {
        let mut extra = vec!["--policy", path.as_str()];
        if let Some(p) = peer {
            extra.extend(["--peer", p]);
        }
        let mut cfg = config(backend, &[]);
        cfg.policy = vec![file.clone()];
        cfg.peer = peer.map(|p| vec![p.to_owned()]).unwrap_or_default();
        let running =
            membrane_proxy::start(&cfg, membrane_proxy::policy::load(&cfg).unwrap(), None)
                .await
                .unwrap();
        let (code, _, _) = curl(&[&format!("http://{}/v1/x", running.addrs.listen)]).await;
        assert_eq!(code, want, "peer {peer:?}");
        running.drain(Duration::from_millis(100)).await;
    }
}

/// The real binary, with its stdout (access log) and stderr (diagnostics) captured.
struct Binary {
    child: Child,
    stdout: std::sync::mpsc::Receiver<String>,
    listen: String,
    admin: String,
}

/// A test that fails half way must not leave the proxy running.
impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_binary(policy: &std::path::Path, backend: std::net::SocketAddr, extra: &[&str]) -> Binary {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_membrane-proxy"))
        .arg("standalone")
        .args(LOOPBACK_LISTENERS)
        .args([
            "--upstream",
            &backend.to_string(),
            "--endpoint-labels",
            "k8s:app=backend",
        ])
        .arg("--policy")
        .arg(policy)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("membrane-proxy starts");
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if line.contains("membrane-proxy started") {
                let _ = addr_tx.send(line.clone());
            }
            eprintln!("proxy: {line}");
        }
    });
    let stdout = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let started: serde_json::Value = serde_json::from_str(
        &addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("startup log line"),
    )
    .unwrap();
    Binary {
        child,
        stdout: rx,
        listen: started["listen"].as_str().unwrap().to_owned(),
        admin: started["admin"].as_str().unwrap().to_owned(),
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args(["-s", sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_logs_json_access_entries_and_drains_on_sigterm() {
    let backend = start_backend().await;
    let mut b = spawn_binary(&policy_file(backend.port()), backend, &[]);
    assert_eq!(curl(&[&format!("http://{}/v1/x", b.listen)]).await.0, 200);
    assert_eq!(
        curl(&["-X", "PUT", &format!("http://{}/v1/exhaust-port", b.listen)])
            .await
            .0,
        403
    );
    let entries: Vec<serde_json::Value> = (0..3)
        .map(|_| {
            serde_json::from_str(&b.stdout.recv_timeout(Duration::from_secs(5)).unwrap()).unwrap()
        })
        .collect();
    assert_eq!(entries[0]["type"], "Request");
    assert_eq!(entries[1]["type"], "Response");
    assert_eq!(entries[1]["status"], 200);
    assert_eq!(entries[1]["method"], "GET");
    assert_eq!(entries[1]["path"], "/v1/x");
    assert_eq!(entries[1]["src_identity"], 1, "loopback is reserved:host");
    assert!(
        entries[1]["dst_identity"].as_u64().unwrap() >= 256,
        "endpoint identity: {}",
        entries[1]
    );
    assert_eq!(entries[1]["dst"], backend.to_string());
    assert!(
        entries[1]["decided_by"]
            .as_str()
            .unwrap()
            .contains("default/proxy-test"),
        "{}",
        entries[1]
    );
    assert_eq!(entries[2]["type"], "Denied");
    assert_eq!(entries[2]["status"], 403);
    assert_eq!(entries[2]["path"], "/v1/exhaust-port");

    // A request in flight when SIGTERM arrives still completes; then the process exits 0.
    let url = format!("http://{}/v1/slow", b.listen);
    let slow = tokio::spawn(async move { curl(&["-H", "x-delay-ms: 700", &url]).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    signal(&b.child, "TERM");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        get(&format!("http://{}/ready", b.admin)).await.0,
        0,
        "admin closes while draining"
    );
    assert_eq!(slow.await.unwrap().0, 200, "in-flight request completed");
    let status =
        tokio::task::spawn_blocking(move || wait_exit(&mut b.child, Duration::from_secs(5)))
            .await
            .unwrap();
    assert!(status.expect("exited after drain").success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_reloads_policy_on_sighup_and_keeps_the_last_good_one() {
    let backend = start_backend().await;
    let file = policy_file(backend.port());
    let good = std::fs::read_to_string(&file).unwrap();
    let mut b = spawn_binary(&file, backend, &["--access-log", "false"]);
    let url = format!("http://{}/v1/x", b.listen);
    assert_eq!(curl(&[&url]).await.0, 200);

    std::fs::write(&file, "kind: CiliumNetworkPolicy\napiVersion: cilium.io/v2\nmetadata: {name: x}\nspec: {bogus: 1}\n").unwrap();
    signal(&b.child, "HUP");
    let admin = b.admin.clone();
    let mut rejected = false;
    for _ in 0..100 {
        let (_, stats) = get(&format!("http://{admin}/stats")).await;
        if stats.contains("membrane.policy_reload_failures: 1") {
            rejected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(rejected, "the invalid policy was not reported as rejected");
    assert_eq!(
        curl(&[&url]).await.0,
        200,
        "last good policy stays in force"
    );

    std::fs::write(
        &file,
        good.replace("        - method: GET\n          path: /v1/.*\n", ""),
    )
    .unwrap();
    signal(&b.child, "HUP");
    let mut denied = false;
    for _ in 0..100 {
        if curl(&[&url]).await.0 == 403 {
            denied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(denied, "the new policy never took effect");
    signal(&b.child, "TERM");
    let status =
        tokio::task::spawn_blocking(move || wait_exit(&mut b.child, Duration::from_secs(5)))
            .await
            .unwrap();
    assert!(status.expect("exited").success());
}

#[test]
fn binary_refuses_an_invalid_policy_at_startup() {
    let bad = std::env::temp_dir().join(format!(
        "membrane-proxy-bad-start-{}.yaml",
        std::process::id()
    ));
    std::fs::write(
        &bad,
        std::fs::read_to_string(test_policy())
            .unwrap()
            .replace("PORT", "99999"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_membrane-proxy"))
        .arg("standalone")
        .args(LOOPBACK_LISTENERS)
        .args([
            "--upstream",
            "127.0.0.1:1",
            "--endpoint-labels",
            "k8s:app=backend",
        ])
        .arg("--policy")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spec.ingress[0].toPorts[0].ports[0].port"),
        "{err}"
    );
}

async fn tcp_echo() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l4_only_ports_are_spliced_opaquely_after_one_verdict() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = tcp_echo().await;
    let file = std::env::temp_dir().join(format!("membrane-proxy-l4-{}.yaml", std::process::id()));
    std::fs::write(
        &file,
        [
            "apiVersion: cilium.io/v2",
            "kind: CiliumNetworkPolicy",
            "metadata: {name: l4-only, namespace: default}",
            "spec:",
            "  endpointSelector: {matchLabels: {app: backend}}",
            "  ingress:",
            "  - fromEndpoints: [{matchLabels: {org: empire}}]",
            "    toPorts:",
            "    - ports: [{port: \"PORT\", protocol: TCP}]",
        ]
        .join("\n")
        .replace("PORT", &echo.port().to_string()),
    )
    .unwrap();
    for (peer, allowed) in [
        ("127.0.0.1=k8s:org=empire", true),
        ("127.0.0.1=k8s:org=alliance", false),
    ] {
        let mut cfg = config(echo, &[]);
        cfg.policy = vec![file.clone()];
        cfg.peer = vec![peer.to_owned()];
        let running =
            membrane_proxy::start(&cfg, membrane_proxy::policy::load(&cfg).unwrap(), None)
                .await
                .unwrap();
        let mut s = tokio::net::TcpStream::connect(running.addrs.listen)
            .await
            .unwrap();
        // Not HTTP at all: an L4 port must not parse it.
        let _ = s.write_all(b"\x00\x01 not http \r\n\r\n").await;
        let mut buf = [0u8; 16];
        let got = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
            .await
            .unwrap();
        if allowed {
            assert_eq!(&buf[..got.unwrap()], b"\x00\x01 not http \r\n\r\n");
        } else {
            assert!(
                matches!(got, Ok(0) | Err(_)),
                "denied peer got data: {got:?}"
            );
        }
        running.drain(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_with_several_workers_serves_concurrent_clients() {
    let backend = start_backend().await;
    let mut b = spawn_binary(
        &policy_file(backend.port()),
        backend,
        &["--concurrency", "2", "--access-log", "false"],
    );
    let out = tokio::process::Command::new("h2load")
        .args([
            "-n",
            "400",
            "-c",
            "8",
            "-m",
            "4",
            &format!("http://{}/v1/x", b.listen),
        ])
        .output()
        .await
        .expect("h2load runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("400 succeeded, 0 failed"), "{text}");
    let (_, info) = get(&format!("http://{}/server_info", b.admin)).await;
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["command_line_options"]["concurrency"], 2);
    signal(&b.child, "TERM");
    let status =
        tokio::task::spawn_blocking(move || wait_exit(&mut b.child, Duration::from_secs(5)))
            .await
            .unwrap();
    assert!(status.expect("exited").success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_listeners_appear_under_istio_names() {
    let p = start_proxy_with(&[
        "--capture-inbound",
        "127.0.0.1:0",
        "--capture-outbound",
        "127.0.0.1:0",
    ])
    .await;
    let a = p.running.addrs;
    let (cin, cout) = (a.capture_inbound.unwrap(), a.capture_outbound.unwrap());
    let (_, l) = get(&format!("http://{}/listeners", a.admin)).await;
    assert_eq!(
        l,
        format!(
            "inbound::{}\nvirtualInbound::{cin}\nvirtualOutbound::{cout}\n",
            a.listen
        )
    );
    let (_, dump) = get(&format!("http://{}/config_dump", a.admin)).await;
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let ls = dump["configs"][1]["static_listeners"].as_array().unwrap();
    assert_eq!(ls.len(), 3);
    assert_eq!(ls[2]["listener"]["name"], "virtualOutbound");
    assert_eq!(ls[2]["listener"]["use_original_dst"], true);
    assert_eq!(
        ls[2]["listener"]["address"]["socket_address"]["port_value"],
        cout.port()
    );
    // A direct (not redirected) connection to a capture port is closed, not forwarded.
    let (code, _, _) = curl(&[&format!("http://{cin}/v1/x")]).await;
    assert_eq!(code, 0);
}

/// Voluntary context switches (sleeps) and CPU ticks of every thread of a process.
fn sleeps_and_ticks(pid: u32) -> (u64, u64) {
    let mut sleeps = 0;
    let mut ticks = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        sleeps += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .map_or(0, |v| v.trim().parse::<u64>().unwrap());
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // utime and stime are fields 14 and 15; the name (field 2) ends with ')'.
        let after_name = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
        let f: Vec<&str> = after_name.split_whitespace().collect();
        if f.len() > 12 {
            ticks += f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        }
    }
    (sleeps, ticks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_busy_polls_while_traffic_is_dense_and_sleeps_when_idle() {
    let backend = start_backend().await;
    // A budget far above a loopback round trip, so the loop never has to sleep between
    // the requests of one keep-alive client, even on a loaded machine.
    let b = spawn_binary(
        &policy_file(backend.port()),
        backend,
        &["--access-log", "false", "--busy-poll", "20ms"],
    );
    let pid = b.child.id();
    let url = format!("http://{}/v1/x", b.listen);
    assert_eq!(curl(&[&url]).await.0, 200);

    // 400 requests back to back on one connection.
    let urls: Vec<&str> = std::iter::repeat_n(url.as_str(), 400).collect();
    let (s0, _) = sleeps_and_ticks(pid);
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}\n"])
        .args(&urls)
        .output()
        .await
        .unwrap();
    let (s1, _) = sleeps_and_ticks(pid);
    let codes = String::from_utf8_lossy(&out.stdout);
    assert_eq!(codes.lines().filter(|c| *c == "200").count(), 400);
    // Without busy polling the loop sleeps twice per request (waiting for the request,
    // then for the upstream's answer): about 800 sleeps.
    assert!(
        s1 - s0 < 200,
        "{} sleeps for 400 back-to-back requests: the event loop did not busy-poll",
        s1 - s0
    );

    // Idle: one budget is spun after the traffic stops, then the loop sleeps.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, t0) = sleeps_and_ticks(pid);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, t1) = sleeps_and_ticks(pid);
    let ticks_per_sec = procfs_ticks_per_second();
    assert!(
        (t1 - t0) * 10 < ticks_per_sec,
        "an idle proxy used {} of {ticks_per_sec} CPU ticks in one second: it kept spinning",
        t1 - t0
    );
}

/// Clock ticks per second (`getconf CLK_TCK`).
fn procfs_ticks_per_second() -> u64 {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_and_absurd_settings_are_refused_at_start_naming_the_flag() {
    let backend = start_backend().await;
    for (flag, value) in [
        ("--idle-timeout", "0s"),
        ("--header-read-timeout", "0s"),
        ("--connect-timeout", "0s"),
        ("--stream-idle-timeout", "0s"),
        ("--secrets-poll-interval", "0s"),
        ("--idle-timeout", "1000000000m"),
        ("--max-connections", "0"),
        ("--max-headers", "0"),
        ("--max-header-bytes", "0"),
        ("--max-concurrent-streams", "0"),
        ("--concurrency", "0"),
        ("--admin-max-connections", "0"),
        ("--admin-header-read-timeout", "0s"),
        ("--admin-connection-timeout", "0s"),
    ] {
        let cfg = config(backend, &[flag, value]);
        let r =
            membrane_proxy::start(&cfg, membrane_proxy::policy::load(&cfg).unwrap(), None).await;
        let err = r
            .err()
            .unwrap_or_else(|| panic!("{flag} {value} was accepted"));
        assert!(err.to_string().contains(flag), "{flag} {value}: {err}");
    }
}

#[test]
fn binary_refuses_a_zero_idle_timeout_naming_the_flag() {
    use std::io::Read;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_membrane-proxy"))
        .args([
            "standalone",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "127.0.0.1:1",
        ])
        .args([
            "--endpoint-labels",
            "k8s:app=backend",
            "--admin",
            "127.0.0.1:0",
        ])
        .args(["--metrics", "127.0.0.1:0", "--health", "127.0.0.1:0"])
        .args(["--idle-timeout", "0s", "--policy"])
        .arg(test_policy())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded: a proxy that accepts the setting runs until killed.
    let status = wait_exit(&mut child, Duration::from_secs(10));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    assert!(
        status.is_some_and(|s| !s.success()),
        "started with --idle-timeout 0s: {err}"
    );
    assert!(err.contains("--idle-timeout"), "{err}");
}

/// Connects and sends `bytes`; true if the listener closed the connection within `d`.
async fn cut_within(addr: std::net::SocketAddr, bytes: &[u8], d: Duration) -> bool {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    closed_within(&mut s, d).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_listeners_cap_connections_and_cut_slow_clients() {
    use tokio::io::AsyncWriteExt;
    let p = start_proxy_with(&[
        "--admin-max-connections",
        "2",
        "--admin-header-read-timeout",
        "300ms",
        "--admin-connection-timeout",
        "1s",
    ])
    .await;
    let a = p.running.addrs;
    for addr in [a.admin, a.metrics, a.health] {
        // A head that never ends, and a body that never ends: both cut off.
        assert!(
            cut_within(
                addr,
                b"GET /ready HTTP/1.1\r\nHost: x\r\nX-Slow: ",
                Duration::from_secs(3)
            )
            .await,
            "{addr}: slow head kept"
        );
        assert!(
            cut_within(
                addr,
                b"POST /logging HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nabc",
                Duration::from_secs(4)
            )
            .await,
            "{addr}: slow body kept"
        );
        // Two slots: a third concurrent connection is closed at once.
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
            held.push(s);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            cut_within(
                addr,
                b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n",
                Duration::from_millis(250)
            )
            .await,
            "{addr}: a third connection was kept beyond the cap"
        );
        drop(held);
        // Once the slots are free, the listener serves again.
        let mut ok = false;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let path = if addr == a.metrics {
                "/stats/prometheus"
            } else {
                "/healthz/ready"
            };
            if curl(&[&format!("http://{addr}{path}")]).await.0 == 200 {
                ok = true;
                break;
            }
        }
        assert!(ok, "{addr}: not serving after the slow clients left");
    }
}
