//! Privileged: "redirect only where it wins". A spliced flow that streams
//! small writes teaches the datapath to keep its service on plain TCP for
//! new connections; large-write streams and request/response keep being
//! spliced; the no-splice switch leaves new connections on plain TCP.

mod common;

use common::Env;
use membrane_datapath::Settings;

#[test]
fn small_write_stream_service_is_learned_plain() {
    let mut env = Env::new();
    let dp = env.attach(&Settings::default());
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
}

#[test]
fn no_splice_switch_keeps_new_connections_plain() {
    let mut env = Env::new();
    let dp = env.attach(&Settings {
        no_splice: true,
        ..Settings::default()
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
