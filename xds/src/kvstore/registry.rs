//! The control plane's lease-bound registrations (`IPCACHE`): each replica's
//! address → identity entries, kept alive with its lease and gone with it.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{Client, PutOptions};
use tracing::{info, warn};

use super::{within, IPCACHE};

async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// One registration: an address and what it resolved to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IpEntry {
    /// Numeric identity.
    pub identity: u32,
    /// `endpoint` or `node`.
    pub kind: String,
    /// `namespace/pod` or the node name.
    pub name: String,
}

/// Keeps this replica's registrations in etcd under a lease: writes what
/// `want` says (address → entry), renews the lease, and after a lost lease
/// (etcd down longer than the TTL) grants a new one and writes everything
/// again. Revokes the lease when `stop` fires, so a clean shutdown removes
/// the entries at once; a crash leaves them to expire.
pub async fn register(
    mut client: Client,
    replica: String,
    ttl: Duration,
    mut want: tokio::sync::watch::Receiver<BTreeMap<String, IpEntry>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let limit = Duration::from_secs(5);
    let secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(60);
    loop {
        let lease = match within(limit, client.lease_grant(secs, None)).await {
            Ok(l) => l.id(),
            Err(e) => {
                warn!(error = %e, "etcd lease grant failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = stopped(&mut stop) => return,
                }
            }
        };
        let mut keeper = match within(limit, client.lease_keep_alive(lease)).await {
            Ok(k) => k,
            Err(e) => {
                warn!(error = %e, "etcd lease keep-alive failed; retrying");
                continue;
            }
        };
        info!(lease, %replica, "registrations under a new etcd lease");
        let mut written: BTreeMap<String, IpEntry> = BTreeMap::new();
        'lease: loop {
            let now = want.borrow_and_update().clone();
            let key = |ip: &str| format!("{IPCACHE}{ip}/{replica}");
            for (ip, e) in &now {
                if written.get(ip) == Some(e) {
                    continue;
                }
                let v = serde_json::to_string(e).unwrap_or_default();
                let put = client.put(key(ip), v, Some(PutOptions::new().with_lease(lease)));
                if let Err(e) = within(limit, put).await {
                    warn!(error = %e, "etcd registration failed; retrying");
                    break 'lease;
                }
                written.insert(ip.clone(), e.clone());
            }
            let gone: Vec<String> = written
                .keys()
                .filter(|ip| !now.contains_key(*ip))
                .cloned()
                .collect();
            for ip in gone {
                if let Err(e) = within(limit, client.delete(key(&ip), None)).await {
                    warn!(error = %e, "etcd deregistration failed; retrying");
                    break 'lease;
                }
                written.remove(&ip);
            }
            tokio::select! {
                _ = tokio::time::sleep(ttl / 3) => {
                    let alive = async {
                        keeper.0.keep_alive().await?;
                        keeper.1.message().await
                    };
                    match tokio::time::timeout(limit, alive).await {
                        Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                        other => {
                            warn!(result = ?other.map(|r| r.map(|m| m.map(|m| m.ttl()))), "etcd lease lost; registering again");
                            break 'lease;
                        }
                    }
                }
                r = want.changed() => {
                    if r.is_err() {
                        // The controller is gone: the process is stopping.
                        let _ = within(limit, client.lease_revoke(lease)).await;
                        return;
                    }
                }
                _ = stopped(&mut stop) => {
                    let _ = within(limit, client.lease_revoke(lease)).await;
                    return;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stopped(&mut stop) => return,
        }
    }
}
