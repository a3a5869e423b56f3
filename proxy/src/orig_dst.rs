//! The original destination of a redirected connection (iptables/nftables `REDIRECT`):
//! `SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`, read from conntrack through `nix`'s safe
//! wrapper. This is the one interface transparent capture uses; a datapath-provided
//! original-destination map would be a second implementation of [`original_dst`].

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use nix::sys::socket::{getsockopt, sockopt};
use tokio::net::TcpStream;

/// The address the client dialled before NAT redirected it here; `None` when the socket was
/// not redirected (or conntrack has no entry).
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    match stream.local_addr().ok()? {
        SocketAddr::V4(_) => {
            let sa = getsockopt(stream, sockopt::OriginalDst).ok()?;
            let ip = Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sa.sin_port),
            )))
        }
        SocketAddr::V6(_) => {
            let sa = getsockopt(stream, sockopt::Ip6tOriginalDst).ok()?;
            let ip = Ipv6Addr::from(sa.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sa.sin6_port),
                0,
                0,
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_direct_connection_has_no_other_original_destination() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _c = TcpStream::connect(addr).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        // Without NAT, conntrack (if loaded) reports the address itself; else nothing.
        let o = original_dst(&s);
        assert!(o.is_none() || o == Some(addr), "{o:?}");
    }
}
