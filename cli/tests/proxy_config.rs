//! `membrane proxy-config` and `membrane proxy-status` against real
//! configuration: a real Envoy 1.40 fed from files (listeners, static and
//! EDS clusters, RDS routes, endpoints, SDS secrets made with openssl),
//! whose `/config_dump?include_eds` and `/clusters?format=json` must print
//! exactly the golden tables in `tests/data/proxy_config/`. The goldens were
//! worked out by hand from istioctl's writers (Istio 1.27: column names and
//! order, Go tabwriter widths per column block, sorting, value derivation);
//! no istioctl binary exists here to produce them. Then the in-process
//! control plane with a real Envoy as the deathstar's sidecar: the tables of
//! what membrane-xds sent equal those of what Envoy holds, `proxy-status`
//! lists the sidecar as synced, and the control plane's dumps decode as
//! `envoy.admin.v3.ConfigDump` with Envoy's own Python definitions
//! (xds-protos), Cilium's NPDS section included.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{control_plane, curl, python_decoder};
use membrane_test_support::{envoy, wait_until, ChildGuard};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/proxy_config");
const LIMIT: Duration = Duration::from_secs(30);
const EVERY: Duration = Duration::from_millis(100);

/// Starts Envoy on `bootstrap`; its admin address is written to `dir/admin.addr`.
fn start_envoy(dir: &Path, bootstrap: &Path) -> (ChildGuard, String) {
    let guard = envoy::spawn(bootstrap, &dir.join("admin.addr"), &dir.join("envoy.log"));
    let admin = wait_until(LIMIT, EVERY, "envoy's admin address", || {
        let a = std::fs::read_to_string(dir.join("admin.addr")).ok()?;
        (!a.trim().is_empty()).then(|| a.trim().to_string())
    });
    (guard, admin)
}

fn membrane(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_membrane"))
        .args(args)
        .env_remove("MEMBRANE_DEBUG_ADDR")
        .output()
        .expect("run membrane")
}

fn stdout_of(args: &[&str]) -> String {
    let out = membrane(args);
    assert!(
        out.status.success(),
        "membrane {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn rows_sorted(table: &str) -> Vec<&str> {
    let mut rows: Vec<&str> = table.lines().collect();
    rows.sort();
    rows
}

fn golden(name: &str) -> String {
    std::fs::read_to_string(Path::new(DATA).join(name)).unwrap()
}

/// The fixture with `@DIR@` set to `dir`, the certificates made, Envoy
/// started and every file-fed resource loaded.
fn envoy_with_fixture(dir: &Path) -> (ChildGuard, String, String) {
    for f in ["bootstrap", "cds", "eds-all", "eds-v1", "rds", "lds"] {
        let text = std::fs::read_to_string(Path::new(DATA).join(format!("{f}.yaml"))).unwrap();
        let text = text.replace("@DIR@", dir.to_str().unwrap());
        std::fs::write(dir.join(format!("{f}.yaml")), text).unwrap();
    }
    let certs = Command::new("sh")
        .arg(Path::new(DATA).join("make-certs.sh"))
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        certs.status.success(),
        "make-certs.sh: {}",
        String::from_utf8_lossy(&certs.stderr)
    );
    let (guard, admin) = start_envoy(dir, &dir.join("bootstrap.yaml"));
    // Everything fed from files is in: both secrets, the RDS route, both
    // EDS assignments.
    let dump = wait_until(LIMIT, EVERY, "the file-fed resources in Envoy", || {
        let d = curl(&format!("http://{admin}/config_dump?include_eds"))?;
        let v: serde_json::Value = serde_json::from_str(&d).ok()?;
        let section = |t: &str| {
            v["configs"]
                .as_array()
                .and_then(|c| c.iter().find(|x| x["@type"].as_str() == Some(t)).cloned())
        };
        let secrets = section("type.googleapis.com/envoy.admin.v3.SecretsConfigDump")?;
        let eds = section("type.googleapis.com/envoy.admin.v3.EndpointsConfigDump")?;
        let routes = section("type.googleapis.com/envoy.admin.v3.RoutesConfigDump")?;
        (secrets["dynamic_active_secrets"].as_array()?.len() == 2
            && eds.to_string().contains("10.0.0.12")
            && eds.to_string().contains("v1|reviews")
            && routes["dynamic_route_configs"].as_array()?.len() == 1)
            .then_some(d)
    });
    (guard, admin, dump)
}

#[test]
fn envoy_config_dumps_print_istioctls_tables() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_envoy, admin, dump) = envoy_with_fixture(dir);
    let dump_file = dir.join("dump.json");
    std::fs::write(&dump_file, &dump).unwrap();
    let clusters = curl(&format!("http://{admin}/clusters?format=json")).unwrap();
    let clusters_file = dir.join("clusters.json");
    std::fs::write(&clusters_file, clusters).unwrap();
    let (d, c) = (dump_file.to_str().unwrap(), clusters_file.to_str().unwrap());

    let cases: &[(&[&str], &str)] = &[
        (&["proxy-config", "cluster", "-f", d], "cluster.txt"),
        (
            &[
                "pc",
                "clusters",
                "-f",
                d,
                "--fqdn",
                "reviews",
                "--direction",
                "outbound",
                "--port",
                "9080",
                "--subset",
                "v1",
            ],
            "cluster-filtered.txt",
        ),
        (&["proxy-config", "listener", "-f", d], "listener.txt"),
        (
            &["proxy-config", "listener", "-f", d, "--verbose=false"],
            "listener-short.txt",
        ),
        (
            &[
                "pc",
                "listeners",
                "-f",
                d,
                "--port",
                "15006",
                "--type",
                "http+tcp",
                "--address",
                "0.0.0.0",
            ],
            "listener-filtered.txt",
        ),
        (&["proxy-config", "route", "-f", d], "route.txt"),
        (
            &["proxy-config", "routes", "-f", d, "--verbose=false"],
            "route-short.txt",
        ),
        (&["proxy-config", "endpoint", "-f", c], "endpoint.txt"),
        (
            &[
                "pc",
                "ep",
                "-f",
                c,
                "--cluster",
                "outbound|9080||reviews.default.svc.cluster.local",
                "--status",
                "unhealthy",
            ],
            "endpoint-filtered.txt",
        ),
        (&["proxy-config", "endpoint", "-f", d], "endpoint-dump.txt"),
        (&["proxy-config", "secret", "-f", d], "secret.txt"),
        (&["proxy-config", "all", "-f", d], "all.txt"),
        // istioctl's --with-headers: a `------ CLUSTER INFO ------` line and an empty
        // one above each table (Istio's config_dump_summary_withheaders.txt layout).
        (
            &["proxy-config", "all", "-f", d, "--with-headers"],
            "all-with-headers.txt",
        ),
    ];
    for (args, file) in cases {
        let (got, want) = (stdout_of(args), golden(file));
        if args.contains(&"all") {
            let not_secret = |t: &str| {
                t.lines()
                    .filter(|l| !l.starts_with("secret/"))
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                not_secret(&got),
                not_secret(&want),
                "membrane {args:?} vs {file}"
            );
            assert_eq!(
                rows_sorted(&got),
                rows_sorted(&want),
                "membrane {args:?} vs {file}"
            );
        } else if args.contains(&"secret") {
            // istioctl keeps the dump's order of secrets, and Envoy's order
            // of SDS secrets is its hash map's: compare the rows as a set.
            assert_eq!(
                rows_sorted(&got),
                rows_sorted(&want),
                "membrane {args:?} vs {file}"
            );
            assert_eq!(got.lines().next(), want.lines().next());
        } else {
            assert_eq!(got, want, "membrane {args:?} vs {file}");
        }
    }

    // Read live from the pod's admin port, as istioctl reads a pod: the
    // same tables.
    let pod = "reviews-v1-7f9c8.default";
    for (kind, file) in [
        ("cluster", "cluster.txt"),
        ("endpoint", "endpoint.txt"),
        ("route", "route.txt"),
    ] {
        let out = stdout_of(&["proxy-config", kind, pod, "--admin", &admin]);
        assert_eq!(out, golden(file), "live {kind}");
    }

    // -o json: the selected resources with protobuf JSON names, four-space
    // indented; -o yaml: the same resources.
    let json = stdout_of(&["pc", "cluster", "-f", d, "--fqdn", "reviews", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "outbound|9080||reviews.default.svc.cluster.local",
            "outbound|9080|v1|reviews.default.svc.cluster.local"
        ]
    );
    assert_eq!(v[0]["connectTimeout"], "1s", "{json}");
    assert!(json.starts_with("[\n    {\n        \""), "{json}");
    let yaml = stdout_of(&["pc", "route", "-f", d, "--name", "9080", "-o", "yaml"]);
    let y: serde_json::Value = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(y[0]["name"], "9080");
    assert_eq!(y[0]["virtualHosts"].as_array().unwrap().len(), 3, "{yaml}");
    let boot = stdout_of(&["pc", "bootstrap", "-f", d]);
    let b: serde_json::Value = serde_json::from_str(&boot).unwrap();
    assert_eq!(
        b["bootstrap"]["node"]["id"],
        "sidecar~10.0.0.5~reviews-v1-7f9c8.default~default.svc.cluster.local"
    );

    // Bad input: a clear error naming what was wrong, exit status 2.
    let missing = dir.join("missing.json");
    let out = membrane(&["pc", "cluster", "-f", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing.json"), "{err}");
    std::fs::write(dir.join("bad.json"), "{\"configs\": 3}").unwrap();
    let out = membrane(&[
        "pc",
        "listener",
        "-f",
        dir.join("bad.json").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.json") && err.contains("configs"), "{err}");
    let out = membrane(&["pc", "cluster", "-f", d, "-o", "xml"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"xml\""));
}

/// Where `got` first differs from `want`, by line, for an assertion message.
fn first_difference(got: &str, want: &str) -> String {
    let (g, w): (Vec<&str>, Vec<&str>) = (got.lines().collect(), want.lines().collect());
    let i = (0..g.len().max(w.len()))
        .find(|&i| g.get(i) != w.get(i))
        .unwrap_or(0);
    let around = |l: &[&str]| l[i.saturating_sub(3).min(l.len())..(i + 3).min(l.len())].join("\n");
    format!(
        "line {}:\n--- membrane\n{}\n--- istioctl (Go)\n{}",
        i + 1,
        around(&g),
        around(&w)
    )
}

/// `-o json` byte for byte: dumps printed by membrane equal what Go's own jsonpb
/// prints for them the way istioctl 1.27 does (`*/want/`, made by
/// `tests/golden/istioctl-json/regen.sh` with Go and Debian's Go protobuf libraries:
/// MarshalIndent over compact jsonpb for the lists, jsonpb's own indent for bootstrap
/// and secrets). `envoy/` is a real Envoy 1.40's dump of the fixture above (taken by
/// `capture.sh`); `edge/` is written by hand with the forms jsonpb treats specially
/// (well-known types inside `Any`, `Struct`s in lists in `Struct`s, floats at the
/// edges of Go's formats, control and HTML characters, 64-bit extremes, an unknown
/// enum number, empty messages in lists, wrappers holding zero).
#[test]
fn json_output_is_istioctls_byte_for_byte() {
    let golden = Path::new(DATA).join("../../golden/istioctl-json");
    let mut compared = 0;
    for input in ["envoy", "edge"] {
        let dir = golden.join(input);
        let d = dir.join("config_dump.json");
        let c = dir.join("clusters.json");
        let (d, c) = (d.to_str().unwrap(), c.to_str().unwrap());
        let cases: &[(&[&str], &str)] = &[
            (&["pc", "cluster", "-f", d, "-o", "json"], "cluster.json"),
            (&["pc", "listener", "-f", d, "-o", "json"], "listener.json"),
            (&["pc", "route", "-f", d, "-o", "json"], "route.json"),
            (&["pc", "endpoint", "-f", c, "-o", "json"], "endpoint.json"),
            (&["pc", "endpoint", "-f", d, "-o", "json"], "eds.json"),
            (&["pc", "secret", "-f", d, "-o", "json"], "secret.json"),
            (
                &["pc", "bootstrap", "-f", d, "-o", "json"],
                "bootstrap.json",
            ),
        ];
        for (args, file) in cases {
            let Ok(want) = std::fs::read_to_string(dir.join("want").join(file)) else {
                continue;
            };
            let got = stdout_of(args);
            assert!(
                got == want,
                "membrane {args:?} is not istioctl's {input}/want/{file}: {}",
                first_difference(&got, &want)
            );
            compared += 1;
            // -o yaml: the same documents as istioctl's (JSONToYAML of that JSON),
            // compared as YAML values: the text differs in quoting (serde_yaml quotes
            // '9080' where yaml.v2 writes "9080", and leaves timestamps plain).
            let yaml = dir.join("want").join(file.replace(".json", ".yaml"));
            if let Ok(want) = std::fs::read_to_string(yaml) {
                let mut args = args.to_vec();
                *args.last_mut().unwrap() = "yaml";
                let got: serde_yaml_ng::Value = serde_yaml_ng::from_str(&stdout_of(&args)).unwrap();
                let want: serde_yaml_ng::Value = serde_yaml_ng::from_str(&want).unwrap();
                assert!(got == want, "membrane {args:?} is not istioctl's YAML");
            }
        }
    }
    assert_eq!(compared, 10, "a golden went missing");
}

/// Decodes `dump` (a file) as `envoy.admin.v3.ConfigDump` with xds-protos'
/// message definitions, Cilium's NPDS ones loaded from the descriptor set
/// membrane ships (`cilium.pb`), and prints the `@type`s it held.
fn python_decode(dump: &Path, cilium: &Path) -> String {
    let script = python_decoder(
        2,
        r#"
message_factory.GetMessageClass(pool.FindMessageTypeByName('cilium.NetworkPoliciesConfigDump'))
from envoy.admin.v3 import config_dump_pb2
cd = json_format.Parse(open(sys.argv[1]).read(), config_dump_pb2.ConfigDump())
for c in cd.configs:
    print(c.TypeName())
"#,
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(dump)
        .arg(cilium)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} does not decode as envoy.admin.v3.ConfigDump: {}",
        dump.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// When Envoy last loaded RDS, as istioctl prints it: the latest `last_updated` of the
/// dynamic route configurations in Go's `time.RFC1123`, UTC.
fn rds_loaded(dump: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(dump).unwrap();
    let latest = v["configs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["@type"] == "type.googleapis.com/envoy.admin.v3.RoutesConfigDump")
        .flat_map(|c| c["dynamic_route_configs"].as_array().unwrap())
        .map(|r| r["last_updated"].as_str().unwrap())
        .map(|t| humantime::parse_rfc3339_weak(t.trim_end_matches('Z')).unwrap())
        .max()
        .expect("Envoy holds RDS routes");
    let secs = latest
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let t = time::OffsetDateTime::from_unix_timestamp(secs as i64).unwrap();
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} UTC",
        &t.weekday().to_string()[..3],
        t.day(),
        &t.month().to_string()[..3],
        t.year(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[test]
fn proxy_status_and_config_of_a_sidecar_of_membrane_xds() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cp = control_plane(dir);
    let (debug, grpc) = (cp.debug.clone(), cp.grpc);

    let node = "sidecar~127.0.0.2~deathstar-1.default~default.svc.cluster.local";
    let bootstrap = envoy::ads_bootstrap(node, "deathstar.default", grpc, "GRPC");
    std::fs::write(dir.join("envoy.yaml"), bootstrap).unwrap();
    let (_envoy, admin) = start_envoy(dir, &dir.join("envoy.yaml"));

    // proxy-status: the sidecar, by its Istio name, every type it asked for
    // synced.
    let pod = "deathstar-1.default";
    let table = wait_until(
        LIMIT,
        EVERY,
        "the sidecar synced in proxy-status -v",
        || {
            let out = stdout_of(&["proxy-status", "--debug-addr", &debug, "-v"]);
            let row = out.lines().find(|l| l.starts_with(pod))?.to_string();
            (row.contains("SYNCED") && !row.contains("STALE") && !row.contains("NOT SENT"))
                .then_some(out)
        },
    );
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header[..3], ["NAME", "CLUSTER", "CDS"], "{table}");
    assert_eq!(header[header.len() - 2..], ["ISTIOD", "VERSION"], "{table}");
    assert!(
        header.contains(&"ECDS") && header.contains(&"LDS"),
        "{table}"
    );
    let short = stdout_of(&["proxy-status", "--debug-addr", &debug]);
    let mut lines = short.lines();
    let head = lines.next().unwrap();
    let cols: Vec<&str> = head
        .split("  ")
        .filter(|c| !c.is_empty())
        .map(str::trim)
        .collect();
    assert_eq!(
        cols,
        ["NAME", "CLUSTER", "ISTIOD", "VERSION", "SUBSCRIBED TYPES"],
        "{short}"
    );
    let row = lines.next().unwrap();
    // Each value starts where its header does (Go's tabwriter columns).
    for (col, value) in cols.iter().zip([pod, "Kubernetes"]) {
        let at = head.find(col).unwrap();
        assert!(row[at..].starts_with(value), "{col} in {short}");
    }
    let types = &row[head.find("SUBSCRIBED TYPES").unwrap()..];
    assert!(
        types.starts_with('2') || types.starts_with('3') || types.starts_with('4'),
        "{short}"
    );
    assert!(types.contains("CDS,LDS"), "{short}");
    assert!(lines.next().is_none(), "only the one proxy: {short}");

    // What membrane-xds sent, through its debug endpoint, prints the same
    // tables as what Envoy holds, read from its admin port: the control
    // plane's view and the proxy's agree, type by type.
    for kind in ["listener", "route", "cluster"] {
        let sent = stdout_of(&["proxy-config", kind, pod, "--debug-addr", &debug]);
        let held = stdout_of(&["proxy-config", kind, pod, "--admin", &admin]);
        // Envoy's own dump also holds its bootstrap's static xds cluster.
        let held: String = held
            .lines()
            .filter(|l| !l.starts_with("xds "))
            .map(|l| format!("{l}\n"))
            .collect();
        let sent_rows: Vec<&str> = sent.lines().skip(1).map(str::trim_end).collect();
        let held_rows: Vec<&str> = held.lines().skip(1).map(str::trim_end).collect();
        assert_eq!(
            sent_rows
                .iter()
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .collect::<Vec<_>>(),
            held_rows
                .iter()
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .collect::<Vec<_>>(),
            "{kind}: membrane-xds's view\n{sent}\nEnvoy's\n{held}"
        );
        assert!(!sent_rows.is_empty(), "{kind}: {sent}");
    }

    // proxy-status POD: what membrane-xds holds for the pod against what Envoy holds,
    // read from its admin port, as istioctl compares them. In sync: every type matches,
    // and routes say when Envoy last loaded RDS (Go's RFC 1123, UTC here).
    let matched = wait_until(LIMIT, EVERY, "proxy-status POD in sync", || {
        let out = membrane(&[
            "proxy-status",
            pod,
            "--debug-addr",
            &debug,
            "--admin",
            &admin,
        ]);
        let text = String::from_utf8(out.stdout).unwrap();
        (out.status.success() && text.starts_with("Clusters Match\nListeners Match\n"))
            .then_some(text)
    });
    let dump = curl(&format!("http://{admin}/config_dump")).unwrap();
    let rds = rds_loaded(&dump);
    assert_eq!(
        matched,
        format!("Clusters Match\nListeners Match\nRoutes Match (RDS last loaded at {rds})\n")
    );

    // A proxy that holds something else (its dump, edited: one cluster's connect timeout
    // changed): that type's unified diff, Istiod's side first, seven lines of context.
    let mut v: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let clusters = v["configs"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["@type"] == "type.googleapis.com/envoy.admin.v3.ClustersConfigDump")
        .unwrap();
    let changed = &mut clusters["dynamic_active_clusters"][0]["cluster"];
    let name = changed["name"].as_str().unwrap().to_string();
    let was = changed["connect_timeout"].as_str().unwrap().to_string();
    changed["connect_timeout"] = "7s".into();
    let edited = dir.join("edited.json");
    std::fs::write(&edited, v.to_string()).unwrap();
    let out = stdout_of(&[
        "proxy-status",
        pod,
        "--debug-addr",
        &debug,
        "-f",
        edited.to_str().unwrap(),
    ]);
    let (clusters_part, rest) = out.split_once("\n\nListeners Match\n").expect(&out);
    assert_eq!(
        rest,
        format!("Routes Match (RDS last loaded at {rds})\n"),
        "{out}"
    );
    let lines: Vec<&str> = clusters_part.lines().collect();
    assert_eq!(
        lines[..3],
        [
            "Clusters Don't Match",
            "--- Istiod Clusters",
            "+++ Envoy Clusters"
        ],
        "{out}"
    );
    // One hunk: seven lines of context on each side of the changed line.
    assert!(
        lines[3].starts_with("@@ -") && lines[3].ends_with(",15 @@"),
        "{out}"
    );
    // (A field line ends with a comma unless it is the message's last.)
    let changed_lines = |sign: char| -> Vec<&str> {
        lines[4..]
            .iter()
            .filter(|l| l.starts_with(sign))
            .map(|l| l.trim_end_matches(','))
            .collect()
    };
    let indent = " ".repeat(16);
    assert_eq!(
        changed_lines('-'),
        [format!("-{indent}\"connectTimeout\": \"{was}\"")],
        "{out}"
    );
    assert_eq!(
        changed_lines('+'),
        [format!("+{indent}\"connectTimeout\": \"7s\"")],
        "{out}"
    );
    assert_eq!(lines.len(), 4 + 15 + 1, "{out}");
    assert!(
        lines[4..].iter().all(|l| l.starts_with([' ', '-', '+'])),
        "{out}"
    );
    let at = lines
        .iter()
        .position(|l| l.starts_with('-') && !l.starts_with("---"))
        .unwrap();
    assert_eq!(at, 4 + 7, "seven lines of context before the change: {out}");
    assert!(
        clusters_part.contains(&format!("\"name\": \"{name}\"")),
        "{out}"
    );
    // Without the proxy's side: a clear error.
    let out = membrane(&["proxy-status", pod, "--debug-addr", &debug]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--admin HOST:PORT"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The control plane's dumps are Envoy ConfigDumps by Envoy's own
    // definitions; the mesh-wide one carries Cilium's NPDS section.
    let cilium = dir.join("cilium.pb");
    std::fs::write(&cilium, membrane_api::descriptors::CILIUM).unwrap();
    let side = curl(&format!("http://{debug}/debug/config_dump?proxyID={pod}")).unwrap();
    std::fs::write(dir.join("sidecar.json"), &side).unwrap();
    let types = python_decode(&dir.join("sidecar.json"), &cilium);
    assert!(
        types.contains("envoy.admin.v3.ListenersConfigDump"),
        "{types}"
    );
    let mesh = curl(&format!(
        "http://{debug}/debug/config_dump?proxyID=istioctl"
    ))
    .unwrap();
    std::fs::write(dir.join("mesh.json"), &mesh).unwrap();
    let types = python_decode(&dir.join("mesh.json"), &cilium);
    assert!(
        types.contains("cilium.NetworkPoliciesConfigDump"),
        "{types}"
    );
}
