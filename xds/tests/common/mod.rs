//! Helpers shared by the integration tests: the real `membrane-xds` binary,
//! raw HTTP/1.1 over loopback, and process guards that kill what they start.

#![allow(dead_code)]

pub mod launch;

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

/// Kills (by pid) and reaps the child on drop.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `membrane-xds`.
pub struct Xds {
    pub proc: Guard,
    pub grpc: SocketAddr,
    pub debug: SocketAddr,
    pub tls: Option<SocketAddr>,
    pub webhook: Option<SocketAddr>,
}

/// Starts the binary on loopback ephemeral ports, in its own process group,
/// with the plaintext xDS port explicitly opted in (the trusted local path
/// these tests speak).
pub fn start_xds(source_dir: &std::path::Path) -> Xds {
    start_xds_with(source_dir, &[])
}

/// [`start_xds`] with extra flags.
pub fn start_xds_with(source_dir: &std::path::Path, extra: &[&std::ffi::OsStr]) -> Xds {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "--plaintext-xds".as_ref(),
        "--grpc-addr".as_ref(),
        "127.0.0.1:0".as_ref(),
    ];
    args.extend_from_slice(extra);
    let (proc, line) = launch(source_dir, &args);
    let field = |k: &str| field_of(&line, k);
    let (grpc, debug) = (field("grpc="), field("debug="));
    let tls = line.contains("tls=").then(|| field("tls="));
    let webhook = line.contains("webhook=").then(|| field("webhook="));
    Xds {
        proc,
        grpc,
        debug,
        tls,
        webhook,
    }
}

/// A running `membrane-xds` serving xDS over mTLS only (no plaintext port).
pub struct XdsMtls {
    pub proc: Guard,
    pub debug: SocketAddr,
    pub tls: SocketAddr,
    /// The address line it printed.
    pub line: String,
}

/// Starts the binary with mTLS on a loopback port (`--tls-cert`,
/// `--tls-key`, `--ca-cert` from `pki`) and without `--plaintext-xds`.
pub fn start_xds_mtls(
    source_dir: &std::path::Path,
    pki: &Pki,
    extra: &[&std::ffi::OsStr],
) -> XdsMtls {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "--tls-cert".as_ref(),
        pki.server_cert.as_os_str(),
        "--tls-key".as_ref(),
        pki.server_key.as_os_str(),
        "--ca-cert".as_ref(),
        pki.ca.as_os_str(),
    ];
    args.extend_from_slice(extra);
    let (proc, line) = launch(source_dir, &args);
    XdsMtls {
        proc,
        debug: field_of(&line, "debug="),
        tls: field_of(&line, "tls="),
        line,
    }
}

fn field_of(line: &str, k: &str) -> SocketAddr {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(k))
        .unwrap_or_else(|| panic!("no {k} in {line:?}"))
        .parse()
        .unwrap()
}

fn launch(source_dir: &std::path::Path, extra: &[&std::ffi::OsStr]) -> (Guard, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_membrane-xds"))
        .args(["--debug-addr", "127.0.0.1:0"])
        .args(["--tls-addr", "127.0.0.1:0"])
        .args(extra)
        .args(["--log", "membrane_xds=debug"])
        .args(if extra.iter().any(|a| *a == "--poll-ms") {
            &[][..]
        } else {
            &["--poll-ms", "50"][..]
        })
        .arg("--source-dir")
        .arg(source_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .expect("spawn membrane-xds");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read address line");
    (Guard(child), line)
}

/// One HTTP/1.1 request from `src` to `dst`; returns (status, body).
pub async fn request(
    src: IpAddr,
    dst: SocketAddr,
    method: &str,
    path: &str,
) -> std::io::Result<(u16, String)> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(src, 0))?;
    let mut s = tokio::time::timeout(Duration::from_secs(5), sock.connect(dst)).await??;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: deathstar\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    Ok((status, body))
}

/// GET `path` from the debug endpoint; returns the body.
pub async fn debug_get(debug: SocketAddr, path: &str) -> String {
    let (status, body) = request("127.0.0.1".parse().unwrap(), debug, "GET", path)
        .await
        .expect("debug request");
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// GET a JSON document from the debug endpoint.
pub async fn debug_json(debug: SocketAddr, path: &str) -> serde_json::Value {
    let body = debug_get(debug, path).await;
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// A tiny HTTP/1.1 backend answering 200 with `backend: METHOD PATH`.
pub async fn start_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // Requests carry no body here (content-length: 0).
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end);
                    let line: Vec<&str> = head.lines().next().unwrap_or("").split(' ').collect();
                    let body = format!("backend: {} {}\n", line[0], line.get(1).unwrap_or(&""));
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Polls `f` until it returns `Some`, for at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Star Wars mini-cluster: deathstar at `127.0.0.2` (its app on
/// 127.0.0.1:`port`), tiefighter at 127.0.0.3, xwing at 127.0.0.4.
pub fn starwars_pods(port: u16) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: deathstar-1, namespace: default, labels: {{org: empire, class: deathstar}}}}
spec: {{containers: [{{name: app, ports: [{{containerPort: {port}, name: http}}]}}]}}
status: {{podIP: 127.0.0.2}}
---
apiVersion: v1
kind: Pod
metadata: {{name: tiefighter, namespace: default, labels: {{org: empire, class: tiefighter}}}}
status: {{podIP: 127.0.0.3}}
---
apiVersion: v1
kind: Pod
metadata: {{name: xwing, namespace: default, labels: {{org: alliance, class: xwing}}}}
status: {{podIP: 127.0.0.4}}
---
apiVersion: v1
kind: Service
metadata: {{name: deathstar, namespace: default}}
spec: {{selector: {{org: empire, class: deathstar}}, ports: [{{port: 80, targetPort: http}}]}}
"#
    )
}

/// Cilium's Star Wars L7 policy on `port`; `path` is the landing path regex.
pub fn starwars_l7(port: u16, path: &str) -> String {
    format!(
        r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: rule1, namespace: default}}
spec:
  description: "L7 policy to restrict access to specific HTTP call"
  endpointSelector: {{matchLabels: {{org: empire, class: deathstar}}}}
  ingress:
  - fromEndpoints: [{{matchLabels: {{org: empire}}}}]
    toPorts:
    - ports: [{{port: "{port}", protocol: TCP}}]
      rules:
        http:
        - method: POST
          path: '{path}'
"#
    )
}

/// A real `etcd` (Debian `etcd-server`) on loopback ports of its own, with
/// its data in a temp dir; killed (by pid) and reaped on drop.
pub struct Etcd {
    proc: Option<Guard>,
    pub client_port: u16,
    peer_port: u16,
    pub dir: tempfile::TempDir,
    /// TLS on the client port: (server certificate, key, client CA); client
    /// certificates are then required (`--client-cert-auth`).
    pub tls: Option<[std::path::PathBuf; 3]>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Etcd {
    /// Starts etcd and waits until it answers.
    pub fn start() -> Etcd {
        Self::start_with(None)
    }

    /// Starts etcd serving clients over TLS only, requiring a client
    /// certificate that chains to `ca`.
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path, ca: &std::path::Path) -> Etcd {
        Self::start_with(Some([cert.into(), key.into(), ca.into()]))
    }

    fn start_with(tls: Option<[std::path::PathBuf; 3]>) -> Etcd {
        let mut e = Etcd {
            proc: None,
            client_port: free_port(),
            peer_port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            tls,
        };
        e.restart();
        e
    }

    /// `http://127.0.0.1:PORT` (`https://` with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// Kills the server (its data stays).
    pub fn stop(&mut self) {
        self.proc = None;
    }

    /// Starts the server again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.path().join("etcd.log")).unwrap();
        let mut tls_args: Vec<&std::ffi::OsStr> = Vec::new();
        if let Some([cert, key, ca]) = &self.tls {
            tls_args.extend([
                "--cert-file".as_ref(),
                cert.as_os_str(),
                "--key-file".as_ref(),
                key.as_os_str(),
                "--trusted-ca-file".as_ref(),
                ca.as_os_str(),
                "--client-cert-auth".as_ref(),
            ]);
        }
        let child = Command::new("etcd")
            .args(&tls_args)
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--name", "test"])
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("spawn etcd (Debian etcd-server; scripts/install-deps.sh installs it)");
        self.proc = Some(Guard(child));
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.client_port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "etcd did not start: {}",
                std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A client (etcd answers once it has elected itself; retried briefly).
    pub async fn client(&self) -> etcd_client::Client {
        self.client_tls(None).await
    }

    /// [`Etcd::client`] over TLS with `tls`.
    pub async fn client_tls(
        &self,
        tls: Option<&membrane_xds::kvstore::EtcdTls>,
    ) -> etcd_client::Client {
        let start = Instant::now();
        loop {
            if let Ok(mut c) = membrane_xds::kvstore::connect_tls(&[self.url()], tls).await {
                if c.status().await.is_ok() {
                    return c;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "etcd does not answer"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A CA (`DIR/ca.pem`) and a server certificate it signed for
/// `membrane-xds.test` and 127.0.0.1 (`DIR/cert.pem`, `DIR/key.pem`), made
/// with openssl (webpki refuses a CA certificate used as the server's own).
pub fn make_certs(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:membrane-xds.test,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    for args in [
        format!("req -x509 {ec} -days 1 -subj /CN=membrane-test-ca -keyout ca.key -out ca.pem"),
        format!("req {ec} -subj /CN=membrane-xds -keyout key.pem -out leaf.csr"),
        "x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 \
         -extfile ext.cnf -out cert.pem"
            .to_string(),
    ] {
        let out = Command::new("openssl")
            .args(args.split_whitespace())
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A test PKI made with the openssl CLI: a CA (`ca.pem`), the control
/// plane's certificate for `membrane-xds.test` and 127.0.0.1, and workload
/// certificates issued on demand (`openssl ca`, so validity dates can be set,
/// expired ones included).
pub struct Pki {
    pub dir: std::path::PathBuf,
    pub ca: std::path::PathBuf,
    pub ca_key: std::path::PathBuf,
    pub server_cert: std::path::PathBuf,
    pub server_key: std::path::PathBuf,
}

/// How long an issued certificate is valid.
#[derive(Clone, Copy, Debug)]
pub enum Validity {
    /// From now for this many days.
    Days(u32),
    /// 2020-01-01 to 2020-01-02: long expired.
    Expired,
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    /// A new CA named `name` in `dir` (created), and the server certificate.
    pub fn new(dir: &std::path::Path, name: &str) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("index.txt"), "").unwrap();
        std::fs::write(dir.join("serial"), "1000\n").unwrap();
        std::fs::write(
            dir.join("ca.cnf"),
            "[ca]\ndefault_ca = test\n[test]\ndatabase = index.txt\nnew_certs_dir = .\n\
             serial = serial\ndefault_md = sha256\npolicy = any\nunique_subject = no\n\
             [any]\ncommonName = supplied\n",
        )
        .unwrap();
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        );
        let mut pki = Pki {
            dir: dir.to_path_buf(),
            ca: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            server_cert: Default::default(),
            server_key: Default::default(),
        };
        let (c, k) = pki.issue(
            "membrane-xds",
            "DNS:membrane-xds.test,IP:127.0.0.1",
            Validity::Days(1),
        );
        (pki.server_cert, pki.server_key) = (c, k);
        pki
    }

    /// A leaf certificate with subjectAltName `san` (openssl syntax, e.g.
    /// `URI:spiffe://cluster.local/ns/default/sa/x`), as `NAME.pem` and
    /// `NAME.key`.
    pub fn issue(
        &self,
        name: &str,
        san: &str,
        validity: Validity,
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        let d = &self.dir;
        std::fs::write(
            d.join(format!("{name}.ext")),
            format!(
                "subjectAltName={san}\nbasicConstraints=CA:FALSE\n\
                 keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n"
            ),
        )
        .unwrap();
        let (key, csr, cert) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &key,
                "-out",
                &csr,
            ],
        );
        let ext = format!("{name}.ext");
        let mut args = vec![
            "ca", "-batch", "-notext", "-config", "ca.cnf", "-cert", "ca.pem", "-keyfile",
            "ca.key", "-in", &csr, "-out", &cert, "-extfile", &ext,
        ];
        let days;
        match validity {
            Validity::Days(n) => {
                days = n.to_string();
                args.extend(["-days", &days]);
            }
            Validity::Expired => args.extend([
                "-startdate",
                "20200101000000Z",
                "-enddate",
                "20200102000000Z",
            ]),
        }
        openssl(d, &args);
        (d.join(cert), d.join(key))
    }

    /// A workload certificate for `spiffe://cluster.local/ns/NS/sa/SA`.
    pub fn workload(
        &self,
        name: &str,
        ns: &str,
        sa: &str,
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        self.issue(
            name,
            &format!("URI:spiffe://cluster.local/ns/{ns}/sa/{sa}"),
            Validity::Days(1),
        )
    }
}
