//! The `#[repr(C)]` mirrors in `abi.rs` against the BTF clang emitted for
//! the C structs in the embedded objects: same size, same member names at
//! the same offsets. Reads the BTF with `bpftool btf dump` (unprivileged).

use std::{collections::BTreeMap, mem::offset_of, process::Command};

use membrane_datapath::{abi::*, embedded_objects};

type Layout = (usize, Vec<(&'static str, usize)>);

fn rust_layouts() -> BTreeMap<&'static str, Layout> {
    macro_rules! layout {
        ($t:ty, $($f:ident),+) => {
            (size_of::<$t>(), vec![$((stringify!($f).trim_start_matches("r#"), offset_of!($t, $f))),+])
        };
    }
    BTreeMap::from([
        (
            "mb_sock_key",
            layout!(
                MbSockKey,
                local_ip,
                remote_ip,
                local_port,
                remote_port,
                family,
                pad
            ),
        ),
        (
            "mb_counters",
            layout!(
                MbCounters,
                redirected,
                redirected_bytes,
                fallbacks,
                misses,
                refused
            ),
        ),
        (
            "mb_config",
            layout!(
                MbConfig,
                flags,
                policy_revision,
                proxy_uid,
                proxy_mark,
                capture_ip4,
                outbound_port,
                inbound_port,
                hint_ttl_secs,
                pod_identity
            ),
        ),
        ("mb_addr_port", layout!(MbAddrPort, ip, port, family, pad)),
        ("mb_svc_value", layout!(MbSvcValue, backend_set, count, pad)),
        ("mb_backend_key", layout!(MbBackendKey, backend_set, slot)),
        (
            "mb_policy_key",
            layout!(MbPolicyKey, prefixlen, identity, direction, proto, dport),
        ),
        (
            "mb_policy_value",
            layout!(MbPolicyValue, lock, verdict, pad),
        ),
        ("mb_policy_lens", layout!(MbPolicyLens, bits)),
        ("mb_ip_key", layout!(MbIpKey, ip, family, pad)),
        (
            "mb_flow_state",
            layout!(
                MbFlowState,
                small_run,
                service_port,
                hinted,
                kept,
                plain,
                rx_msgs,
                small_bytes,
                pad,
                cookie
            ),
        ),
        (
            "mb_event",
            layout!(
                MbEvent,
                version,
                r#type,
                reason,
                prog,
                family,
                verdict,
                to_port,
                ts_ns,
                cookie,
                src_identity,
                dst_identity,
                revision,
                count,
                src_ip,
                dst_ip,
                to_ip,
                src_port,
                dst_port,
                proto,
                pad
            ),
        ),
        (
            "mb_node_config",
            layout!(
                MbNodeConfig,
                flags,
                node_ip4,
                underlay_ifindex,
                overlay_ifindex,
                underlay_mtu,
                overlay,
                lb_algorithm,
                underlay_mac,
                pad
            ),
        ),
        (
            "mb_ipcache_value",
            layout!(MbIpcacheValue, identity, tunnel_ip4),
        ),
        (
            "mb_endpoint_value",
            layout!(
                MbEndpointValue,
                ifindex,
                identity,
                endpoint_id,
                mac,
                node_mac,
                pad
            ),
        ),
        ("mb_tc_stat", layout!(MbTcStat, packets, bytes)),
        (
            "mb_lxc_config",
            layout!(MbLxcConfig, ifindex, identity, endpoint_id, pad, ip4),
        ),
        (
            "mb_ct_key",
            layout!(
                MbCtKey,
                src_ip,
                dst_ip,
                src_port,
                dst_port,
                endpoint_id,
                proto,
                family,
                dir,
                pad
            ),
        ),
        (
            "mb_ct_value",
            layout!(
                MbCtValue, expires_ns, packets, bytes, identity, state, flags, verdict, pad,
                rev_nat_id, pad2
            ),
        ),
        (
            "mb_lb_svc_key",
            layout!(MbLbSvcKey, ip, port, proto, scope, family, pad),
        ),
        (
            "mb_lb_svc_value",
            layout!(MbLbSvcValue, count, slot_set, rev_nat_id, flags, node_port),
        ),
        ("mb_lb_slot_key", layout!(MbLbSlotKey, slot_set, slot)),
        ("mb_lb_backend", layout!(MbLbBackend, ip, port, family, pad)),
        ("mb_lb_maglev_row", layout!(MbLbMaglevRow, backend_id)),
        (
            "mb_lb_tuple",
            layout!(MbLbTuple, saddr, daddr, sport, dport, proto, family, pad),
        ),
        (
            "mb_lb_flow",
            layout!(
                MbLbFlow,
                backend_ip,
                backend_port,
                family,
                flags,
                backend_id,
                rev_nat_id,
                snat_ip,
                snat_port,
                pad
            ),
        ),
        (
            "mb_lb_rev",
            layout!(MbLbRev, rev_nat_id, client_ip, client_port, flags, pad),
        ),
    ])
}

/// Parse `bpftool btf dump file F format raw` into struct layouts.
fn btf_layouts(raw: &str) -> BTreeMap<String, (usize, Vec<(String, usize)>)> {
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in raw.lines() {
        if line.starts_with('[') {
            current = None;
            // [12] STRUCT 'mb_sock_key' size=40 vlen=6
            let mut parts = line.split_whitespace();
            let (_, kind, name) = (parts.next(), parts.next(), parts.next());
            if kind == Some("STRUCT") {
                let name = name.unwrap().trim_matches('\'').to_owned();
                let size = parts
                    .find_map(|p| p.strip_prefix("size="))
                    .unwrap()
                    .parse()
                    .unwrap();
                out.insert(name.clone(), (size, Vec::new()));
                current = Some(name);
            }
        } else if let Some(name) = &current {
            // \t'local_ip' type_id=5 bits_offset=0
            let mut parts = line.split_whitespace();
            let member = parts.next().unwrap().trim_matches('\'').to_owned();
            let bits: usize = parts
                .find_map(|p| p.strip_prefix("bits_offset="))
                .unwrap()
                .parse()
                .unwrap();
            out.get_mut(name).unwrap().1.push((member, bits / 8));
        }
    }
    out
}

#[test]
fn abi_matches_btf() {
    let rust = rust_layouts();
    let mut seen = BTreeMap::new();
    let dir = std::env::temp_dir().join(format!("membrane-abi-btf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in embedded_objects() {
        let path = dir.join(format!("{name}.o"));
        std::fs::write(&path, bytes).unwrap();
        let out = Command::new("bpftool")
            .args(["btf", "dump", "file"])
            .arg(&path)
            .args(["format", "raw"])
            .output()
            .expect("bpftool (scripts/install-deps.sh installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for (sname, (size, members)) in btf_layouts(&String::from_utf8_lossy(&out.stdout)) {
            let Some((rsize, rmembers)) = rust.get(sname.as_str()) else {
                continue;
            };
            assert_eq!(size, *rsize, "{name}.o: struct {sname} size");
            let rmembers: Vec<(String, usize)> = rmembers
                .iter()
                .map(|(n, o)| ((*n).to_owned(), *o))
                .collect();
            assert_eq!(members, rmembers, "{name}.o: struct {sname} members");
            seen.insert(sname, name);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    for s in rust.keys() {
        assert!(
            seen.contains_key(*s),
            "struct {s} not found in any object's BTF"
        );
    }
}
