//! Host check: which authority the client addressed (`:authority` on HTTP/2, else Host),
//! and the requests no authority makes forwardable: CONNECT, and a missing or repeated Host.

use http::header;
use http::{Method, Version};

use super::{Error, Exchange, Step};

/// See the module docs.
#[derive(Clone, Copy)]
pub(crate) struct HostCheck;

impl Step for HostCheck {
    fn step(&self, ex: &mut Exchange) -> Result<(), Error> {
        let req = &mut ex.req;
        let authority = ex.rec.h2 && req.uri().authority().is_some();
        if authority {
            // :authority is the target (RFC 9113 §8.3.1); a Host header beside it is not
            // what the policy matches, so it must not be what an HTTP/1.1 upstream routes
            // on either.
            req.headers_mut().remove(header::HOST);
        }
        ex.rec.host = if authority {
            req.uri().authority().map(|a| a.as_str().to_owned())
        } else {
            req.headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        if req.method() == Method::CONNECT {
            return Err(Error::Connect);
        }
        // HTTP/1.1 requires exactly one Host (RFC 9112 §3.2); none may have two (which one
        // would the upstream read?).
        let hosts = req.headers().get_all(header::HOST).iter().count();
        if hosts > 1 || (req.version() == Version::HTTP_11 && hosts != 1) {
            return Err(Error::Host);
        }
        Ok(())
    }
}
