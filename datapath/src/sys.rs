//! The raw `bpf(2)` commands aya 0.14 does not expose for our use:
//! creating a cgroup link for a `cgroup/getsockopt` program and pinning it
//! (aya's `CgroupSockoptLink` cannot be turned into a pinnable `FdLink`, and
//! an unpinned link would detach when the agent exits), and attaching the
//! sk_msg program to the sockhash without a process-held link (aya's link
//! keeps duplicated fds of the program and the map open, which would keep a
//! torn-down map alive for as long as the agent runs). The only other
//! module allowed `unsafe`, besides the `Pod` impls in `abi`.
#![allow(unsafe_code)]

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

/// `BPF_PROG_ATTACH` from `enum bpf_cmd`.
const BPF_PROG_ATTACH: libc::c_long = 8;
/// `BPF_SK_MSG_VERDICT` from `enum bpf_attach_type`.
pub const BPF_SK_MSG_VERDICT: u32 = 7;
/// `BPF_OBJ_PIN` from `enum bpf_cmd`.
const BPF_OBJ_PIN: libc::c_long = 6;
/// `BPF_LINK_CREATE` from `enum bpf_cmd`.
const BPF_LINK_CREATE: libc::c_long = 28;
/// `BPF_CGROUP_GETSOCKOPT` from `enum bpf_attach_type`.
pub const BPF_CGROUP_GETSOCKOPT: u32 = 21;

/// The `link_create` member of `union bpf_attr`, zero-padded to the union's size.
#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    rest: [u8; 128],
}
const _: () = assert!(size_of::<LinkCreateAttr>() == 144);

/// The `obj_pin` member of `union bpf_attr`, zero-padded to the union's size.
#[repr(C)]
struct ObjPinAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    rest: [u8; 124],
}
const _: () = assert!(size_of::<ObjPinAttr>() == 144);

/// The `prog_attach` member of `union bpf_attr`, zero-padded to the union's size.
#[repr(C)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    rest: [u8; 128],
}
const _: () = assert!(size_of::<ProgAttachAttr>() == 144);

/// Attach `prog` to the map `target` (e.g. sk_msg to a sockhash). The
/// attachment lives in the map, not in this process.
pub fn prog_attach(
    prog: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<()> {
    let mut attr = ProgAttachAttr {
        target_fd: fd_u32(target)?,
        attach_bpf_fd: fd_u32(prog)?,
        attach_type,
        attach_flags: 0,
        rest: [0; 128],
    };
    // SAFETY: `attr` is a live, fully initialised `union bpf_attr`-sized
    // buffer for the duration of the call and the size passed matches it;
    // the kernel only reads it. Returns 0 or -1.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &mut attr as *mut ProgAttachAttr,
            size_of::<ProgAttachAttr>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Attach `prog` to `cgroup` with a new bpf_link of `attach_type` and pin the
/// link at `pin`, so the attachment outlives this process.
pub fn link_create_pinned(
    prog: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    attach_type: u32,
    flags: u32,
    pin: &Path,
) -> io::Result<()> {
    let mut attr = LinkCreateAttr {
        prog_fd: fd_u32(prog)?,
        target_fd: fd_u32(cgroup)?,
        attach_type,
        flags,
        rest: [0; 128],
    };
    // SAFETY: `attr` is a live, fully initialised `union bpf_attr`-sized
    // buffer for the duration of the call and the size passed matches it; the
    // kernel only reads it. The returned value is a new fd or -1.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            &mut attr as *mut LinkCreateAttr,
            size_of::<LinkCreateAttr>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let raw = i32::try_from(ret).map_err(|_| io::Error::other("bpf_link_create: fd overflow"))?;
    // SAFETY: a non-negative return from BPF_LINK_CREATE is a new fd that
    // nothing else owns; OwnedFd closes it once the link is pinned.
    let link = unsafe { OwnedFd::from_raw_fd(raw) };

    let path = CString::new(pin.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pin path contains NUL"))?;
    let mut attr = ObjPinAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: fd_u32(link.as_fd())?,
        file_flags: 0,
        path_fd: 0,
        rest: [0; 124],
    };
    // SAFETY: as above; `pathname` points at `path`, a NUL-terminated string
    // that outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            &mut attr as *mut ObjPinAttr,
            size_of::<ObjPinAttr>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn fd_u32(fd: BorrowedFd<'_>) -> io::Result<u32> {
    u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::other("negative fd"))
}

/// `SO_NETNS_COOKIE` from `asm-generic/socket.h` (Linux 5.14+).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The cookie of the network namespace `netns` (a `/run/netns/NAME` or
/// `/proc/PID/ns/net` file): asked of a socket made inside it, on a thread
/// of its own that enters the namespace and ends (`setns` changes only the
/// calling thread's namespace).
pub fn netns_cookie(netns: &Path) -> io::Result<u64> {
    let ns = std::fs::File::open(netns)?;
    std::thread::scope(|s| {
        s.spawn(|| -> io::Result<u64> {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
            let sock = nix::sys::socket::socket(
                nix::sys::socket::AddressFamily::Unix,
                nix::sys::socket::SockType::Datagram,
                nix::sys::socket::SockFlag::SOCK_CLOEXEC,
                None,
            )?;
            let mut cookie: u64 = 0;
            let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
            // SAFETY: `cookie` and `len` are valid for the kernel to write
            // `len` bytes; the fd is open for the call's duration.
            let rc = unsafe {
                libc::getsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    SO_NETNS_COOKIE,
                    (&mut cookie as *mut u64).cast(),
                    &mut len,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(cookie)
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("netns cookie thread panicked")))
    })
}
