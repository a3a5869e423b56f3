//! Header actions: the changes a matching rule asks for, made to the request before it is
//! forwarded (the proxy's header-actions layer calls [`apply_header_actions`]).

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::HeaderAction;

/// Applies header actions to the request about to be forwarded. A value that came from a
/// secret goes into the request and nowhere else: logs name the header only.
pub fn apply_header_actions(h: &mut HeaderMap, actions: &[HeaderAction]) {
    let header = |name: &str, value: &membrane_policy::http::ActionValue| {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value.as_str().as_bytes()),
        ) {
            (Ok(n), Ok(v)) => Some((n, v)),
            _ => {
                // `Display` of a secret value is "[redacted]".
                tracing::warn!(header = %name, value = %value, "header action skipped: not a valid header");
                None
            }
        }
    };
    for a in actions {
        match a {
            HeaderAction::Log { name } => {
                tracing::info!(target: "access", header = %name, "header mismatch (LOG)")
            }
            HeaderAction::Add { name, value } => {
                if let Some((n, v)) = header(name, value) {
                    h.append(n, v);
                }
            }
            HeaderAction::Delete { name } => {
                h.remove(name.as_str());
            }
            HeaderAction::Replace { name, value } => {
                if let Some((n, v)) = header(name, value) {
                    h.insert(n, v);
                }
            }
        }
    }
}
