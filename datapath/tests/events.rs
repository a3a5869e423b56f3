//! Privileged: monitor events from the ring buffer, and Istio's capture
//! exclusions. A refused connect is reported as a denied policy verdict; an
//! allowed, captured one as an allowed verdict plus a capture record with
//! the original destination; inbound capture is reported with the peer and
//! honours the inbound port lists; outbound include ranges limit capture.

mod common;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use common::Env;
use membrane_datapath::policy_map::{Direction, MapVerdict};
use membrane_datapath::{events::Event, Capture, DatapathSettings, InboundPorts};

const POD: u32 = 4242;
const SERVER: u32 = 5151;

/// Read events until `done` holds for what was read (5 s cap).
fn collect(
    reader: &mut membrane_datapath::events::EventReader,
    done: impl Fn(&[Event]) -> bool,
) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut all = Vec::new();
    while !done(&all) {
        assert!(
            Instant::now() < deadline,
            "expected events did not arrive; got {all:#?}"
        );
        reader.wait(Duration::from_millis(100)).unwrap();
        all.extend(reader.drain("node-a", 1024).unwrap());
    }
    all
}

fn verdict_for<'a>(evs: &'a [Event], dst: &str) -> Option<&'a Event> {
    evs.iter()
        .find(|e| e.kind == "policy-verdict" && e.dst.as_deref() == Some(dst))
}

fn capture_for<'a>(evs: &'a [Event], dst: &str) -> Option<&'a Event> {
    evs.iter()
        .find(|e| e.kind == "capture" && e.dst.as_deref() == Some(dst))
}

#[test]
fn verdicts_and_outbound_capture_are_reported() {
    let mut env = Env::new();
    env.add_pod_iface(&["10.77.0.1/24"]);
    env.server(&["hello", "--listen", "10.77.0.1:8080"]);
    env.server(&["hello", "--listen", "10.77.0.1:8081"]);
    let settings = DatapathSettings {
        capture: Some(Capture {
            proxy_uid: None,
            ..Capture::default()
        }),
        policy_enforce: true,
        policy_revision: 3,
        pod_identity: POD,
        ..DatapathSettings::default()
    };
    let dp = env.attach(&settings);
    dp.sync_ipcache(&[("10.77.0.1/32".parse().unwrap(), SERVER)])
        .unwrap();
    dp.sync_policy(&[
        common::tcp(Direction::Egress, SERVER, 8080, 8080, MapVerdict::Allow),
        common::tcp(Direction::Egress, SERVER, 8081, 8081, MapVerdict::Deny),
    ])
    .unwrap();
    let mut reader = dp.events().unwrap();
    env.server(&["capture-proxy", "--listen", "[::]:15001", "--mark", "1337"]);

    // Denied: EPERM, and a denied verdict naming identities, port, revision.
    let out = env.client(&["probe", "--connect", "10.77.0.1:8081"]);
    assert_eq!(out, "connect error kind=PermissionDenied errno=1\n");
    let evs = collect(&mut reader, |e| verdict_for(e, "10.77.0.1:8081").is_some());
    let v = verdict_for(&evs, "10.77.0.1:8081").unwrap();
    assert_eq!(v.verdict.as_deref(), Some("denied"), "{v:?}");
    assert_eq!(v.reason, "policy-denied");
    assert_eq!(
        (v.src_identity, v.dst_identity, v.revision),
        (POD, SERVER, 3)
    );
    assert_eq!(v.program, "connect4");
    assert_eq!(v.node, "node-a");
    assert!(v.is_drop());
    assert!(
        capture_for(&evs, "10.77.0.1:8081").is_none(),
        "refused, not captured"
    );

    // Allowed and captured: the verdict, then the capture to the proxy.
    let out = env.client(&["fetch", "--connect", "10.77.0.1:8080"]);
    assert!(out.starts_with("proxy orig=10.77.0.1:8080\n"), "{out}");
    let evs = collect(&mut reader, |e| capture_for(e, "10.77.0.1:8080").is_some());
    let v = verdict_for(&evs, "10.77.0.1:8080").unwrap();
    assert_eq!(v.verdict.as_deref(), Some("allowed"), "{v:?}");
    let c = capture_for(&evs, "10.77.0.1:8080").unwrap();
    assert_eq!(c.reason, "outbound");
    assert_eq!(c.to.as_deref(), Some("127.0.0.1:15001"), "{c:?}");
    assert_eq!((c.src_identity, c.dst_identity), (POD, SERVER));
    assert_eq!(
        c.cookie, v.cookie,
        "one socket: verdict and capture share the cookie"
    );
    assert!(!c.time.is_empty());

    // No decision at this revision: denied, said so.
    let out = env.client(&["probe", "--connect", "10.77.0.1:9999"]);
    assert_eq!(out, "connect error kind=PermissionDenied errno=1\n");
    let evs = collect(&mut reader, |e| verdict_for(e, "10.77.0.1:9999").is_some());
    assert_eq!(
        verdict_for(&evs, "10.77.0.1:9999").unwrap().reason,
        "no-decision"
    );
}

#[test]
fn splice_decisions_are_traced() {
    let mut env = Env::new();
    let dp = env.attach(&DatapathSettings::default());
    let mut reader = dp.events().unwrap();
    env.server(&["echo", "--listen", "127.0.0.1:9101"]);
    let out = env.client(&["client", "--connect", "127.0.0.1:9101"]);
    assert!(out.contains("OK round=0"), "{out}");
    let spliced = |e: &[Event]| {
        e.iter()
            .filter(|e| e.kind == "trace" && e.reason == "spliced")
            .count()
    };
    let evs = collect(&mut reader, |e| spliced(e) >= 2);
    assert!(
        evs.iter().any(|e| e.reason == "spliced"
            && e.dst.as_deref() == Some("127.0.0.1:9101")
            && e.program == "sockops"),
        "{evs:#?}"
    );
}

#[test]
fn outbound_include_ranges_limit_capture() {
    let mut env = Env::new();
    env.add_pod_iface(&["10.77.0.1/24", "10.78.0.1/24"]);
    env.server(&["hello", "--listen", "10.77.0.1:8080"]);
    env.server(&["hello", "--listen", "10.78.0.1:8080"]);
    let settings = DatapathSettings {
        capture: Some(Capture {
            proxy_uid: None,
            include_cidrs: Some(vec!["10.77.0.0/24".parse().unwrap()]),
            ..Capture::default()
        }),
        inbound_port: 15006,
        ..DatapathSettings::default()
    };
    let dp = env.attach(&settings);
    env.server(&["capture-proxy", "--listen", "[::]:15001", "--mark", "1337"]);
    let fetch = |a: &str| env.client(&["fetch", "--connect", a]);
    assert!(fetch("10.77.0.1:8080").starts_with("proxy orig=10.77.0.1:8080\n"));
    assert_eq!(fetch("10.78.0.1:8080"), "hello from 10.78.0.1:8080\n");
    assert_eq!(dp.settings().unwrap(), settings, "read back as written");
}

#[test]
fn inbound_port_lists_choose_what_reaches_the_proxy() {
    let mut env = Env::new();
    env.add_pod_iface(&["10.77.0.1/24", "10.77.0.2/24"]);
    env.server(&["hello", "--listen", "10.77.0.1:8080"]);
    env.server(&["hello", "--listen", "10.77.0.1:8081"]);
    let mut settings = DatapathSettings {
        capture_inbound: true,
        inbound_ports: InboundPorts::AllExcept(vec![8081, 15020, 15021, 15090]),
        ..DatapathSettings::default()
    };
    let dp = env.attach(&settings);
    dp.attach_netns(&PathBuf::from("/run/netns").join(&env.netns))
        .unwrap();
    let mut reader = dp.events().unwrap();
    env.server(&["capture-proxy", "--listen", "[::]:15006", "--mark", "1337"]);
    let from_outside =
        |to: &str| env.client_outside_cgroup(&["fetch", "--connect", to, "--bind", "10.77.0.2"]);

    assert_eq!(
        from_outside("10.77.0.1:8080"),
        "proxy orig=10.77.0.1:8080\nhello from 10.77.0.1:8080\n"
    );
    assert_eq!(
        from_outside("10.77.0.1:8081"),
        "hello from 10.77.0.1:8081\n",
        "excluded inbound port reaches the app directly"
    );
    let evs = collect(&mut reader, |e| capture_for(e, "10.77.0.1:8080").is_some());
    let c = capture_for(&evs, "10.77.0.1:8080").unwrap();
    assert_eq!(c.reason, "inbound");
    assert_eq!(c.program, "sk_lookup");
    assert!(
        c.src
            .as_deref()
            .is_some_and(|s| s.starts_with("10.77.0.2:")),
        "{c:?}"
    );
    assert_eq!(c.to.as_deref(), Some("10.77.0.1:15006"));
    assert!(capture_for(&evs, "10.77.0.1:8081").is_none());

    // includeInboundPorts as a list: only 8081 now.
    settings.inbound_ports = InboundPorts::Only(vec![8081]);
    dp.set_settings(&settings).unwrap();
    assert_eq!(
        from_outside("10.77.0.1:8080"),
        "hello from 10.77.0.1:8080\n"
    );
    assert_eq!(
        from_outside("10.77.0.1:8081"),
        "proxy orig=10.77.0.1:8081\nhello from 10.77.0.1:8081\n"
    );
    assert_eq!(dp.counters_of("mb_sk_lookup").unwrap().redirected, 2);
}

#[test]
fn a_full_ring_buffer_counts_what_it_dropped() {
    // 1500 loopback connections with nobody reading: 3000 splice records
    // (both sides of each), more than the 256 KiB ring buffer holds. What
    // was read plus what was counted lost must be exactly what was emitted.
    let env = Env::new();
    let dp = env.attach(&DatapathSettings::default());
    let mut reader = dp.events().unwrap();
    let script = "import socket\n\
                  l = socket.socket(); l.bind(('127.0.0.1', 9201)); l.listen(64)\n\
                  for _ in range(1500):\n\
                  \x20   c = socket.create_connection(('127.0.0.1', 9201)); a, _ = l.accept(); a.close(); c.close()\n";
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"echo $$ > "$1/cgroup.procs" && exec ip netns exec "$2" timeout 60 python3 -c "$3""#)
        .arg("sh")
        .arg(&env.cgroup)
        .arg(&env.netns)
        .arg(script)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let lost = dp.events_lost().unwrap();
    assert!(lost > 0, "3000 records cannot all fit");
    let mut read = 0u64;
    loop {
        let batch = reader.drain("n", 100_000).unwrap();
        if batch.is_empty() {
            break;
        }
        read += batch.iter().filter(|e| e.reason == "spliced").count() as u64;
    }
    assert_eq!(read + lost, 3000, "read {read}, lost {lost}");
}

#[test]
fn an_sk_msg_miss_is_reported_and_the_socket_stays_on_tcp() {
    // The app's socket is spliced, its peer (a server outside the pod's
    // cgroup) is not: the first send misses the peer, and that send and
    // every later one take plain TCP (a miss switches the socket for good,
    // so later bytes cannot overtake it).
    let env = Env::new();
    let dp = env.attach(&DatapathSettings::default());
    let mut reader = dp.events().unwrap();
    // Started outside the harness's cgroup, so the harness does not own it.
    let mut server = membrane_test_support::ChildGuard(
        std::process::Command::new("ip")
            .args(["netns", "exec", &env.netns, common::SOCKBENCH])
            .args(["echo", "--listen", "127.0.0.1:9301"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.0.stdout.as_mut().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert!(ready.starts_with("READY"), "{ready:?}");

    let out = env.client(&[
        "client",
        "--connect",
        "127.0.0.1:9301",
        "--bytes",
        "4194304",
        "--chunk",
        "1024",
    ]);
    assert!(out.contains("OK round=0"), "{out}");
    let c = dp.counters_of("mb_sk_msg").unwrap();
    let misses = c.misses;
    assert!(misses >= 1, "the first send missed: {c:?}");
    assert!(
        misses + c.fallbacks + c.redirected <= 4096 + 16,
        "every send ran sk_msg at most once: {c:?}"
    );
    // The miss switched the socket, and taught nothing about the service: only a
    // socket's own small-write stream marks its service plain.
    assert!(dp.splice_stats().unwrap().switched_to_tcp >= 1);
    assert_eq!(
        dp.plain_hints().unwrap(),
        vec![],
        "a miss marked the service"
    );
    let evs = collect(&mut reader, |e| {
        e.iter()
            .any(|e| e.program == "sk_msg" && e.reason == "no-peer")
    });
    // Give late records a moment, then count what came.
    std::thread::sleep(Duration::from_millis(100));
    let mut evs = evs;
    evs.extend(reader.drain("node-a", 100_000).unwrap());
    let records: Vec<&Event> = evs
        .iter()
        .filter(|e| e.program == "sk_msg" && e.reason == "no-peer")
        .collect();
    let folded: u64 = records.iter().map(|e| e.count).sum();
    // Records are rate-limited per CPU; a miss not recorded is folded into
    // the count of the next record.
    assert!(folded <= misses && folded >= 1, "{folded} of {misses}");
    assert_eq!(records[0].dst.as_deref(), Some("127.0.0.1:9301"));
}
