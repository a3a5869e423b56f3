//! The handover protocol on the wire: one JSON object per line over a unix stream socket;
//! the listening sockets ride on the `sockets` message as SCM_RIGHTS ancillary data (sent
//! with its first byte, so they arrive with the first read of it).

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use tokio::io::Interest;
use tokio::net::UnixStream;

use super::HandoverError;
use crate::listeners::Role;

/// The protocol's version: both sides must speak the same.
pub(super) const VERSION: u32 = 1;

/// Most sockets one process hands over (the fixed roles plus capture addresses).
pub(super) const MAX_SOCKETS: usize = 32;

/// Longest message accepted.
const MAX_MESSAGE: usize = 64 * 1024;

/// A socket as the `sockets` message describes it; the descriptors follow in this order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Described {
    pub role: Role,
    pub addr: SocketAddr,
}

/// The messages, in the order they are exchanged.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(super) enum Message {
    /// New → running: which protocol it speaks, and who it is.
    Hello { version: u32, pid: u32 },
    /// Running → new: every listening socket, with the running process's restart epoch.
    Sockets {
        version: u32,
        pid: u32,
        epoch: u64,
        sockets: Vec<Described>,
    },
    /// New → running: serving on the sockets now; stop accepting and drain.
    Drain { pid: u32 },
    /// Running → new: draining.
    Draining,
    /// Running → new: the handover cannot happen (e.g. another version of the protocol).
    Refused { reason: String },
}

impl Message {
    fn name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Sockets { .. } => "sockets",
            Message::Drain { .. } => "drain",
            Message::Draining => "draining",
            Message::Refused { .. } => "refused",
        }
    }
}

/// One end of a handover connection.
pub(super) struct Conn {
    stream: UnixStream,
    /// Bytes read past the last complete line.
    buf: Vec<u8>,
}

impl Conn {
    pub(super) fn new(stream: UnixStream) -> Self {
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Sends `msg`, with `fds` attached to its first byte.
    pub(super) async fn send(
        &self,
        msg: &Message,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), HandoverError> {
        let mut line = serde_json::to_vec(msg).map_err(|e| HandoverError::Protocol {
            what: format!("cannot encode {}: {e}", msg.name()),
        })?;
        line.push(b'\n');
        let io = |e| HandoverError::Io {
            doing: "sending",
            message: msg.name(),
            source: e,
        };
        let mut sent = 0;
        while sent < line.len() {
            let rest = &line[sent..];
            // The descriptors go with the first write only.
            let fds = if sent == 0 { fds } else { &[] };
            sent += self
                .stream
                .async_io(Interest::WRITABLE, || {
                    send_some(self.stream.as_fd(), rest, fds)
                })
                .await
                .map_err(io)?;
        }
        Ok(())
    }

    /// Receives the next message and the descriptors that came with it.
    pub(super) async fn recv(&mut self) -> Result<(Message, Vec<OwnedFd>), HandoverError> {
        let mut fds = Vec::new();
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                let msg =
                    serde_json::from_slice(&line[..end]).map_err(|e| HandoverError::Protocol {
                        what: format!(
                            "unreadable message {:?}: {e}",
                            String::from_utf8_lossy(&line[..end.min(200)])
                        ),
                    })?;
                return Ok((msg, fds));
            }
            if self.buf.len() > MAX_MESSAGE {
                return Err(HandoverError::Protocol {
                    what: format!("a message longer than {MAX_MESSAGE} bytes"),
                });
            }
            let (data, got) = self
                .stream
                .async_io(Interest::READABLE, || recv_some(self.stream.as_fd()))
                .await
                .map_err(|e| HandoverError::Io {
                    doing: "receiving",
                    message: "a message",
                    source: e,
                })?;
            fds.extend(got);
            if data.is_empty() {
                return Err(HandoverError::Closed);
            }
            self.buf.extend_from_slice(&data);
        }
    }
}

fn send_some(fd: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> std::io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(std::io::Error::other(format!(
            "{} sockets are more than the {MAX_SOCKETS} a handover carries",
            fds.len()
        )));
    }
    let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
    Ok(rustix::net::sendmsg(
        fd,
        &[IoSlice::new(data)],
        &mut control,
        flags,
    )?)
}

fn recv_some(fd: BorrowedFd<'_>) -> std::io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut data = [0u8; 4096];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        fd,
        &mut [IoSliceMut::new(&mut data)],
        &mut control,
        RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = msg {
            fds.extend(received);
        }
    }
    if got.flags.contains(ReturnFlags::CTRUNC) {
        // Some descriptors were dropped by the kernel: the set is incomplete.
        return Err(std::io::Error::other(format!(
            "more sockets than the {MAX_SOCKETS} a handover carries"
        )));
    }
    Ok((data[..got.bytes].to_vec(), fds))
}
