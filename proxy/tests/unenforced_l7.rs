//! Standalone mode with a policy whose only rule for a port carries Kafka rules, which
//! membrane does not enforce: the port is denied to that peer by default (the rule named,
//! the reason given), and allowed at L4 only with `--unenforced-l7 l4-only`. Real
//! sockets: a TCP echo upstream behind the proxy on loopback.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::*;
use membrane_proxy::policy::{Decision, Direction};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends a Kafka-looking frame through the proxy; `Some(echo)` if the upstream answered.
async fn exchange(listen: std::net::SocketAddr) -> Option<Vec<u8>> {
    let mut s = tokio::net::TcpStream::connect(listen).await.unwrap();
    let frame = b"\x00\x00\x00\x0c\x00\x00\x00\x07produce!";
    let _ = s.write_all(frame).await;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .expect("the proxy answers or closes within 3s")
    {
        Ok(0) | Err(_) => None,
        Ok(n) => Some(buf[..n].to_vec()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_rules_fail_closed_unless_l4_only_is_set() {
    let echo = tcp_echo().await;
    let file = empire_policy(
        "kafka",
        echo.port(),
        "\n        kafka: [{role: produce, topic: deathstar-plans}]",
    );
    let loopback: IpAddr = "127.0.0.1".parse().unwrap();
    for (extra, allowed) in [
        (&[][..], false),
        (&["--unenforced-l7", "l4-only"][..], true),
    ] {
        let mut cfg = config(echo, extra);
        cfg.policy = vec![file.path().to_path_buf()];
        cfg.peer = vec!["127.0.0.1=k8s:org=empire".to_owned()];
        let enforcer = membrane_proxy::policy::load(&cfg).unwrap();
        let verdict = enforcer
            .check_l4(loopback, Direction::Ingress, echo.port())
            .expect("a port without HTTP rules gets a connection verdict")
            .decision;
        match (&verdict, allowed) {
            (Decision::Deny { decided_by }, false) => assert!(
                decided_by.contains("default/kafka spec.ingress[0]")
                    && decided_by
                        .contains("kafka rules are not enforced by membrane: denied (fail closed"),
                "{decided_by}"
            ),
            (Decision::Allow { decided_by, .. }, true) => assert!(
                decided_by.contains("default/kafka spec.ingress[0]")
                    && decided_by.contains("l4-only"),
                "{decided_by}"
            ),
            other => panic!("{extra:?}: {other:?}"),
        }
        let running = membrane_proxy::start(&cfg, enforcer, None).await.unwrap();
        let got = exchange(running.addrs.listen).await;
        if allowed {
            assert!(got.is_some(), "l4-only: the upstream must answer");
        } else {
            assert_eq!(got, None, "fail closed: the upstream answered");
        }
        running.drain(Duration::from_millis(100)).await;
    }
}
