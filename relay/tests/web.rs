//! The relay's web page over a real socket on loopback: its files, its two JSON APIs fed
//! from a broadcast channel as the relay's merged stream feeds them, and a clear 400 for
//! every bad query parameter.

use std::net::SocketAddr;
use std::time::Duration;

use membrane_api::monitor::{Event, L7, TYPE_L7};
use membrane_relay::web::{Limits, Web};
use membrane_test_support::eventually;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::broadcast;

/// (status, content type, body) of `GET path` on `addr`.
async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let kind = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, kind, body.to_owned())
}

async fn json(addr: SocketAddr, path: &str) -> (u16, Value) {
    let (status, kind, body) = get(addr, path).await;
    assert_eq!(kind, "application/json", "{path}: {body}");
    (status, serde_json::from_str(&body).unwrap())
}

async fn page() -> (SocketAddr, broadcast::Sender<Event>) {
    let web = Web::bind("127.0.0.1:0".parse().unwrap(), Limits::default())
        .await
        .unwrap();
    let addr = web.local_addr();
    let (tx, rx) = broadcast::channel(64);
    tokio::spawn(web.run(rx));
    (addr, tx)
}

fn flow(kind: &str, verdict: &str, src: &str, dst: &str) -> Event {
    Event {
        node: "node-2".to_owned(),
        time: "2026-12-07T17:00:00.000000001Z".to_owned(),
        kind: kind.to_owned(),
        program: "to-container".to_owned(),
        reason: "policy-denied".to_owned(),
        verdict: Some(verdict.to_owned()),
        src_pod: Some(format!("default/{src}")),
        dst_pod: Some(format!("default/{dst}")),
        src: Some("10.200.0.3:40000".to_owned()),
        dst: Some("10.201.0.11:80".to_owned()),
        count: 1,
        ..Event::default()
    }
}

#[tokio::test]
async fn the_page_and_its_files_are_served_from_the_binary() {
    let (addr, _tx) = page().await;
    let (status, kind, body) = get(addr, "/").await;
    assert_eq!((status, kind.as_str()), (200, "text/html; charset=utf-8"));
    assert!(body.contains(r#"<script src="/app.js""#), "{body}");
    let (status, kind, body) = get(addr, "/app.js").await;
    assert_eq!(
        (status, kind.as_str()),
        (200, "text/javascript; charset=utf-8")
    );
    assert!(body.contains("/api/map"));
    let (status, kind, _) = get(addr, "/style.css").await;
    assert_eq!((status, kind.as_str()), (200, "text/css; charset=utf-8"));
    let (status, v) = json(addr, "/nowhere").await;
    assert_eq!(status, 404);
    assert_eq!(v["error"], "no such page: /nowhere");
}

#[tokio::test]
async fn the_feed_becomes_a_map_and_a_filtered_table() {
    let (addr, tx) = page().await;
    tx.send(flow("drop", "denied", "xwing", "deathstar-2"))
        .unwrap();
    tx.send(flow(
        "policy-verdict",
        "allowed",
        "tiefighter",
        "deathstar-1",
    ))
    .unwrap();
    let mut put = flow(TYPE_L7, "denied", "tiefighter", "deathstar-1");
    put.l7 = Some(L7 {
        direction: "ingress".to_owned(),
        method: "PUT".to_owned(),
        path: "/v1/exhaust-port".to_owned(),
        status: 403,
        ..L7::default()
    });
    tx.send(put).unwrap();

    let map = eventually(Duration::from_secs(10), "the map's three flows", || async {
        let (_, m) = json(addr, "/api/map").await;
        (m["events"] == 3).then_some(m)
    })
    .await;
    let edges = map["edges"].as_array().unwrap();
    let edge = |src: &str| {
        edges
            .iter()
            .find(|e| e["src"]["label"] == src && e["dst"]["label"] == "deathstar")
            .unwrap_or_else(|| panic!("no {src} -> deathstar edge in {map}"))
    };
    assert_eq!(
        (
            edge("xwing")["allowed"].as_u64(),
            edge("xwing")["denied"].as_u64()
        ),
        (Some(0), Some(1))
    );
    let t = edge("tiefighter");
    assert_eq!(
        (t["allowed"].as_u64(), t["denied_l7"].as_u64()),
        (Some(1), Some(1))
    );
    let nodes: Vec<&str> = map["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        nodes,
        ["default/deathstar", "default/tiefighter", "default/xwing"]
    );

    let (status, all) = json(addr, "/api/flows").await;
    assert_eq!((status, all["matched"].as_u64()), (200, Some(3)));
    assert_eq!(all["flows"][0]["type"], "l7", "newest first: {all}");
    let (_, denied) = json(addr, "/api/flows?verdict=denied&pod=xwing&port=80").await;
    assert_eq!(denied["matched"], 1, "{denied}");
    assert_eq!(denied["flows"][0]["src_pod"], "default/xwing");
    let (_, put) = json(addr, "/api/flows?method=PUT&path=%2Fv1%2Fexhaust").await;
    assert_eq!(put["matched"], 1, "{put}");
    let (_, none) = json(addr, "/api/flows?namespace=kube-system").await;
    assert_eq!(none["matched"], 0);
    let (_, one) = json(addr, "/api/flows?limit=1").await;
    assert_eq!(
        (
            one["flows"].as_array().unwrap().len(),
            one["matched"].as_u64()
        ),
        (1, Some(3))
    );
}

#[tokio::test]
async fn a_bad_query_is_a_400_that_names_it() {
    let (addr, _tx) = page().await;
    for (path, want) in [
        (
            "/api/flows?port=http",
            "query parameter port=\"http\": a port number (1-65535)",
        ),
        (
            "/api/flows?verdict=dropped",
            "verdict=\"dropped\": allowed or denied",
        ),
        (
            "/api/flows?colour=red",
            "unknown query parameter \"colour\"",
        ),
        (
            "/api/flows?limit=5000",
            "limit=\"5000\": a number of flows from 1 to 1000",
        ),
        (
            "/api/flows?limit=1&limit=2",
            "\"limit\" given more than once",
        ),
        ("/api/flows?path=%28", "http path filter \"(\""),
        (
            "/api/flows?pod=%ZZ",
            "pod=\"%ZZ\": a pod name, or namespace/name",
        ),
        (
            "/api/map?pod=xwing",
            "unknown query parameter \"pod\" (the map takes none)",
        ),
    ] {
        let (status, v) = json(addr, path).await;
        assert_eq!(status, 400, "{path}: {v}");
        let e = v["error"].as_str().unwrap();
        assert!(e.contains(want), "{path}: {e}");
    }
    // The page keeps serving after refusals.
    let (status, _) = json(addr, "/api/flows?verdict=denied").await;
    assert_eq!(status, 200);
}
