//! Privileged: "redirect only where it wins". A spliced flow that streams
//! small writes teaches the datapath to keep its service on plain TCP for
//! new connections; large-write streams and request/response keep being
//! spliced; the no-splice switch leaves new connections on plain TCP.

mod common;

use common::Env;
use membrane_datapath::DatapathSettings;

/// Upload `bytes` of a known pattern in `write`-byte writes to a `digest`
/// server at `addr` and check that it got exactly those bytes, in order.
fn upload(env: &Env, addr: &str, bytes: usize, write: usize, extra: &[&str]) {
    let (bytes, write) = (bytes.to_string(), write.to_string());
    let mut args = vec![
        "upload",
        "--connect",
        addr,
        "--bytes",
        &bytes,
        "--write",
        &write,
    ];
    args.extend_from_slice(extra);
    let out = env.client(&args);
    assert!(out.starts_with(&format!("OK bytes={bytes} ")), "{out}");
}

#[test]
fn small_write_stream_service_is_learned_plain() {
    let mut env = Env::new();
    let dp = env.attach(&DatapathSettings::default());
    env.server(&["sink", "--listen", "127.0.0.1:9000"]);
    env.server(&["sink", "--listen", "127.0.0.1:9002"]);
    env.server(&["echo", "--listen", "127.0.0.1:9001"]);

    // Large writes and request/response teach nothing.
    env.client(&[
        "stream",
        "--connect",
        "127.0.0.1:9002",
        "--write",
        "65536",
        "--secs",
        "0.3",
    ]);
    env.client(&[
        "rr",
        "--connect",
        "127.0.0.1:9001",
        "--size",
        "1",
        "--iters",
        "2000",
    ]);
    assert_eq!(dp.plain_hints().unwrap(), vec![], "nothing learned yet");
    assert_eq!(dp.counters_of("mb_sockops").unwrap().redirected, 4);

    // The first small-write stream is spliced, and marks its service.
    env.client(&[
        "stream",
        "--connect",
        "127.0.0.1:9000",
        "--write",
        "1024",
        "--secs",
        "0.3",
    ]);
    let ops = dp.counters_of("mb_sockops").unwrap();
    assert_eq!((ops.redirected, ops.fallbacks), (6, 0), "{ops:?}");
    let hints: Vec<u16> = dp
        .plain_hints()
        .unwrap()
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(hints, vec![9000]);

    // The next connection to that service takes plain TCP ...
    let before = env.lo_tx_packets();
    env.client(&[
        "stream",
        "--connect",
        "127.0.0.1:9000",
        "--write",
        "1024",
        "--secs",
        "0.2",
    ]);
    assert!(
        env.lo_tx_packets() - before > 100,
        "plain path carries packets on lo"
    );
    let ops = dp.counters_of("mb_sockops").unwrap();
    assert_eq!((ops.redirected, ops.fallbacks), (6, 2), "{ops:?}");
    // ... while other services are still spliced.
    env.client(&[
        "rr",
        "--connect",
        "127.0.0.1:9001",
        "--size",
        "1024",
        "--iters",
        "1000",
    ]);
    assert_eq!(dp.counters_of("mb_sockops").unwrap().redirected, 8);

    // Forgetting the hint re-probes: the next connection is spliced again.
    dp.clear_plain_hint(9000).unwrap();
    assert_eq!(dp.plain_hints().unwrap(), vec![]);
    env.client(&[
        "stream",
        "--connect",
        "127.0.0.1:9000",
        "--write",
        "65536",
        "--secs",
        "0.1",
    ]);
    assert_eq!(dp.counters_of("mb_sockops").unwrap().redirected, 10);

    // A one-way stream of 16 KiB writes counts as small too (spliced, its sender sleeps on
    // the reader's socket lock once per message when the two run on different cores);
    // 32 KiB writes stay spliced.
    env.server(&["sink", "--listen", "127.0.0.1:9003"]);
    for (write, secs) in [("32768", "0.2"), ("16384", "0.3")] {
        env.client(&[
            "stream",
            "--connect",
            "127.0.0.1:9003",
            "--write",
            write,
            "--secs",
            secs,
        ]);
        if write == "32768" {
            assert_eq!(
                dp.plain_hints().unwrap(),
                vec![],
                "32 KiB writes learned plain"
            );
        }
    }
    let hints: Vec<u16> = dp
        .plain_hints()
        .unwrap()
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(
        hints,
        vec![9003],
        "a 16 KiB-write stream is not learned plain"
    );
}

#[test]
fn no_splice_switch_keeps_new_connections_plain() {
    let mut env = Env::new();
    let dp = env.attach(&DatapathSettings {
        no_splice: true,
        ..DatapathSettings::default()
    });
    env.server(&["echo", "--listen", "127.0.0.1:9000"]);
    let out = env.client(&[
        "client",
        "--connect",
        "127.0.0.1:9000",
        "--bytes",
        "1048576",
    ]);
    assert!(out.contains("OK round=0"), "{out}");
    assert_eq!(dp.counters_of("mb_sockops").unwrap().redirected, 0);
    assert_eq!(dp.counters_of("mb_sk_msg").unwrap().redirected, 0);
}

#[test]
fn first_small_write_connection_leaves_the_splice_with_every_byte_in_order() {
    let mut env = Env::new();
    let dp = env.attach(&DatapathSettings::default());
    env.server(&["digest", "--listen", "127.0.0.1:9000"]);

    // 8 MiB of a known pattern in 1 KiB writes: 8192 sendmsg calls.
    let before = env.lo_tx_packets();
    upload(&env, "127.0.0.1:9000", 8388608, 1024, &[]);
    let ops = dp.counters_of("mb_sockops").unwrap();
    assert_eq!(ops.redirected, 2, "the connection was spliced: {ops:?}");
    let stats = dp.splice_stats().unwrap();
    assert!(stats.switched_to_tcp >= 1, "{stats:?}");
    // The client had received nothing, so it left the sockhash: its later
    // writes no longer run sk_msg at all, they are plain TCP on lo. The
    // server left it too, once it had read bytes that came by TCP (its
    // queue of spliced messages was empty then, and nothing more is
    // redirected to it): its reads take plain tcp_recvmsg again.
    assert_eq!(stats.unspliced, 2, "{stats:?}");
    // Only the stream's own small writes teach the service; the server's
    // reply, which follows the client onto TCP, does not.
    let hints: Vec<u16> = dp
        .plain_hints()
        .unwrap()
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(hints, vec![9000]);
    let msg = dp.counters_of("mb_sk_msg").unwrap();
    assert!(
        msg.redirected >= 1,
        "the first writes were spliced: {msg:?}"
    );
    // The probe is 2 MiB (2048 of these writes); the switched client leaves
    // the sockhash at the ACK of its first TCP bytes.
    assert!(
        msg.redirected + msg.fallbacks + msg.misses < 4096,
        "most of the 8192 writes must not pass through sk_msg: {msg:?}"
    );
    assert!(
        env.lo_tx_packets() - before > 100,
        "the rest of the stream went over TCP"
    );
}

#[test]
fn switch_with_unread_spliced_bytes_keeps_order() {
    let mut env = Env::new();
    let dp = env.attach(&DatapathSettings::default());
    // The server greets (a spliced message into the client) and reads only
    // after 300 ms, so the spliced head of the stream is still queued unread
    // when the TCP tail arrives.
    env.server(&[
        "digest",
        "--listen",
        "127.0.0.1:9000",
        "--greet",
        "--delay-ms",
        "300",
    ]);
    upload(&env, "127.0.0.1:9000", 16 << 20, 1024, &["--greet"]);
    let stats = dp.splice_stats().unwrap();
    assert!(stats.switched_to_tcp >= 1, "{stats:?}");
    // The server leaves only after it has read its queued spliced head and
    // then bytes that came by TCP: leaving earlier would drop the head, and
    // the digest would differ. The client had read the greeting before it
    // switched, and the server's sendmsg was long over: it leaves at once.
    assert_eq!(stats.unspliced, 2, "{stats:?}");
    let msg = dp.counters_of("mb_sk_msg").unwrap();
    // 16384 writes: a spliced head of 2 MiB (2048 writes), then TCP, through
    // sk_msg only until the client's next received segment (how many writes
    // that takes depends on the server's pace: thousands are seen), then
    // without. Staying would pass all 14336 through sk_msg.
    assert!(
        msg.redirected >= 1 && msg.redirected + msg.fallbacks < 10_000,
        "a spliced head, then the writes went to TCP: {msg:?}"
    );
}

#[test]
fn switched_socket_waits_for_its_unread_spliced_bytes_then_leaves() {
    let mut env = Env::new();
    let dp = env.attach(&DatapathSettings::default());
    env.server(&["digest", "--listen", "127.0.0.1:9000", "--greet"]);
    // The client switches after its 2 MiB probe with the server's greeting
    // still unread in its spliced queue: it must stay in the sockhash (leaving
    // would drop the greeting, and the read would time out) until it has
    // read it, 4 MiB into the upload, and then leave.
    upload(
        &env,
        "127.0.0.1:9000",
        16 << 20,
        1024,
        &["--greet", "--greet-after", "4194304"],
    );
    let stats = dp.splice_stats().unwrap();
    assert!(stats.switched_to_tcp >= 1, "{stats:?}");
    assert!(stats.kept >= 1, "the client had to wait: {stats:?}");
    assert_eq!(stats.unspliced, 2, "then both left: {stats:?}");
    let msg = dp.counters_of("mb_sk_msg").unwrap();
    // 16384 writes: a spliced head (2048), then at least the 2048 writes up
    // to the greeting's read passed to TCP by sk_msg while the client waited,
    // a few thousand more until its next segment (4410 in all seen), then
    // none: staying would pass all 14336.
    assert!(
        msg.fallbacks >= 2000 && msg.redirected + msg.fallbacks < 12_000,
        "the client's sk_msg stopped after it left: {msg:?}"
    );
}

#[test]
fn concurrent_writers_across_the_switch_lose_nothing() {
    let mut env = Env::new();
    let dp = env.attach(&DatapathSettings::default());
    // Four threads write 1 KiB at a time on one socket: one of them switches
    // it while others may be between deciding a redirect and queueing it.
    // Whichever end leaves the sockhash must not free a message still on its
    // way (the server's count would come up short, or its read time out).
    // With the greeting the client has been redirected into, so it can only
    // leave through the mb_sending check as well. A fresh service each time:
    // a learned one is not spliced at all.
    for port in 9000..9006 {
        let addr = format!("127.0.0.1:{port}");
        let greet: &[&str] = if port % 2 == 1 { &["--greet"] } else { &[] };
        let mut server = vec!["digest", "--listen", &addr];
        server.extend_from_slice(greet);
        env.server(&server);
        let mut args = vec!["--writers", "4"];
        args.extend_from_slice(greet);
        upload(&env, &addr, 16 << 20, 1024, &args);
    }
    let stats = dp.splice_stats().unwrap();
    assert!(
        stats.switched_to_tcp >= 6,
        "every connection switched: {stats:?}"
    );
}

#[test]
fn request_response_and_large_writes_stay_spliced() {
    let mut env = Env::new();
    let dp = env.attach(&DatapathSettings::default());
    env.server(&["echo", "--listen", "127.0.0.1:9001"]);
    env.server(&["digest", "--listen", "127.0.0.1:9002"]);
    env.client(&[
        "rr",
        "--connect",
        "127.0.0.1:9001",
        "--size",
        "1024",
        "--iters",
        "2000",
    ]);
    upload(&env, "127.0.0.1:9002", 8388608, 65536, &[]);
    let msg = dp.counters_of("mb_sk_msg").unwrap();
    // rr: 2200 requests and 2200 responses (with warm-up); upload: 128
    // writes (the digest reply is one more).
    assert!(msg.redirected >= 4400 + 128, "{msg:?}");
    assert_eq!((msg.fallbacks, msg.misses), (0, 0), "{msg:?}");
    assert_eq!(dp.splice_stats().unwrap().switched_to_tcp, 0);
    assert!(dp.plain_hints().unwrap().is_empty());
}
