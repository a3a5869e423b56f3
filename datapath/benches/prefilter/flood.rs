//! The flood (`prefilter flood ...`, run in the peer namespace): pre-built Ethernet/IPv4/UDP
//! frames from many sources, one sender thread per CPU of the process's affinity, each
//! pinned to its CPU, for a fixed time; and the CPU the window cost, system-wide and the
//! benchmark's own.
//!
//! Three senders, so a run can show which moves the most packets per CPU here:
//! - `udp`: a UDP socket, one `send` per datagram (the first version's load; one source);
//! - `mmsg`: an `AF_PACKET` raw socket bound to the device with `PACKET_QDISC_BYPASS`,
//!   the frames sent `BATCH` at a time with `sendmmsg`;
//! - `ring`: the same socket with a `PACKET_TX_RING` (TPACKET_V2): the frames stay in the
//!   shared ring, and one `send` hands the kernel a batch of them.
//!
//! On a veth pair the receiver's path (veth's NAPI and XDP, or the backlog, tc, nftables
//! and the stack) runs in softirq on the sending CPU, so the senders' CPUs pay for both
//! sides: the CPU per packet, not the rate alone, tells the filters apart.
//!
//! This module is the benchmark's only unsafe code: raw packet sockets, `sendmmsg` and the
//! mmap'ed TX ring have no safe wrapper in the workspace's libraries (nix has no
//! `PACKET_QDISC_BYPASS` or TX ring).
#![allow(unsafe_code)]

use std::ffi::CString;
use std::net::{Ipv4Addr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// Frames a sender cycles through (distinct source address and port each).
const FLOWS: usize = 256;
/// Frames per `sendmmsg` call or per ring flush.
const BATCH: usize = 64;
/// UDP payload bytes (a 60-byte frame, Ethernet's minimum without the FCS).
const PAYLOAD: usize = 18;

/// How the frames are put on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender {
    /// A UDP socket, one `send` per datagram.
    Udp,
    /// `AF_PACKET`, `PACKET_QDISC_BYPASS`, `sendmmsg` batches.
    Mmsg,
    /// `AF_PACKET`, `PACKET_QDISC_BYPASS`, `PACKET_TX_RING`.
    Ring,
}

impl Sender {
    /// Every sender, in the order the page lists them.
    pub const ALL: [Sender; 3] = [Sender::Udp, Sender::Mmsg, Sender::Ring];

    /// Its name on the command line and the page.
    pub fn name(self) -> &'static str {
        match self {
            Sender::Udp => "udp",
            Sender::Mmsg => "mmsg",
            Sender::Ring => "ring",
        }
    }

    /// What it does, for the page.
    pub fn describe(self) -> String {
        match self {
            Sender::Udp => "a UDP socket, one send per datagram, one source address".into(),
            Sender::Mmsg => {
                format!("AF_PACKET with PACKET_QDISC_BYPASS, sendmmsg of {BATCH} pre-built frames")
            }
            Sender::Ring => format!(
                "AF_PACKET with PACKET_QDISC_BYPASS and a PACKET_TX_RING (TPACKET_V2), \
                 {BATCH} pre-built frames per send"
            ),
        }
    }
}

impl std::str::FromStr for Sender {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Sender::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .with_context(|| format!("sender {s:?}: expected udp, mmsg or ring"))
    }
}

/// What one flood did, as its last line of output says it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Outcome {
    /// Frames the senders handed to the kernel without an error.
    pub sent: u64,
    /// The window's length.
    pub secs: f64,
    /// Busy CPU of the whole machine over the window (user, nice, system, irq and
    /// softirq of `/proc/stat`), ns.
    pub busy_ns: f64,
    /// The flood process's CPU (its threads' user and system time, which includes the
    /// softirqs served while they ran: tick accounting without IRQ_TIME_ACCOUNTING
    /// charges them to the interrupted task) plus the ksoftirqd threads', ns.
    pub own_ns: f64,
    /// Sender threads.
    pub threads: usize,
}

impl Outcome {
    /// The line the flood prints.
    pub fn line(&self) -> String {
        format!(
            "sent={} secs={} busy_ns={} own_ns={} threads={}",
            self.sent, self.secs, self.busy_ns, self.own_ns, self.threads
        )
    }

    /// Reads [`Outcome::line`] back.
    pub fn parse(s: &str) -> Result<Outcome> {
        let mut o = Outcome::default();
        for kv in s.split_whitespace() {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("flood said {s:?}"))?;
            match k {
                "sent" => o.sent = v.parse()?,
                "secs" => o.secs = v.parse()?,
                "busy_ns" => o.busy_ns = v.parse()?,
                "own_ns" => o.own_ns = v.parse()?,
                "threads" => o.threads = v.parse()?,
                _ => bail!("flood said {s:?}: unknown {k}"),
            }
        }
        Ok(o)
    }
}

/// The Ethernet/IPv4/UDP frame from `src:sport` to `dst:9`, IPv4 checksum set (UDP's 0,
/// none, which IPv4 allows). The destination MAC is not the receiving device's: a frame
/// no filter drops is dropped by the stack at its first IPv4 check (not for this host).
pub fn frame(src: Ipv4Addr, sport: u16, dst: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    let total = (20 + 8 + PAYLOAD) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&9u16.to_be_bytes());
    f.extend_from_slice(&((8 + PAYLOAD) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&[0u8; PAYLOAD]);
    f
}

/// The Internet checksum of `data` (an IPv4 header: even length).
fn checksum(data: &[u8]) -> u16 {
    let mut acc: u32 = data
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// A flood's settings.
pub struct Flood {
    /// The sender.
    pub sender: Sender,
    /// The device the raw senders write to (the peer's end of the veth pair).
    pub dev: String,
    /// Source addresses, cycled through (the UDP sender uses the first only: it can bind
    /// no other).
    pub srcs: Vec<Ipv4Addr>,
    /// The destination.
    pub dst: Ipv4Addr,
    /// How long.
    pub secs: f64,
}

/// `flood --sender K --dev D --src A[,B-C...] --dst A --secs S`.
pub fn parse(args: &[String]) -> Result<Flood> {
    let mut f = Flood {
        sender: Sender::Mmsg,
        dev: String::new(),
        srcs: Vec::new(),
        dst: Ipv4Addr::UNSPECIFIED,
        secs: 1.0,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it
            .next()
            .with_context(|| format!("flood: {a} needs a value"))?;
        match a.as_str() {
            "--sender" => f.sender = v.parse()?,
            "--dev" => f.dev = v.clone(),
            "--src" => {
                for part in v.split(',') {
                    let bad = || format!("--src {part:?}: expected A or A-B (IPv4)");
                    let (a, b) = part.split_once('-').unwrap_or((part, part));
                    let a: Ipv4Addr = a.parse().with_context(bad)?;
                    let b: Ipv4Addr = b.parse().with_context(bad)?;
                    for n in u32::from(a)..=u32::from(b) {
                        let ip = Ipv4Addr::from(n);
                        if !f.srcs.contains(&ip) {
                            f.srcs.push(ip);
                        }
                    }
                }
            }
            "--dst" => f.dst = v.parse()?,
            "--secs" => f.secs = v.parse()?,
            other => bail!("flood: unknown option {other}"),
        }
    }
    if f.srcs.is_empty() || f.dev.is_empty() {
        bail!("flood: --src and --dev are required");
    }
    Ok(f)
}

/// Runs the flood: one pinned sender per CPU, the window measured between all being
/// ready and all having stopped.
pub fn run(f: &Flood) -> Result<Outcome> {
    let mine = sched_getaffinity(Pid::from_raw(0))?;
    let cpus: Vec<usize> = (0..CpuSet::count())
        .filter(|c| mine.is_set(*c).unwrap_or(false))
        .collect();
    let ready = Arc::new(Barrier::new(cpus.len() + 1));
    let go = Arc::new(Barrier::new(cpus.len() + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let ifindex = if f.sender == Sender::Udp {
        0
    } else {
        let name = CString::new(f.dev.clone())?;
        // SAFETY: a NUL-terminated name; the call only reads it.
        let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if i == 0 {
            bail!("flood: no device {}", f.dev);
        }
        i as i32
    };
    let mut threads = Vec::new();
    for (t, cpu) in cpus.iter().copied().enumerate() {
        // Each thread its own slice of the flows, so the threads' frames differ too.
        let frames: Vec<Vec<u8>> = (0..FLOWS)
            .map(|k| {
                let n = t * FLOWS + k;
                frame(f.srcs[n % f.srcs.len()], 1024 + n as u16, f.dst)
            })
            .collect();
        let (ready, go, stop) = (ready.clone(), go.clone(), stop.clone());
        let (sender, src, dst) = (f.sender, f.srcs[0], f.dst);
        threads.push(std::thread::spawn(move || -> Result<u64> {
            let setup = (|| -> Result<Box<dyn Burst>> {
                let mut set = CpuSet::new();
                set.set(cpu)?;
                sched_setaffinity(Pid::from_raw(0), &set)?;
                Ok(match sender {
                    Sender::Udp => Box::new(Udp::new(src, dst)?),
                    Sender::Mmsg => Box::new(Mmsg::new(ifindex, frames)?),
                    Sender::Ring => Box::new(TxRing::new(ifindex, frames)?),
                })
            })();
            // Through both barriers even when the setup failed, so nobody waits for it.
            ready.wait();
            go.wait();
            let mut send = setup.with_context(|| format!("sender on CPU {cpu}"))?;
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) {
                match send.burst() {
                    Ok(n) => sent += n,
                    // The device's queue is full: try again.
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
                    Err(e) => bail!("{} sender on CPU {cpu}: {e}", sender.name()),
                }
            }
            Ok(sent)
        }));
    }
    ready.wait();
    let before = Cpu::read()?;
    let t0 = Instant::now();
    go.wait();
    std::thread::sleep(Duration::from_secs_f64(f.secs));
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    let mut failed = None;
    for t in threads {
        match t.join() {
            Ok(Ok(n)) => sent += n,
            Ok(Err(e)) => failed = Some(e),
            Err(_) => failed = Some(anyhow::anyhow!("a sender thread panicked")),
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let after = Cpu::read()?;
    if let Some(e) = failed {
        return Err(e);
    }
    let tick_ns = 1e9 / clock_ticks();
    Ok(Outcome {
        sent,
        secs,
        busy_ns: (after.busy - before.busy) as f64 * tick_ns,
        own_ns: (after.own - before.own) as f64 * tick_ns,
        threads: cpus.len(),
    })
}

/// Clock ticks per second (`USER_HZ`), the unit of `/proc/stat` and `/proc/PID/stat`.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU counters, in clock ticks.
struct Cpu {
    busy: u64,
    own: u64,
}

impl Cpu {
    fn read() -> Result<Cpu> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let cpu: Vec<u64> = stat
            .lines()
            .next()
            .context("/proc/stat is empty")?
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        // user nice system idle iowait irq softirq steal ...
        let busy = [0, 1, 2, 5, 6]
            .iter()
            .map(|i| cpu.get(*i).unwrap_or(&0))
            .sum();
        let mut own = task_ticks("/proc/self/stat").context("/proc/self/stat")?;
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let p = entry.path();
            let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
            if comm.starts_with("ksoftirqd/") {
                own += task_ticks(p.join("stat")).unwrap_or(0);
            }
        }
        Ok(Cpu { busy, own })
    }
}

/// utime + stime of a `/proc/PID/stat` (fields 14 and 15).
fn task_ticks(path: impl AsRef<std::path::Path>) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// One sender's unit of work.
trait Burst {
    /// Sends up to `BATCH` frames; how many the kernel took.
    fn burst(&mut self) -> std::io::Result<u64>;
}

/// One `send` per datagram.
struct Udp {
    sock: UdpSocket,
}

impl Udp {
    fn new(src: Ipv4Addr, dst: Ipv4Addr) -> Result<Udp> {
        let sock = UdpSocket::bind((src, 0))?;
        sock.connect((dst, 9))?;
        Ok(Udp { sock })
    }
}

impl Burst for Udp {
    fn burst(&mut self) -> std::io::Result<u64> {
        let buf = [0u8; PAYLOAD];
        let mut n = 0;
        for _ in 0..BATCH {
            match self.sock.send(&buf) {
                Ok(_) => n += 1,
                // ENOBUFS: the queue is full; ECONNREFUSED: an ICMP port unreachable for
                // an earlier datagram (one that no filter dropped) reported on this one.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::ECONNREFUSED)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }
}

/// An owned file descriptor closed on drop.
struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours and closed once.
        unsafe { libc::close(self.0) };
    }
}

fn setsockopt<T>(fd: &Fd, level: libc::c_int, opt: libc::c_int, v: &T, what: &str) -> Result<()> {
    // SAFETY: `v` is a live `T` of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd.0,
            level,
            opt,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r != 0 {
        bail!("{what}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// A raw packet socket that receives nothing (protocol 0), writes to `ifindex` past the
/// qdisc, set up by `more` (the TX ring) before it is bound.
fn packet_socket(ifindex: i32, more: impl FnOnce(&Fd) -> Result<()>) -> Result<Fd> {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
    }
    let fd = Fd(fd);
    setsockopt(
        &fd,
        libc::SOL_PACKET,
        libc::PACKET_QDISC_BYPASS,
        &1i32,
        "PACKET_QDISC_BYPASS",
    )?;
    more(&fd)?;
    // SAFETY: zeroed sockaddr_ll is valid; the fields are set below.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = ifindex;
    // SAFETY: `sll` is a sockaddr_ll of the size passed.
    let r = unsafe {
        libc::bind(
            fd.0,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if r != 0 {
        bail!("bind AF_PACKET: {}", std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// `sendmmsg` of `BATCH` frames a call, cycling through the frames.
struct Mmsg {
    fd: Fd,
    // The headers point into `iov`, whose entries point into `frames`: both are kept
    // here, and neither is changed after the headers were built.
    hdrs: Vec<libc::mmsghdr>,
    _iov: Vec<libc::iovec>,
    _frames: Vec<Vec<u8>>,
    at: usize,
}

impl Mmsg {
    fn new(ifindex: i32, frames: Vec<Vec<u8>>) -> Result<Mmsg> {
        let fd = packet_socket(ifindex, |_| Ok(()))?;
        let mut iov: Vec<libc::iovec> = frames
            .iter()
            .map(|f| libc::iovec {
                iov_base: f.as_ptr() as *mut libc::c_void,
                iov_len: f.len(),
            })
            .collect();
        let hdrs = iov
            .iter_mut()
            .map(|v| {
                // SAFETY: a zeroed msghdr is valid (no name, no control data).
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = std::ptr::from_mut(v);
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        Ok(Mmsg {
            fd,
            hdrs,
            _iov: iov,
            _frames: frames,
            at: 0,
        })
    }
}

impl Burst for Mmsg {
    fn burst(&mut self) -> std::io::Result<u64> {
        let n = BATCH.min(self.hdrs.len() - self.at);
        // SAFETY: `n` headers from `at`, each pointing to one live iovec of a live frame.
        let r = unsafe {
            libc::sendmmsg(
                self.fd.0,
                self.hdrs[self.at..].as_mut_ptr(),
                n as libc::c_uint,
                0,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.at = (self.at + n) % self.hdrs.len();
        Ok(r as u64)
    }
}

/// Ring geometry: 128-byte slots (the header and a 60-byte frame), 32 to a page.
const SLOT: usize = 128;
const BLOCK: usize = 4096;
const BLOCKS: usize = 64;

/// A `PACKET_TX_RING` of `BLOCKS` pages, every slot holding one of the frames from the
/// start; a burst marks the next `BATCH` free slots for sending and flushes them with one
/// `send`.
struct TxRing {
    base: *mut u8,
    len: usize,
    slots: usize,
    at: usize,
    // Dropped after the mapping (fields drop in order): unmap, then close.
    fd: Fd,
}

impl Drop for TxRing {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours and unmapped once.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

impl TxRing {
    fn new(ifindex: i32, frames: Vec<Vec<u8>>) -> Result<TxRing> {
        let fd = packet_socket(ifindex, |fd| {
            let v2 = libc::tpacket_versions::TPACKET_V2 as libc::c_int;
            setsockopt(
                fd,
                libc::SOL_PACKET,
                libc::PACKET_VERSION,
                &v2,
                "PACKET_VERSION",
            )?;
            let req = libc::tpacket_req {
                tp_block_size: BLOCK as u32,
                tp_block_nr: BLOCKS as u32,
                tp_frame_size: SLOT as u32,
                tp_frame_nr: (BLOCK / SLOT * BLOCKS) as u32,
            };
            setsockopt(
                fd,
                libc::SOL_PACKET,
                libc::PACKET_TX_RING,
                &req,
                "PACKET_TX_RING",
            )
        })?;
        let len = BLOCK * BLOCKS;
        // SAFETY: maps the ring the socket just set up, shared with the kernel.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.0,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            bail!("mmap PACKET_TX_RING: {}", std::io::Error::last_os_error());
        }
        let ring = TxRing {
            base: base.cast(),
            len,
            slots: len / SLOT,
            at: 0,
            fd,
        };
        // TPACKET_V2 without PACKET_TX_HAS_OFF: the frame starts this far into its slot.
        let data = libc::TPACKET2_HDRLEN - std::mem::size_of::<libc::sockaddr_ll>();
        for i in 0..ring.slots {
            let f = &frames[i % frames.len()];
            // SAFETY: slot `i` lies inside the mapping, and the kernel does not touch a
            // slot whose status is AVAILABLE, as all are before the first send.
            unsafe {
                let slot = ring.base.add(i * SLOT);
                std::ptr::copy_nonoverlapping(f.as_ptr(), slot.add(data), f.len());
                let hdr = slot.cast::<libc::tpacket2_hdr>();
                std::ptr::addr_of_mut!((*hdr).tp_len).write_volatile(f.len() as u32);
            }
        }
        Ok(ring)
    }
}

impl Burst for TxRing {
    fn burst(&mut self) -> std::io::Result<u64> {
        let mut marked = 0;
        for k in 0..BATCH {
            let i = (self.at + k) % self.slots;
            // SAFETY: the status word of slot `i`, inside the mapping and aligned; the
            // kernel writes it too, so it is accessed atomically.
            let status = unsafe { AtomicU32::from_ptr(self.base.add(i * SLOT).cast::<u32>()) };
            let st = status.load(Ordering::Acquire);
            if st & libc::TP_STATUS_WRONG_FORMAT != 0 {
                return Err(std::io::Error::other(format!(
                    "the TX ring refused slot {i} (status {st:#x})"
                )));
            }
            if st & (libc::TP_STATUS_SEND_REQUEST | libc::TP_STATUS_SENDING) != 0 {
                // Still being sent: flush what is marked, come back to it.
                break;
            }
            status.store(libc::TP_STATUS_SEND_REQUEST, Ordering::Release);
            marked += 1;
        }
        self.at = (self.at + marked) % self.slots;
        // SAFETY: send(2) with no buffer flushes the ring's marked slots.
        let r = unsafe { libc::send(self.fd.0, std::ptr::null(), 0, 0) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(marked as u64)
    }
}
