//! The maps user space programs: L3/L4 policy ([`policy`]), the service load balancer
//! ([`service`]) and the splice's sockhash and port hints ([`splice`]), with the key
//! encodings they share.

use super::*;

pub(crate) mod policy;
pub(crate) mod service;
pub(crate) mod splice;

/// An address as the kernel side keys it (see [`abi::encode_ip`]).
pub(crate) fn ip_key(ip: IpAddr) -> MbIpKey {
    let (ip, family) = abi::encode_ip(ip);
    MbIpKey {
        ip,
        family,
        pad: [0; 3],
    }
}

/// A socket address as the kernel side keys it (see [`abi::encode_ip`]).
pub(crate) fn addr_port(a: SocketAddr) -> MbAddrPort {
    let (ip, family) = abi::encode_ip(a.ip());
    MbAddrPort {
        ip,
        port: a.port(),
        family,
        pad: 0,
    }
}

pub(crate) fn socket_addr(a: MbAddrPort) -> SocketAddr {
    SocketAddr::new(abi::decode_ip(a.ip, a.family), a.port)
}
