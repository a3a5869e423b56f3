//! The in-process proxy's operator surface: admin, metrics and readiness endpoints in
//! Envoy's shapes, policy swaps, the static ipcache, capture listener names, refused
//! settings, and the operator listeners' connection caps.

use super::*;

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
    // Only k8s:org=empire may land; loopback is that peer via --peer, else it is
    // reserved:host, which allow-localhost lets in (the default) unless it is `policy`.
    use membrane_policy::AllowLocalhost;
    let backend = start_backend().await;
    let file = empire_policy("empire-only", backend.port(), " {http: [{method: GET}]}");
    let path = file.path().display().to_string();
    for (peer, setting, want) in [
        (None, AllowLocalhost::Auto, 200),
        (None, AllowLocalhost::Policy, 403),
        (
            Some("127.0.0.0/8=k8s:org=empire"),
            AllowLocalhost::Policy,
            200,
        ),
        (
            Some("127.0.0.1=k8s:org=alliance"),
            AllowLocalhost::Auto,
            403,
        ),
    ] {
        let mut extra = vec!["--policy", path.as_str()];
        if let Some(p) = peer {
            extra.extend(["--peer", p]);
        }
        let mut cfg = config(backend, &[]);
        cfg.policy = vec![file.path().to_path_buf()];
        cfg.peer = peer.map(|p| vec![p.to_owned()]).unwrap_or_default();
        cfg.allow_localhost = setting;
        let running =
            membrane_proxy::start(&cfg, membrane_proxy::policy::load(&cfg).unwrap(), None)
                .await
                .unwrap();
        let (code, _, _) = curl(&[&format!("http://{}/v1/x", running.addrs.listen)]).await;
        assert_eq!(code, want, "peer {peer:?}, allow-localhost {setting}");
        running.drain(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l4_only_ports_are_spliced_opaquely_after_one_verdict() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = tcp_echo().await;
    let file = empire_policy("l4-only", echo.port(), "");
    for (peer, allowed) in [
        ("127.0.0.1=k8s:org=empire", true),
        ("127.0.0.1=k8s:org=alliance", false),
    ] {
        let mut cfg = config(echo, &[]);
        cfg.policy = vec![file.path().to_path_buf()];
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
