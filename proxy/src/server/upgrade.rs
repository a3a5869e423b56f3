//! HTTP/1.1 upgrades: which are allowed, and the opaque tunnel after a 101.

use std::time::Duration;

use http::header::{self, HeaderMap};
use http::{Request, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::connwatch::ConnWatch;

pub(super) fn wants_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Copies an upgraded connection both ways until either side closes or no byte moves for
/// `idle` (the downstream side's reads and writes both go through the guard, which counts
/// them in `watch`).
pub(super) async fn tunnel(
    down: hyper::upgrade::Upgraded,
    up: hyper::upgrade::Upgraded,
    watch: &ConnWatch,
    idle: Duration,
) {
    let mut d = TokioIo::new(down);
    let mut u = TokioIo::new(up);
    let copy = tokio::io::copy_bidirectional(&mut d, &mut u);
    let mut copy = std::pin::pin!(copy);
    let mut tick = tokio::time::interval(idle);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut seen = watch.progress();
    loop {
        tokio::select! {
            _ = copy.as_mut() => return,
            _ = tick.tick() => {
                let now = watch.progress();
                if now == seen {
                    tracing::debug!("upgrade tunnel idle timeout");
                    return;
                }
                seen = now;
            }
        }
    }
}

/// Whether the request's one `Upgrade` value names a protocol in `allowed` (its first
/// token, without version, compared case-insensitively, as Envoy's `upgrade_configs`).
pub(super) fn upgrade_allowed(h: &HeaderMap, allowed: &[String]) -> bool {
    let mut values = h.get_all(header::UPGRADE).iter();
    let (Some(v), None) = (values.next(), values.next()) else {
        return false;
    };
    let Ok(v) = v.to_str() else {
        return false;
    };
    // `websocket`, `WebSocket/13`; a list offers several, which we do not choose between.
    if v.contains(',') {
        return false;
    }
    let name = v.split('/').next().unwrap_or("").trim();
    !name.eq_ignore_ascii_case("h2c") && allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}
