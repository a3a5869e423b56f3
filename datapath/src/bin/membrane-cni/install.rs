//! `membrane-cni install|uninstall`: the plugin's binary into the node's CNI binary
//! directory and its entry into the primary network configuration list, and back out.

use super::*;

/// `membrane-cni install|uninstall`: how the plugin gets onto a node.
#[derive(Debug, clap::Parser)]
#[command(
    name = "membrane-cni",
    about = "membrane's CNI plugin, and its installer"
)]
pub(crate) enum Installer {
    /// Copy this binary into the CNI binary directory and chain the plugin
    /// into the primary network configuration list.
    Install(InstallArgs),
    /// Take the plugin out of every configuration list and the binary out
    /// of the CNI binary directory.
    Uninstall(InstallArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct InstallArgs {
    /// The node's CNI binary directory (skipped when not given).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The node's CNI configuration directory.
    #[arg(long, default_value = "/etc/cni/net.d")]
    conf_dir: PathBuf,
    /// The plugin's `bpffs` field.
    #[arg(long, default_value = DEFAULT_BPFFS_DIR)]
    bpffs: PathBuf,
    /// The plugin's `excludeNamespaces` field; repeatable.
    #[arg(long = "exclude-namespace")]
    exclude_namespaces: Vec<String>,
    /// The node daemon's socket: pods are registered with it (`agentSocket`, and the
    /// `cgroupPath` capability so that the runtime passes each pod's cgroup).
    #[arg(long)]
    agent_socket: Option<PathBuf>,
}

const PLUGIN_TYPE: &str = "membrane-cni";

/// Write `bytes` to `path` through a temporary file in the same directory
/// and a rename, so a runtime reading it never sees half a file.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("membrane-tmp");
    fs::write(&tmp, bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = fs::remove_file(&tmp);
            format!("{}: {e}", path.display())
        })
}

/// The network configuration lists in `dir`, by name.
fn conflists(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "conflist"))
        .collect();
    out.sort();
    Ok(out)
}

fn read_conflist(path: &Path) -> Result<(Value, u32), String> {
    let meta = fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let text = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: Value = serde_json::from_slice(&text).map_err(|e| {
        format!(
            "{}: not a JSON network configuration list: {e}",
            path.display()
        )
    })?;
    if !v.get("plugins").is_some_and(Value::is_array) {
        return Err(format!("{}: has no \"plugins\" list", path.display()));
    }
    Ok((v, meta.mode() & 0o7777))
}

pub(crate) fn install(a: &InstallArgs) -> Result<(), String> {
    if let Some(bin_dir) = &a.bin_dir {
        let me = env::current_exe().map_err(|e| format!("this binary: {e}"))?;
        let bytes = fs::read(&me).map_err(|e| format!("{}: {e}", me.display()))?;
        write_atomically(&bin_dir.join(PLUGIN_TYPE), &bytes, 0o755)?;
    }
    let lists = conflists(&a.conf_dir)?;
    let Some(primary) = lists.first() else {
        return Err(format!(
            "{}: no .conflist network configuration; the node's primary CNI plugin must \
             install one first (a single-plugin .conf cannot be chained)",
            a.conf_dir.display()
        ));
    };
    let (mut list, mode) = read_conflist(primary)?;
    let mut entry = json!({
        "type": PLUGIN_TYPE,
        "bpffs": a.bpffs,
        "stateDir": DEFAULT_STATE_DIR,
        "excludeNamespaces": a.exclude_namespaces,
    });
    if let Some(socket) = &a.agent_socket {
        entry["agentSocket"] = json!(socket);
        entry["capabilities"] = json!({"cgroupPath": true});
    }
    let plugins = list["plugins"]
        .as_array_mut()
        .expect("checked by read_conflist");
    plugins.retain(|p| p.get("type").and_then(Value::as_str) != Some(PLUGIN_TYPE));
    plugins.push(entry);
    let text = serde_json::to_vec_pretty(&list).map_err(|e| e.to_string())?;
    write_atomically(primary, &text, mode)?;
    println!("membrane-cni chained into {}", primary.display());
    Ok(())
}

pub(crate) fn uninstall(a: &InstallArgs) -> Result<(), String> {
    for path in conflists(&a.conf_dir)? {
        let Ok((mut list, mode)) = read_conflist(&path) else {
            continue;
        };
        let plugins = list["plugins"]
            .as_array_mut()
            .expect("checked by read_conflist");
        let before = plugins.len();
        plugins.retain(|p| p.get("type").and_then(Value::as_str) != Some(PLUGIN_TYPE));
        if plugins.len() != before {
            let text = serde_json::to_vec_pretty(&list).map_err(|e| e.to_string())?;
            write_atomically(&path, &text, mode)?;
            println!("membrane-cni taken out of {}", path.display());
        }
    }
    if let Some(bin_dir) = &a.bin_dir {
        match fs::remove_file(bin_dir.join(PLUGIN_TYPE)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(format!("{}: {e}", bin_dir.join(PLUGIN_TYPE).display()))
            }
            _ => {}
        }
    }
    Ok(())
}
