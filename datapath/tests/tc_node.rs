//! The node pin directory and its user-space API: load is idempotent and keeps what the
//! maps hold, open finds it, settings and the ipcache round-trip, bad input is refused
//! with an error naming it and nothing written, endpoints are attached idempotently (a new
//! host veth moves the links), read back and detached. Privileged; cleans up on drop.

mod common;
mod tc_common;

use std::path::Path;

use membrane_datapath::{
    Error, IpcacheEntry, LbAlgorithm, LocalEndpoint, NodeDatapath, NodeSettings, Overlay,
};
use tc_common::{in_netns, TcNode};

fn entry(prefix: &str, identity: u32, tunnel: Option<&str>) -> IpcacheEntry {
    IpcacheEntry {
        prefix: prefix.parse().unwrap(),
        identity,
        tunnel: tunnel.map(|t| t.parse().unwrap()),
    }
}

#[test]
fn load_open_settings_and_teardown() {
    let n = TcNode::new(false);
    let dir = n.node.dir().to_path_buf();
    assert!(matches!(
        NodeDatapath::open(dir.join("nothing")),
        Err(Error::NotAttached(_))
    ));
    let s = NodeSettings {
        node_ip4: "192.168.10.1".parse().unwrap(),
        underlay_ifindex: 7,
        overlay_ifindex: 0,
        underlay_mtu: 9000,
        underlay_mac: [2, 1, 2, 3, 4, 5],
        overlay: Overlay::Geneve,
        lb_algorithm: LbAlgorithm::Maglev,
        policy: true,
        trace: true,
    };
    n.node.set_settings(&s).unwrap();
    n.node
        .sync_ipcache(&[entry("10.2.0.0/24", 2000, Some("192.168.10.2"))])
        .unwrap();
    // Loading again keeps the maps' contents and writes the new settings.
    let again = NodeDatapath::load(
        &dir,
        &NodeSettings {
            trace: false,
            ..s.clone()
        },
    )
    .unwrap();
    assert_eq!(
        again.settings().unwrap(),
        NodeSettings {
            trace: false,
            ..s.clone()
        }
    );
    assert_eq!(again.ipcache().unwrap().len(), 1);
    let opened = NodeDatapath::open(&dir).unwrap();
    assert_eq!(opened.settings().unwrap().overlay, Overlay::Geneve);
    // Settings the datapath cannot work with: refused, the old ones stay.
    for (bad, needle) in [
        (
            NodeSettings {
                overlay: Overlay::Vxlan,
                overlay_ifindex: 0,
                ..s.clone()
            },
            "vxlan needs overlay_ifindex",
        ),
        (
            NodeSettings {
                overlay: Overlay::Geneve,
                underlay_ifindex: 0,
                ..s.clone()
            },
            "geneve needs underlay_ifindex",
        ),
        (
            NodeSettings {
                underlay_mtu: 500,
                ..s.clone()
            },
            "underlay_mtu 500",
        ),
    ] {
        let err = opened.set_settings(&bad).unwrap_err().to_string();
        assert!(err.contains(needle), "{err}");
    }
    assert_eq!(opened.settings().unwrap().underlay_mtu, 9000);
    opened.teardown().unwrap();
    assert!(!dir.exists());
    assert!(matches!(
        NodeDatapath::open(&dir),
        Err(Error::NotAttached(_))
    ));
}

#[test]
fn ipcache_sync_diffs_and_refuses_bad_input_whole() {
    let n = TcNode::new(false);
    let first = [
        entry("10.2.0.0/24", 2000, Some("192.168.10.2")),
        entry("10.2.0.7/32", 2001, Some("192.168.10.2")),
        entry("0.0.0.0/0", 2, None),
        entry("fd00:2::/64", 2000, None),
        // v4-mapped is stored as IPv4, host bits cleared.
        entry("::ffff:10.3.0.9/120", 3000, None),
    ];
    let r = n.node.sync_ipcache(&first).unwrap();
    assert_eq!((r.added, r.changed, r.removed), (5, 0, 0));
    let got = n.node.ipcache().unwrap();
    assert!(got.contains(&entry("10.3.0.0/24", 3000, None)), "{got:?}");
    assert!(
        got.contains(&entry("10.2.0.7/32", 2001, Some("192.168.10.2"))),
        "{got:?}"
    );
    // The same again changes nothing; a new tunnel changes one entry, one goes.
    assert_eq!(n.node.sync_ipcache(&first).unwrap().added, 0);
    let second = [
        entry("10.2.0.0/24", 2000, Some("192.168.10.3")),
        entry("10.2.0.7/32", 2001, Some("192.168.10.2")),
        entry("0.0.0.0/0", 2, None),
        entry("fd00:2::/64", 2000, None),
    ];
    let r = n.node.sync_ipcache(&second).unwrap();
    assert_eq!((r.added, r.changed, r.removed), (0, 1, 1));
    let before = n.node.ipcache().unwrap();
    for (bad, needle) in [
        (vec![entry("10.9.0.0/16", 0, None)], "identity 0"),
        (
            vec![entry("10.9.0.0/16", 5, Some("0.0.0.0"))],
            "tunnel endpoint 0.0.0.0",
        ),
        (
            vec![entry("10.9.0.0/16", 5, Some("224.0.0.1"))],
            "tunnel endpoint 224.0.0.1",
        ),
        (
            vec![entry("10.9.0.0/16", 5, None), entry("10.9.1.1/16", 6, None)],
            "10.9.0.0/16 given twice",
        ),
    ] {
        let mut all = second.to_vec();
        all.extend(bad);
        let err = n.node.sync_ipcache(&all).unwrap_err().to_string();
        assert!(
            err.starts_with("invalid ipcache: ") && err.contains(needle),
            "{err}"
        );
        assert_eq!(n.node.ipcache().unwrap(), before, "nothing written");
    }
}

#[test]
fn endpoints_attach_idempotently_follow_their_veth_and_refuse_bad_input() {
    let mut n = TcNode::new(true);
    n.add(1, 1000, &["10.1.0.10", "fd00:1::10"], true);
    n.add(2, 2000, &["10.1.0.11"], true);
    let eps = n.node.endpoints().unwrap();
    assert_eq!(eps.len(), 2);
    assert_eq!(eps[0], n.eps[0].ep);
    assert_eq!(eps[1], n.eps[1].ep);
    let e = &n.eps[0];
    let ns = Path::new("/run/netns").join(&e.env.netns);
    let node = n.node.clone();
    // Again: nothing changes; with fewer addresses, the dropped one goes.
    in_netns(&ns, || node.attach_endpoint(&e.dp, &e.ep)).unwrap();
    let mut fewer = e.ep.clone();
    fewer.ips.truncate(1);
    in_netns(&ns, || node.attach_endpoint(&e.dp, &fewer)).unwrap();
    assert_eq!(n.node.endpoints().unwrap()[0].ips, fewer.ips);
    // Another endpoint's address, or nonsense: refused, nothing written.
    let mut thief = fewer.clone();
    thief.ips.push("10.1.0.11".parse().unwrap());
    let err = in_netns(&ns, || node.attach_endpoint(&e.dp, &thief))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("address 10.1.0.11 belongs to endpoint 2"),
        "{err}"
    );
    assert_eq!(n.node.endpoints().unwrap()[0].ips, fewer.ips);
    for (bad, needle) in [
        (
            LocalEndpoint {
                id: 0,
                ..fewer.clone()
            },
            "endpoint id 0",
        ),
        (
            LocalEndpoint {
                ips: vec![],
                ..fewer.clone()
            },
            "no addresses",
        ),
        (
            LocalEndpoint {
                identity: 0,
                ..fewer.clone()
            },
            "identity 0",
        ),
        (
            LocalEndpoint {
                ifindex: 999_999,
                ..fewer.clone()
            },
            "ifindex 999999: no such device",
        ),
    ] {
        let err = in_netns(&ns, || node.attach_endpoint(&e.dp, &bad))
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{err}");
    }
    // The pod's veth is replaced: attaching to the new one moves the links.
    e.env
        .ip(&["link", "add", "h1b", "type", "veth", "peer", "name", "p1b"]);
    let ifindex = in_netns(&ns, || nix::net::if_::if_nametoindex("h1b")).unwrap();
    let moved = LocalEndpoint {
        ifindex,
        ..fewer.clone()
    };
    in_netns(&ns, || node.attach_endpoint(&e.dp, &moved)).unwrap();
    let links: Vec<String> = std::fs::read_dir(e.dp.dir().join("links"))
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("tc-"))
        .collect();
    assert_eq!(links, [format!("tc-{ifindex}")]);
    assert_eq!(n.node.endpoints().unwrap()[0].ifindex, ifindex);
    // Detached: its addresses are gone, the other endpoint stays.
    in_netns(&ns, || node.detach_endpoint(&e.dp, &moved)).unwrap();
    assert_eq!(
        n.node
            .endpoints()
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect::<Vec<_>>(),
        [2]
    );
    in_netns(&ns, || node.detach_endpoint(&e.dp, &moved)).unwrap();
}
