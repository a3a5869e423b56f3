//! Unprivileged: putting the control plane's resources in force is all or nothing. A
//! response with one resource that does not convert changes nothing (neither what the
//! agent holds nor its state directory) and the error names the resource and the field;
//! a good one is held and recorded, and a new agent process finds it there.

use membrane_agent::node::Node;
use membrane_agent::resources::Kind;
use membrane_agent::store::Store;
use membrane_api::proto::NetworkPolicyHosts;
use prost::Message;

fn hosts(name: &str, identity: u64, addrs: &[&str]) -> (String, String, Vec<u8>) {
    let body = NetworkPolicyHosts {
        policy: identity,
        host_addresses: addrs.iter().map(|a| a.to_string()).collect(),
    }
    .encode_to_vec();
    (name.to_owned(), format!("v-{name}-{identity}"), body)
}

fn open(dir: &std::path::Path) -> Node {
    let (node, warnings) =
        Node::open("node-1", &dir.join("bpffs"), Store::new(dir.join("state"))).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    node
}

#[test]
fn a_bad_resource_changes_nothing_and_a_good_response_is_held_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = open(dir.path());
    assert_eq!(
        node.status()["resources"]["NetworkPolicyHosts"],
        serde_json::Value::Null
    );
    let good = vec![
        hosts("300", 300, &["10.0.0.1"]),
        hosts("400", 400, &["10.0.1.0/24"]),
    ];
    node.apply(Kind::Hosts, good, &[]).unwrap();
    assert_eq!(node.status()["resources"]["NetworkPolicyHosts"], 2);
    let recorded = std::fs::read(dir.path().join("state/xds/NetworkPolicyHosts.json")).unwrap();

    // One bad address among good updates and a removal: none of it is applied.
    let bad = vec![
        hosts("500", 500, &["10.0.2.1"]),
        hosts("600", 600, &["10.0.3.1", "x.y"]),
    ];
    let err = node.apply(Kind::Hosts, bad, &["300".into()]).unwrap_err();
    assert!(
        err.contains("NetworkPolicyHosts \"600\"") && err.contains("host_addresses[1]"),
        "{err}"
    );
    assert_eq!(node.held_versions(Kind::Hosts).len(), 2);
    assert!(node.held_versions(Kind::Hosts).contains_key("300"));
    assert_eq!(
        std::fs::read(dir.path().join("state/xds/NetworkPolicyHosts.json")).unwrap(),
        recorded
    );

    // One prefix given two identities: refused as a whole too.
    let clash = vec![hosts("700", 700, &["10.0.0.1"])];
    let err = node.apply(Kind::Hosts, clash, &[]).unwrap_err();
    assert!(err.contains("10.0.0.1/32 is identity"), "{err}");
    assert_eq!(node.held_versions(Kind::Hosts).len(), 2);

    // A removal and an update together.
    node.apply(
        Kind::Hosts,
        vec![hosts("500", 500, &["10.0.2.1"])],
        &["300".into()],
    )
    .unwrap();
    let held = node.held_versions(Kind::Hosts);
    assert_eq!(held.keys().collect::<Vec<_>>(), ["400", "500"]);

    // The next agent process starts from what was recorded.
    drop(node);
    let again = open(dir.path());
    assert_eq!(again.held_versions(Kind::Hosts), held);
    assert!(again.held_versions(Kind::Endpoint).is_empty());
}
