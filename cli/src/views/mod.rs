//! `membrane proxy-config`: istioctl's `proxy-config` tables over any
//! Envoy-shaped config dump: a pod's as membrane-xds holds it
//! (`/debug/config_dump?proxyID=`, as istioctl asks istiod), a proxy's own
//! admin `/config_dump` (`--admin`, as istioctl reads a pod's 15000), or a
//! file (`-f`). Column names, order, spacing (Go's tabwriter) and sorting
//! are istioctl's (Istio 1.27's writers); `-o json|yaml` print the selected
//! resources as istioctl does.

mod cluster;
mod compare;
mod difflib;
mod dump;
mod endpoint;
mod fetch;
mod gosort;
mod jsonpb;
mod listener;
mod output;
mod route;
mod secret;
pub mod status;
pub mod tabwriter;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::Value;

use dump::ConfigDump;
pub use fetch::get;

/// Where the configuration comes from.
#[derive(Debug, Args)]
pub struct Source {
    /// The pod: `NAME.NAMESPACE`, `NAME` (with -n), or a full node id
    /// (`sidecar~IP~NAME.NAMESPACE~NAMESPACE.svc.cluster.local`).
    pod: Option<String>,
    /// The pod's namespace, when POD names none.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// An Envoy config dump file (`/config_dump?include_eds` output; for
    /// `endpoint`, also `/clusters?format=json` output) instead of a pod.
    #[arg(short = 'f', long = "file", conflicts_with = "pod")]
    file: Option<PathBuf>,
    /// membrane-xds's debug endpoint, which holds every pod's configuration.
    #[arg(long, env = "MEMBRANE_DEBUG_ADDR", default_value = "127.0.0.1:15014")]
    debug_addr: String,
    /// Read the proxy's own admin endpoint (HOST:PORT, e.g. a port-forwarded
    /// 15000) instead of membrane-xds.
    #[arg(long, conflicts_with = "file")]
    admin: Option<String>,
    /// Output: short (the table), json or yaml.
    #[arg(short = 'o', long, default_value = "short")]
    output: String,
}

/// A boolean flag that defaults to true (`--verbose=false` turns it off),
/// as istioctl's `--verbose`.
#[derive(Debug, Args)]
pub struct Verbose {
    /// More columns (one row per filter chain or route).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    verbose: bool,
}

/// The kinds of configuration.
#[derive(Debug, Subcommand)]
pub enum ProxyConfigCommand {
    /// Bootstrap summary, clusters, listeners, routes, secrets and endpoints.
    All {
        #[command(flatten)]
        src: Source,
        #[command(flatten)]
        verbose: Verbose,
        /// Put a `------ CLUSTER INFO ------` line (and the like) above each
        /// table of the summary, as istioctl's `--with-headers`.
        #[arg(long)]
        with_headers: bool,
    },
    /// Clusters: SERVICE FQDN, PORT, SUBSET, DIRECTION, TYPE, DESTINATION RULE.
    #[command(visible_aliases = ["clusters", "c"])]
    Cluster {
        #[command(flatten)]
        src: Source,
        /// Only clusters whose name contains this FQDN.
        #[arg(long, default_value = "")]
        fqdn: String,
        /// Only clusters of this port.
        #[arg(long, default_value_t = 0)]
        port: u32,
        /// Only clusters whose name contains this subset.
        #[arg(long, default_value = "")]
        subset: String,
        /// Only inbound or outbound clusters.
        #[arg(long, default_value = "")]
        direction: String,
    },
    /// Listeners: ADDRESSES, PORT, MATCH, DESTINATION per filter chain.
    #[command(visible_aliases = ["listeners", "l"])]
    Listener {
        #[command(flatten)]
        src: Source,
        /// Only listeners on this address.
        #[arg(long, default_value = "")]
        address: String,
        /// Only listeners on this port.
        #[arg(long, default_value_t = 0)]
        port: u32,
        /// Only listeners of this type (HTTP, TCP, HTTP+TCP).
        #[arg(long = "type", default_value = "")]
        kind: String,
        #[command(flatten)]
        verbose: Verbose,
    },
    /// Routes: NAME, VHOST NAME, DOMAINS, MATCH, VIRTUAL SERVICE.
    #[command(visible_aliases = ["routes", "r"])]
    Route {
        #[command(flatten)]
        src: Source,
        /// Only the route configuration of this name.
        #[arg(long, default_value = "")]
        name: String,
        #[command(flatten)]
        verbose: Verbose,
    },
    /// Endpoints: ENDPOINT, STATUS, OUTLIER CHECK, CLUSTER.
    #[command(visible_aliases = ["endpoints", "ep"])]
    Endpoint {
        #[command(flatten)]
        src: Source,
        /// Only endpoints with this IP.
        #[arg(long, default_value = "")]
        address: String,
        /// Only endpoints on this port.
        #[arg(long, default_value_t = 0)]
        port: u32,
        /// Only endpoints of this cluster.
        #[arg(long, default_value = "")]
        cluster: String,
        /// Only endpoints of this health status.
        #[arg(long, default_value = "")]
        status: String,
    },
    /// SDS secrets: RESOURCE NAME, TYPE, STATUS, VALID CERT, SERIAL NUMBER,
    /// NOT AFTER, NOT BEFORE.
    #[command(visible_aliases = ["secrets", "s"])]
    Secret {
        #[command(flatten)]
        src: Source,
    },
    /// The bootstrap configuration (JSON or YAML).
    #[command(visible_aliases = ["b"])]
    Bootstrap {
        #[command(flatten)]
        src: Source,
    },
}

impl Source {
    /// The pod's proxy as membrane-xds names it: a full node id as given,
    /// else `NAME.NAMESPACE`, which must be connected.
    fn node_id(&self, pod: &str) -> Result<String> {
        if pod.contains('~') {
            return Ok(pod.to_string());
        }
        let want = if pod.contains('.') {
            pod.to_string()
        } else {
            format!("{pod}.{}", self.namespace)
        };
        let syncz = get(&self.debug_addr, "/debug/syncz")?;
        let list: Vec<Value> = serde_json::from_str(&syncz)
            .with_context(|| format!("{}/debug/syncz: not a JSON list", self.debug_addr))?;
        // syncz names proxies as Istio does (`POD.NAMESPACE`); the debug
        // endpoint takes that name too.
        let connected = list
            .iter()
            .filter_map(|p| p.get("proxy").and_then(Value::as_str))
            .any(|id| id == want);
        if !connected {
            bail!(
                "no proxy of pod {want} is connected to membrane-xds at {} (see `membrane proxy-status`)",
                self.debug_addr
            );
        }
        Ok(want)
    }

    /// The config dump (with EDS).
    fn dump(&self) -> Result<ConfigDump> {
        let (what, text) = self.dump_text()?;
        ConfigDump::parse(&what, &text)
    }

    /// The config dump's text as the source gave it, and where it came
    /// from (for errors).
    fn dump_text(&self) -> Result<(String, String)> {
        if let Some(f) = &self.file {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            return Ok((f.display().to_string(), text));
        }
        let Some(pod) = &self.pod else {
            bail!("name a pod or give a config dump with -f FILE");
        };
        if let Some(admin) = &self.admin {
            let text = get(admin, "/config_dump?include_eds")?;
            return Ok((format!("{admin}/config_dump"), text));
        }
        let id = self.node_id(pod)?;
        let path = format!("/debug/config_dump?proxyID={}", encode(&id));
        let text = get(&self.debug_addr, &path)?;
        Ok((format!("{}{path}", self.debug_addr), text))
    }

    fn check_output(&self) -> Result<()> {
        match self.output.as_str() {
            "short" | "json" | "yaml" => Ok(()),
            o => bail!("-o {o:?}: expected short, json or yaml"),
        }
    }
}

/// Percent-encodes a query value (node ids carry `~`, which is safe, and
/// may carry anything else a client sent).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs `membrane proxy-config KIND`.
pub fn run(cmd: ProxyConfigCommand) -> Result<ExitCode> {
    let out = render(cmd, SystemTime::now())?;
    write_out(&out)
}

/// Writes `text` to stdout; a reader that went away (`| head`) is not an
/// error.
pub fn write_out(text: &str) -> Result<ExitCode> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// The text `cmd` prints, certificate validity judged at `now`.
pub fn render(cmd: ProxyConfigCommand, now: SystemTime) -> Result<String> {
    use ProxyConfigCommand as C;
    let src = match &cmd {
        C::All { src, .. }
        | C::Cluster { src, .. }
        | C::Listener { src, .. }
        | C::Route { src, .. }
        | C::Endpoint { src, .. }
        | C::Secret { src }
        | C::Bootstrap { src } => src,
    };
    src.check_output()?;
    let short = src.output == "short";
    match &cmd {
        C::Cluster {
            src,
            fqdn,
            port,
            subset,
            direction,
        } => {
            let d = src.dump()?;
            let f = cluster::ClusterFilter {
                fqdn: fqdn.clone(),
                port: *port,
                subset: subset.clone(),
                direction: direction.clone(),
            };
            if d.clusters().is_empty() {
                bail!("no clusters found");
            }
            if short {
                return Ok(cluster::summary(&d, &f, false));
            }
            output::print(output::CLUSTER, &cluster::clusters(&d, &f), &src.output)
        }
        C::Listener {
            src,
            address,
            port,
            kind,
            verbose,
        } => {
            let d = src.dump()?;
            if d.listeners().is_empty() {
                bail!("no listeners found");
            }
            let f = listener::ListenerFilter {
                address: address.clone(),
                port: *port,
                kind: kind.clone(),
            };
            if short {
                return Ok(listener::summary(&d, &f, verbose.verbose, false));
            }
            let ls: Vec<&Value> = d
                .listeners()
                .into_iter()
                .filter(|l| listener::summary_filter(&f, l))
                .collect();
            output::print(output::LISTENER, &ls, &src.output)
        }
        C::Route { src, name, verbose } => {
            let d = src.dump()?;
            if d.routes().is_empty() {
                bail!("no routes found");
            }
            if short {
                return Ok(route::summary(&d, name, verbose.verbose, false));
            }
            output::print(output::ROUTE, &route::routes(&d, name), &src.output)
        }
        C::Endpoint {
            src,
            address,
            port,
            cluster,
            status,
        } => {
            let f = endpoint::EndpointFilter {
                address: address.clone(),
                port: *port,
                cluster: cluster.clone(),
                status: status.clone(),
            };
            endpoints(src, &f)
        }
        C::Secret { src } => {
            let d = src.dump()?;
            if short {
                if d.secrets_dump().is_none() {
                    bail!("secret dump not present");
                }
                return Ok(secret::summary(&d, now, false));
            }
            let s = d
                .secrets_dump()
                .context("sidecar doesn't support secrets: secret dump not present")?;
            output::indented(output::SECRETS, s, &src.output)
        }
        C::Bootstrap { src } => {
            let d = src.dump()?;
            let b = d.bootstrap_dump()?;
            // The bootstrap has no table: short prints JSON, as istioctl.
            let format = if short { "json" } else { src.output.as_str() };
            output::indented(output::BOOTSTRAP, b, format)
        }
        C::All {
            src,
            verbose,
            with_headers,
        } => {
            if !short {
                // istioctl prints the dump as the proxy gave it (JSON), or
                // converted to YAML; sections it has no message for (such as
                // membrane-proxy's NPDS client state) pass through untouched.
                let (what, text) = src.dump_text()?;
                ConfigDump::parse(&what, &text)?;
                if src.output == "json" {
                    return Ok(format!("{text}\n"));
                }
                let v: Value =
                    serde_json::from_str(&text).with_context(|| format!("{what}: not JSON"))?;
                return output::go_yaml(&v);
            }
            let d = src.dump()?;
            let v = verbose.verbose;
            let sections = [
                ("BOOTSTRAP", secret::bootstrap_summary(&d)?),
                ("CLUSTER", cluster::summary(&d, &Default::default(), true)),
                (
                    "LISTENER",
                    listener::summary(&d, &Default::default(), v, true),
                ),
                ("ROUTE", route::summary(&d, "", v, true)),
                ("SECRET", secret::summary(&d, now, true)),
                ("ENDPOINTS", endpoint::dump_summary(&d, true)),
            ];
            let mut out = String::new();
            for (i, (name, table)) in sections.iter().enumerate() {
                if i > 0 {
                    out.push('\n');
                }
                if *with_headers {
                    out.push_str(&format!("------ {name} INFO ------\n\n"));
                }
                out.push_str(table);
            }
            Ok(out)
        }
    }
}

/// Endpoints: a pod's admin `/clusters` (what istioctl reads), a file of
/// either shape, or membrane-xds's dump (its EDS).
fn endpoints(src: &Source, f: &endpoint::EndpointFilter) -> Result<String> {
    let clusters: Option<Value> = match (&src.file, &src.admin) {
        (Some(file), _) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            let v: Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: not JSON", file.display()))?;
            v.get("cluster_statuses").is_some().then_some(v)
        }
        (None, Some(admin)) if src.pod.is_some() => {
            let text = get(admin, "/clusters?format=json")?;
            Some(serde_json::from_str(&text).context("/clusters?format=json: not JSON")?)
        }
        _ => None,
    };
    if let Some(c) = clusters {
        if src.output == "short" {
            return Ok(endpoint::summary(Ok(&c), f));
        }
        let list = endpoint::cluster_statuses(&c, f);
        return output::print(output::CLUSTER_STATUS, &list, &src.output);
    }
    let d = src.dump()?;
    if src.output == "short" {
        return Ok(endpoint::summary(Err(&d), f));
    }
    output::print(output::ENDPOINT, &d.endpoints(), &src.output)
}
