//! membrane-proxy's own admin `/config_dump` and what the control plane sent it: a real
//! membrane-proxy (the binary) subscribed to a real membrane-xds (in process) over NPDS
//! and NPHDS. Its dump decodes as `envoy.admin.v3.ConfigDump` with Envoy's own Python
//! definitions (xds-protos); the policy section's entries, unpacked with membrane's
//! compiled Cilium protos, are exactly the policies membrane-xds sent (its
//! dump for that proxy, `NetworkPoliciesConfigDump`), at the version membrane-xds
//! recorded as ACKed;
//! `membrane proxy-config` reads the dump without choking on the section.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{control_plane, curl, python_decoder};
use membrane_test_support::process::sibling_bin;
use membrane_test_support::{wait_until, ChildGuard};

const LIMIT: Duration = Duration::from_secs(30);
const EVERY: Duration = Duration::from_millis(100);
const NODE: &str = "sidecar~127.0.0.2~deathstar-1.default~default.svc.cluster.local";

/// Decodes the proxy's dump and membrane-xds's dump for it with xds-protos and the
/// Cilium descriptor set, and prints (JSON) what each holds: the proxy's NPDS entries
/// (version, status, the policy serialized deterministically, in hex) and NPHDS count,
/// and membrane-xds's policies (hex).
const DECODE: &str = r#"
cls = lambda n: message_factory.GetMessageClass(pool.FindMessageTypeByName(n))
NP, NPH, NPCD = cls('cilium.NetworkPolicy'), cls('cilium.NetworkPolicyHosts'), cls('cilium.NetworkPoliciesConfigDump')
from envoy.admin.v3 import config_dump_pb2
from envoy.service.status.v3 import csds_pb2
proxy = json_format.Parse(open(sys.argv[1]).read(), config_dump_pb2.ConfigDump())
mesh = json_format.Parse(open(sys.argv[2]).read(), config_dump_pb2.ConfigDump())
out = {'npds': [], 'nphds': 0, 'mesh': []}
for c in proxy.configs:
    if not c.Is(csds_pb2.ClientConfig.DESCRIPTOR):
        continue
    cc = csds_pb2.ClientConfig()
    c.Unpack(cc)
    out['node'] = cc.node.id
    for g in cc.generic_xds_configs:
        if g.type_url.endswith('cilium.NetworkPolicy'):
            p = NP()
            assert g.xds_config.Unpack(p)
            out['npds'].append({'name': g.name, 'version': g.version_info,
                'status': g.DESCRIPTOR.fields_by_name['client_status'].enum_type
                    .values_by_number[g.client_status].name,
                'updated': g.last_updated.seconds,
                'ip': p.endpoint_ips[0] if p.endpoint_ips else '',
                'policy': p.SerializeToString(deterministic=True).hex()})
        elif g.type_url.endswith('cilium.NetworkPolicyHosts'):
            h = NPH()
            assert g.xds_config.Unpack(h)
            out['nphds'] += 1
for c in mesh.configs:
    if c.TypeName() == 'cilium.NetworkPoliciesConfigDump':
        d = NPCD()
        c.Unpack(d)
        out['mesh'] = [p.SerializeToString(deterministic=True).hex() for p in d.networkpolicies]
print(json.dumps(out))
"#;

#[test]
fn membrane_proxy_dumps_the_policies_membrane_xds_sent() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cp = control_plane(dir);
    let (debug, grpc) = (cp.debug.clone(), cp.grpc);

    // The deathstar's sidecar: every port its own (0), policy from membrane-xds.
    let proxy = sibling_bin(env!("CARGO_BIN_EXE_membrane"), "membrane-proxy");
    let mut child = Command::new(proxy)
        .arg("standalone")
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--metrics", "127.0.0.1:0", "--health", "127.0.0.1:0"])
        .args(["--upstream", "127.0.0.1:8080"])
        .args([
            "--xds-address",
            &format!("http://{grpc}"),
            "--node-id",
            NODE,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("membrane-proxy starts");
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let _proxy = ChildGuard(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if line.contains("membrane-proxy started") {
                let _ = tx.send(line.clone());
            }
            eprintln!("proxy: {line}");
        }
    });
    let started: serde_json::Value =
        serde_json::from_str(&rx.recv_timeout(LIMIT).expect("startup log line")).unwrap();
    let admin = started["admin"].as_str().unwrap().to_string();

    // Once both types are in force (membrane-xds recorded the ACKs), the dump holds them.
    let acked = |t: &str| -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(&curl(&format!(
            "http://{debug}/debug/config_dump?proxyID={NODE}&format=membrane"
        ))?)
        .ok()?;
        v["types"][t]["acked_version"].as_str().map(str::to_string)
    };
    let npds_type = "type.googleapis.com/cilium.NetworkPolicy";
    let (version, dump) = wait_until(LIMIT, EVERY, "the proxy's dump with its NPDS", || {
        let version = acked(npds_type)?;
        let dump = curl(&format!("http://{admin}/config_dump"))?;
        dump.contains("envoy.service.status.v3.ClientConfig")
            .then_some((version, dump))
    });
    let proxy_file = dir.join("proxy.json");
    std::fs::write(&proxy_file, &dump).unwrap();
    // What membrane-xds holds for (and sent to) this proxy: its dump for the node.
    let mesh = curl(&format!("http://{debug}/debug/config_dump?proxyID={NODE}")).unwrap();
    let mesh_file = dir.join("mesh.json");
    std::fs::write(&mesh_file, &mesh).unwrap();
    let cilium = dir.join("cilium.pb");
    std::fs::write(&cilium, membrane_api::descriptors::CILIUM).unwrap();

    let out = Command::new("python3")
        .args(["-c", &python_decoder(3, DECODE)])
        .args([&proxy_file, &mesh_file, &cilium])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the proxy's dump does not decode as envoy.admin.v3.ConfigDump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["node"], NODE, "{got}");
    let entries = got["npds"].as_array().unwrap();
    assert!(!entries.is_empty(), "{got}");
    let mut held: Vec<&str> = entries
        .iter()
        .map(|e| e["policy"].as_str().unwrap())
        .collect();
    let mut sent: Vec<&str> = got["mesh"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    held.sort();
    sent.sort();
    assert_eq!(
        held, sent,
        "the proxy holds exactly what membrane-xds sent: {got}"
    );
    for e in entries {
        assert_eq!(e["version"], version.as_str(), "{e}");
        assert_eq!(
            e["name"], e["ip"],
            "named by endpoint address, as Cilium names them: {e}"
        );
        assert!(e["updated"].as_i64().unwrap() > 0, "{e}");
    }
    assert!(got["nphds"].as_u64().unwrap() > 0, "{got}");
    assert!(entries.iter().all(|e| e["status"] == "ACKED"), "{got}");

    // `membrane proxy-config` reads the dump, section and all: the tables, and the dump
    // itself as istioctl prints it (unchanged, then a newline).
    let membrane = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_membrane"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "membrane {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let p = proxy_file.to_str().unwrap();
    let listeners = membrane(&["proxy-config", "listener", "-f", p]);
    assert!(listeners.starts_with("ADDRESSES"), "{listeners}");
    let all = membrane(&["proxy-config", "all", "-f", p]);
    assert!(all.contains("cluster/inbound|8080||"), "{all}");
    assert_eq!(
        membrane(&["proxy-config", "all", "-f", p, "-o", "json"]),
        format!("{dump}\n")
    );
    let yaml = membrane(&["proxy-config", "all", "-f", p, "-o", "yaml"]);
    assert!(
        yaml.contains("envoy.service.status.v3.ClientConfig"),
        "{yaml}"
    );
}
