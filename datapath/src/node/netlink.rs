//! The few rtnetlink requests the overlay needs: read a device by name, create the VXLAN
//! collect_md device, set a device's MTU and bring it up, delete a device. Synchronous,
//! one `NETLINK_ROUTE` socket per request (they are rare: at agent start and on a mode
//! change), with netlink-packet-route's message types. The socket belongs to the calling
//! thread's network namespace, which is where the device is created.

use std::io;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::{
    link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// A device as the kernel reports it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Link {
    pub index: u32,
    pub mtu: u32,
    pub mac: Vec<u8>,
    pub kind: Option<InfoKind>,
    /// The VXLAN attributes, when it is a VXLAN device.
    pub vxlan: Vec<InfoVxlan>,
}

/// Send one request and collect the messages of its answer, until the kernel's
/// acknowledgement (or its error, returned as the errno it carries).
fn request(msg: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    header.sequence_number = 1;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;

    let mut answer = Vec::new();
    let mut rx = Vec::with_capacity(64 * 1024);
    loop {
        rx.clear();
        let size = socket.recv(&mut rx, 0)?;
        let mut offset = 0;
        while offset < size {
            let m: NetlinkMessage<RouteNetlinkMessage> =
                NetlinkMessage::deserialize(&rx[offset..size])
                    .map_err(|e| io::Error::other(format!("rtnetlink answer: {e}")))?;
            let len = m.header.length as usize;
            match m.payload {
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(io::Error::from_raw_os_error(-e.raw_code()))
                }
                NetlinkPayload::Error(_) | NetlinkPayload::Done(_) => return Ok(answer),
                NetlinkPayload::InnerMessage(inner) => answer.push(inner),
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
    }
}

/// The device named `name`, or `None` when there is none.
pub(crate) fn link_by_name(name: &str) -> io::Result<Option<Link>> {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
    let answer = match request(RouteNetlinkMessage::GetLink(msg), 0) {
        Ok(a) => a,
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Ok(None),
        Err(e) => return Err(e),
    };
    let Some(RouteNetlinkMessage::NewLink(m)) = answer.into_iter().next() else {
        return Ok(None);
    };
    let mut link = Link {
        index: m.header.index,
        ..Link::default()
    };
    for a in m.attributes {
        match a {
            LinkAttribute::Mtu(mtu) => link.mtu = mtu,
            LinkAttribute::Address(mac) => link.mac = mac,
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => link.kind = Some(k),
                        LinkInfo::Data(InfoData::Vxlan(v)) => link.vxlan = v,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(Some(link))
}

/// Create `name`: a VXLAN device in collect_md mode (`external`: the tunnel key comes
/// with each packet) on UDP `port`, without learning, with `mtu`.
pub(crate) fn add_vxlan(name: &str, port: u16, mtu: u32) -> io::Result<()> {
    let mut msg = LinkMessage::default();
    msg.attributes = vec![
        LinkAttribute::IfName(name.to_owned()),
        LinkAttribute::Mtu(mtu),
        LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vec![
                InfoVxlan::CollectMetadata(true),
                InfoVxlan::Port(port),
                InfoVxlan::Learning(false),
            ])),
        ]),
    ];
    request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL).map(drop)
}

/// Set device `index`'s MTU and bring it up.
pub(crate) fn set_up_with_mtu(index: u32, mtu: u32) -> io::Result<()> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
    msg.attributes.push(LinkAttribute::Mtu(mtu));
    request(RouteNetlinkMessage::SetLink(msg), 0).map(drop)
}

/// Delete device `index`.
pub(crate) fn del_link(index: u32) -> io::Result<()> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    request(RouteNetlinkMessage::DelLink(msg), 0).map(drop)
}
