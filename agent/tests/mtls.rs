//! Privileged: the agent over mTLS. With the node agents' service-account certificate
//! (`spiffe://cluster.local/ns/kube-system/sa/membrane-agent`) it is served its node and
//! enforces it; with another account's certificate the control plane refuses it and the
//! agent says so in its log, keeping the maps as they are.

mod common;

use std::time::Duration;

use common::{Node, Xds, CLUSTER};
use membrane_test_support::pki::{Ca, Leaf};
use membrane_test_support::wait_until;

const LIMIT: Duration = Duration::from_secs(30);
const EVERY: Duration = Duration::from_millis(50);

fn run(account: &str) -> (Node, Xds) {
    let mut node = Node::new();
    std::fs::write(node.source().join("cluster.yaml"), CLUSTER).unwrap();
    std::fs::write(node.source().join("policy.yaml"), common::policy(&[8080])).unwrap();
    let pki = node.dir.path().join("pki");
    let ca = Ca::in_dir(&pki, "ca", "membrane test CA");
    let server = ca.issue_in(
        &pki,
        "xds",
        &Leaf::new("membrane-xds").san("DNS:membrane-xds.test,IP:127.0.0.1"),
    );
    let agent = ca.issue_in(
        &pki,
        "agent",
        &Leaf::new("membrane-agent").san(&format!("URI:spiffe://cluster.local/ns/{account}")),
    );
    let xds = Xds::start_tls(&node.source(), &server.cert, &server.key, ca.cert());
    node.two_pods("client", "server");
    let (ca, cert, key) = (
        ca.cert().to_str().unwrap().to_owned(),
        agent.cert.to_str().unwrap().to_owned(),
        agent.key.to_str().unwrap().to_owned(),
    );
    node.start_agent_with(
        &format!("https://{}", xds.addr),
        &["--xds-ca", &ca, "--xds-cert", &cert, "--xds-key", &key],
    );
    (node, xds)
}

#[test]
fn the_agents_account_is_served_its_node() {
    let (node, _xds) = run("kube-system/sa/membrane-agent");
    let (ok, out) = node.cni("ADD", "client");
    assert!(ok, "{out}");
    wait_until(LIMIT, EVERY, "the client's policy over mTLS", || {
        node.endpoint("default/client")["state"]["applied_revision"]
            .as_u64()
            .map(|_| ())
    });
}

#[test]
fn another_account_is_refused_and_the_agent_says_so() {
    let (node, _xds) = run("default/sa/membrane-agent");
    wait_until(LIMIT, EVERY, "the refusal in the agent's log", || {
        let log = node.log();
        log.lines()
            .any(|l| {
                l.contains("xDS stream failed") && l.contains("is not the agents' service account")
            })
            .then_some(())
    });
    let status = node.ask(&membrane_datapath::api::Request::Status);
    assert_eq!(status["control_plane"]["acks"], 0, "{status:#}");
}
