//! Target: the URI the request goes upstream with. Its authority is also the upstream pool
//! key: plain HTTP/1.1 carries the client's authority in Host, so its URI names the address
//! dialled (one bounded pool per upstream whatever Host values clients send); HTTP/2
//! (`:authority`) and TLS (SNI) need the name.

use http::Uri;

use super::{Error, Exchange, Step};
use crate::policy::Direction;

/// See the module docs.
#[derive(Clone, Copy)]
pub(crate) struct Target;

impl Step for Target {
    fn step(&self, ex: &mut Exchange) -> Result<(), Error> {
        let conn = &*ex.rec.conn;
        let route = &conn.route;
        // The original authority (the connector dials the upstream regardless), or the
        // configured TLS server name, which is what the upstream certificate must match.
        let original = ex
            .rec
            .host
            .as_deref()
            .filter(|h| h.parse::<http::uri::Authority>().is_ok())
            .map(str::to_owned)
            .unwrap_or_else(|| route.target.to_string());
        let use_h2 = ex.rec.h2 && conn.shared.settings.h2_upstream;
        let authority = match &route.server_name {
            Some(name) => format!("{name}:{}", route.target.port()),
            None if !use_h2 && !route.https => route.target.to_string(),
            None => original.clone(),
        };
        let uri = Uri::builder()
            .scheme(if route.https { "https" } else { "http" })
            .authority(authority)
            .path_and_query(ex.rec.path.as_str())
            .build();
        match uri {
            Ok(uri) => {
                *ex.req.uri_mut() = uri;
                ex.authority = original;
                Ok(())
            }
            Err(_) => {
                // Recorded with the remote side's identity only, as it always was.
                let remote = match route.dir {
                    Direction::Ingress => ex.rec.identities.0,
                    Direction::Egress => ex.rec.identities.1,
                };
                ex.rec.identities = (remote, 0);
                Err(Error::Unforwardable)
            }
        }
    }
}
