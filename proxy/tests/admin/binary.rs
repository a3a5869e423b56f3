//! The real `membrane-proxy` binary: JSON access log, SIGTERM drain, SIGHUP reload keeping
//! the last good policy, startup errors, several workers, busy polling.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_logs_json_access_entries_and_drains_on_sigterm() {
    let backend = start_backend().await;
    let b = spawn_binary(&policy_file(backend.port()), backend, &[]);
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
    let stats = format!("http://{}/stats", b.admin);
    let mut in_flight = false;
    for _ in 0..250 {
        if get(&stats)
            .await
            .1
            .contains("http.inbound.downstream_rq_active: 1")
        {
            in_flight = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(in_flight, "the slow request never arrived");
    signal(&b.child, "TERM");
    let ready = format!("http://{}/ready", b.admin);
    let mut closed = false;
    for _ in 0..250 {
        if get(&ready).await.0 == 0 {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(closed, "admin closes while draining");
    assert_eq!(slow.await.unwrap().0, 200, "in-flight request completed");
    let status = exited(b, Duration::from_secs(5)).await;
    assert!(status.expect("exited after drain").success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_reloads_policy_on_sighup_and_keeps_the_last_good_one() {
    let backend = start_backend().await;
    let file = policy_file(backend.port());
    let good = std::fs::read_to_string(&file).unwrap();
    let b = spawn_binary(&file, backend, &["--access-log", "false"]);
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
    terminate(b, Duration::from_secs(5)).await;
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
    let out = standalone(&bad, &[]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spec.ingress[0].toPorts[0].ports[0].port"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_with_several_workers_serves_concurrent_clients() {
    let backend = start_backend().await;
    let b = spawn_binary(
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
    terminate(b, Duration::from_secs(5)).await;
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

#[test]
fn binary_refuses_a_zero_idle_timeout_naming_the_flag() {
    use std::io::Read;
    let mut child = standalone(&test_policy(), &["--idle-timeout", "0s"])
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
