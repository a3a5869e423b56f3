//! Privileged: restarts under traffic on the netns mini-cluster (two nodes over Geneve,
//! the control plane, an agent per node, a deathstar with its sidecar on each node), one
//! test bed for the file. While probes ask the same requests again and again:
//!
//! - node-1's agent is killed (SIGKILL) and a new one started: it adopts the pinned
//!   programs and maps, so the kernel goes on enforcing what it enforced. The product's
//!   promise: not one landing fails, the tiefighter's PUT keeps its 403 and the xwing
//!   stays dropped throughout;
//! - deathstar-1's sidecar is upgraded in place (a successor takes its listening sockets
//!   over, the old one drains and exits): not one request fails, and every verdict is
//!   the policy's throughout.

mod bed;

use bed::{watch, Probe};
use membrane_datapath::node::Overlay;
use membrane_minicluster::Cluster;

/// Answers each probe gets after the change before it stops.
const AFTER: usize = 15;

#[test]
fn the_agent_and_a_sidecar_restarted_under_traffic_keep_enforcing() {
    let c = Cluster::start(&bed::bins(), Overlay::Geneve).unwrap();
    let [d1, d2] = c.deathstars;
    let [tiefighter, xwing] = c.ships;
    let probe = |ship, target, method, path| Probe {
        ship,
        target,
        method,
        path,
    };
    // The denied requests, at both replicas, and landings at the one on the other node.
    let denied = [
        (probe(tiefighter, d1.ip, "PUT", "/v1/exhaust-port"), "403"),
        (probe(tiefighter, d2.ip, "PUT", "/v1/exhaust-port"), "403"),
        (probe(xwing, d1.ip, "POST", "/v1/request-landing"), "drop"),
        (probe(xwing, d2.ip, "POST", "/v1/request-landing"), "drop"),
        (
            probe(tiefighter, d2.ip, "POST", "/v1/request-landing"),
            "200",
        ),
    ];
    let probes: Vec<Probe> = denied.iter().map(|(p, _)| *p).collect();
    let enough = |_: &Probe, answers: &[(String, bool)]| {
        answers.iter().filter(|(_, after)| *after).count() >= AFTER
    };

    // The agent: its own bounded landing loop through the service (one connection per
    // landing) counts the landings across the kill and the restart, while the probes
    // watch the verdicts.
    let mut restart = None;
    let seen = watch(
        &c,
        &probes,
        || restart = Some(c.restart_agent(&tiefighter).unwrap()),
        enough,
    );
    let r = restart.unwrap();
    println!(
        "agent restart: pid {} killed after landing {}, pid {} answering after landing {}, \
         adopted {} endpoints; {} landings, {} landed",
        r.old_pid,
        r.killed_at,
        r.new_pid,
        r.up_at,
        r.adopted,
        r.codes.len(),
        r.landed()
    );
    assert_eq!(
        r.adopted, 3,
        "node-1's endpoints: deathstar-1, tiefighter, xwing"
    );
    assert!(r.codes.len() >= 30, "{:?}", r.codes);
    assert_eq!(r.landed(), r.codes.len(), "failed landings: {:?}", r.codes);
    check("agent restart", &seen, &denied);

    // The sidecar: upgraded while the probes ask deathstar-1 (and deathstar-2, whose
    // sidecar is left alone) for landings, denied PUTs and the dropped xwing.
    let mut upgrade = denied.to_vec();
    upgrade.push((
        probe(tiefighter, d1.ip, "POST", "/v1/request-landing"),
        "200",
    ));
    let probes: Vec<Probe> = upgrade.iter().map(|(p, _)| *p).collect();
    let mut epoch = None;
    let seen = watch(
        &c,
        &probes,
        || epoch = Some(c.upgrade_sidecar(&d1).unwrap()),
        enough,
    );
    assert_eq!(epoch, Some(1), "deathstar-1's sidecar's restart epoch");
    check("sidecar upgrade", &seen, &upgrade);
}

/// Prints how many answers each probe got and how many were not what the policy says,
/// and checks there were none.
fn check(what: &str, seen: &[bed::Seen], want: &[(Probe, &str)]) {
    for (s, (_, want)) in seen.iter().zip(want) {
        let after = s.answers.iter().filter(|(_, a)| *a).count();
        println!(
            "{what}: {}: {} answers ({after} during and after), {} not {want}",
            s.probe,
            s.answers.len(),
            s.not(want)
        );
    }
    for (s, (_, want)) in seen.iter().zip(want) {
        assert_eq!(
            s.not(want),
            0,
            "{what}: {} got other answers than {want}: {:?}",
            s.probe,
            s.answers
        );
    }
}
