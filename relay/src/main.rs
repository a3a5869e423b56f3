//! `membrane-relay`: the merged event stream of every node, served on 4245 over mTLS.
//! Finds the agents through membrane-xds's node registry and follows each one's observer
//! (4244). See the library ([`membrane_relay`]) for the parts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use membrane_relay::discovery::XdsSource;
use membrane_relay::nodes::AgentAccess;
use membrane_relay::tls::TlsFiles;
use membrane_relay::{Discovery, Relay, RelayConfig};
use membrane_xds_client::XdsTls;

/// The relay's configuration: flags, with `MEMBRANE_*` environment fallbacks.
#[derive(Parser, Debug)]
#[command(
    name = "membrane-relay",
    about = "every node's monitor events, merged in time order"
)]
struct Config {
    /// membrane-xds (`http://HOST:PORT`, or `https://` with --xds-ca), for the node registry.
    #[arg(long, env = "MEMBRANE_XDS_ADDRESS")]
    xds_address: String,
    /// PEM CA bundle the control plane's certificate must chain to (https).
    #[arg(long, env = "MEMBRANE_XDS_CA")]
    xds_ca: Option<PathBuf>,
    /// PEM certificate chain presented to the control plane (with --xds-key).
    #[arg(long, env = "MEMBRANE_XDS_CERT", requires = "xds_key")]
    xds_cert: Option<PathBuf>,
    /// PEM key of --xds-cert.
    #[arg(long, env = "MEMBRANE_XDS_KEY", requires = "xds_cert")]
    xds_key: Option<PathBuf>,
    /// The node id presented to membrane-xds (`membrane-relay~NAME`): it gets the node
    /// registry and the workload directory (on mTLS, the certificate must be the relay's
    /// service account's, membrane-xds's `--relay-service-account`).
    #[arg(
        long,
        env = "MEMBRANE_RELAY_XDS_NODE_ID",
        default_value = "membrane-relay~membrane-relay"
    )]
    xds_node_id: String,
    /// The agents' observer port.
    #[arg(long, env = "MEMBRANE_RELAY_AGENT_PORT", default_value_t = membrane_api::observer::AGENT_PORT)]
    agent_port: u16,
    /// PEM CA bundle the agents' certificates must chain to (default: --xds-ca).
    #[arg(long, env = "MEMBRANE_RELAY_AGENT_CA")]
    agent_ca: Option<PathBuf>,
    /// PEM certificate the relay presents to the agents (default: --xds-cert); the agents
    /// admit its SPIFFE id (`--observer-client-id`).
    #[arg(long, env = "MEMBRANE_RELAY_AGENT_CERT", requires = "agent_key")]
    agent_cert: Option<PathBuf>,
    /// PEM key of --agent-cert (default: --xds-key).
    #[arg(long, env = "MEMBRANE_RELAY_AGENT_KEY", requires = "agent_cert")]
    agent_key: Option<PathBuf>,
    /// The name the agents' certificates carry (default: each node's address, an IP SAN).
    #[arg(long, env = "MEMBRANE_RELAY_AGENT_SERVER_NAME")]
    agent_server_name: Option<String>,
    /// Reach the agents in plaintext (their `--observer-plaintext`).
    #[arg(long, env = "MEMBRANE_RELAY_AGENT_PLAINTEXT")]
    agent_plaintext: bool,
    /// Serve the merged stream here (4245 is Hubble Relay's port).
    #[arg(long, env = "MEMBRANE_RELAY_LISTEN", default_value = "0.0.0.0:4245")]
    listen: SocketAddr,
    /// PEM CA bundle clients' certificates must chain to (default: the agents' CA).
    #[arg(long, env = "MEMBRANE_RELAY_LISTEN_CA")]
    listen_ca: Option<PathBuf>,
    /// PEM certificate the relay serves with (default: its agent certificate).
    #[arg(long, env = "MEMBRANE_RELAY_LISTEN_CERT", requires = "listen_key")]
    listen_cert: Option<PathBuf>,
    /// PEM key of --listen-cert.
    #[arg(long, env = "MEMBRANE_RELAY_LISTEN_KEY", requires = "listen_cert")]
    listen_key: Option<PathBuf>,
    /// SPIFFE ids admitted as clients (repeat or comma-separate); none = every
    /// certificate the CA signed.
    #[arg(
        long = "client-id",
        env = "MEMBRANE_RELAY_CLIENT_IDS",
        value_delimiter = ','
    )]
    client_ids: Vec<String>,
    /// Serve the merged stream without TLS (loopback and tests only).
    #[arg(long, env = "MEMBRANE_RELAY_PLAINTEXT")]
    plaintext: bool,
    /// Serve the web page (service map, latest flows; plain HTTP) here: loopback unless
    /// told otherwise, as it shows every flow of the mesh.
    #[arg(long, env = "MEMBRANE_RELAY_WEB_ADDRESS", default_value = membrane_relay::web::DEFAULT_ADDRESS)]
    web_address: SocketAddr,
    /// The latest flows the web page keeps for its table.
    #[arg(long, env = "MEMBRANE_RELAY_WEB_FLOWS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    web_flows: u64,
    /// The service map's edges the web page keeps (the least recently seen goes first).
    #[arg(long, env = "MEMBRANE_RELAY_WEB_EDGES", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    web_edges: u64,
    /// How long events wait to be put in time order, in milliseconds.
    #[arg(long, env = "MEMBRANE_RELAY_REORDER_MS", default_value_t = 1000)]
    reorder_ms: u64,
    /// The most events waiting to be ordered at once.
    #[arg(long, env = "MEMBRANE_RELAY_REORDER_MAX", default_value_t = 65_536,
          value_parser = clap::value_parser!(u64).range(1..))]
    reorder_max: u64,
    /// First reconnect delay (agents and control plane), in milliseconds.
    #[arg(long, env = "MEMBRANE_RELAY_BACKOFF_MS", default_value_t = 200,
          value_parser = clap::value_parser!(u64).range(1..))]
    backoff_ms: u64,
    /// Reconnect delay ceiling, in milliseconds.
    #[arg(long, env = "MEMBRANE_RELAY_BACKOFF_MAX_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    backoff_max_ms: u64,
}

fn files(
    flag: &'static str,
    ca: Option<&PathBuf>,
    pair: Option<(&PathBuf, &PathBuf)>,
) -> Result<TlsFiles> {
    match (ca, pair) {
        (Some(ca), Some((cert, key))) => Ok(TlsFiles {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
            flag,
        }),
        _ => bail!("{flag}-ca/{flag}-cert/{flag}-key (or --xds-ca/--xds-cert/--xds-key) are needed, or {flag}-plaintext"),
    }
}

fn main() -> Result<()> {
    let cfg = Config::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MEMBRANE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let xds_tls = cfg.xds_ca.clone().map(|ca| XdsTls {
        ca,
        identity: cfg.xds_cert.clone().zip(cfg.xds_key.clone()),
        poll: Duration::from_secs(10),
        memory: None,
    });
    membrane_xds_client::check(&cfg.xds_address, xds_tls.as_ref())?;
    let xds_pair = cfg.xds_cert.as_ref().zip(cfg.xds_key.as_ref());
    let agent_pair = cfg
        .agent_cert
        .as_ref()
        .zip(cfg.agent_key.as_ref())
        .or(xds_pair);
    let agent_ca = cfg.agent_ca.as_ref().or(cfg.xds_ca.as_ref());
    let agent_tls = match cfg.agent_plaintext {
        true => None,
        false => Some(files("--agent", agent_ca, agent_pair)?),
    };
    let listen_tls = match cfg.plaintext {
        true => None,
        false => Some(files(
            "--listen",
            cfg.listen_ca.as_ref().or(agent_ca),
            cfg.listen_cert
                .as_ref()
                .zip(cfg.listen_key.as_ref())
                .or(agent_pair),
        )?),
    };
    let backoff = Duration::from_millis(cfg.backoff_ms);
    let backoff_max = Duration::from_millis(cfg.backoff_max_ms.max(cfg.backoff_ms));
    let mut rc = RelayConfig::new(
        Discovery::Xds(XdsSource {
            address: cfg.xds_address.clone(),
            node_id: cfg.xds_node_id.clone(),
            tls: xds_tls,
            backoff,
            backoff_max,
        }),
        AgentAccess {
            port: cfg.agent_port,
            tls: agent_tls,
            server_name: cfg.agent_server_name.clone(),
            backoff,
            backoff_max,
        },
    );
    rc.window = Duration::from_millis(cfg.reorder_ms);
    rc.buffer = usize::try_from(cfg.reorder_max).unwrap_or(usize::MAX);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    rt.block_on(async {
        let relay = Relay::start(rc);
        let bound = membrane_relay::server::serve(
            relay.clone(),
            cfg.listen,
            listen_tls.as_ref(),
            cfg.client_ids.clone(),
        )
        .await?;
        let limits = membrane_relay::web::Limits {
            flows: usize::try_from(cfg.web_flows).unwrap_or(usize::MAX),
            edges: usize::try_from(cfg.web_edges).unwrap_or(usize::MAX),
        };
        let web = membrane_relay::web::Web::bind(cfg.web_address, limits).await?;
        println!("membrane-relay web page on http://{}/", web.local_addr());
        let feed = relay.subscribe();
        tokio::spawn(async move {
            if let Err(e) = web.run(feed).await {
                tracing::error!("{e}");
            }
        });
        let how = if listen_tls.is_some() {
            "mTLS"
        } else {
            "plaintext"
        };
        println!(
            "membrane-relay serving the merged stream ({how}) on {bound}, nodes from {}",
            cfg.xds_address
        );
        tokio::signal::ctrl_c().await.context("wait for ctrl-c")?;
        drop(relay);
        Ok(())
    })
}
