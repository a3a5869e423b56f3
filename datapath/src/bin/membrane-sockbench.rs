//! `membrane-sockbench`: small TCP workloads for the datapath's privileged
//! tests and `bench/sockmap.sh`: echo/sink/digest/hello servers, checksummed
//! echo and upload clients, request/response latency and stream throughput clients, and a
//! minimal capture proxy that asks the kernel for `SO_ORIGINAL_DST`.
//! Servers print `READY` on stdout once listening. Loopback/netns use only.

use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::OwnedFd,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};

#[derive(Parser)]
#[command(about = "TCP workloads for membrane datapath tests and benchmarks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Echo every byte back, one thread per connection.
    Echo {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Read and discard.
    Sink {
        #[arg(long)]
        listen: SocketAddr,
        /// First send "HELLO\n", as a server that speaks first does.
        #[arg(long)]
        greet: bool,
    },
    /// Read each connection to its end, then answer "GOT bytes=<n>
    /// fnv=<hash>" for what came (the checksum side of `upload`).
    Digest {
        #[arg(long)]
        listen: SocketAddr,
        /// First send "HELLO\n" (so the client has received something).
        #[arg(long)]
        greet: bool,
        /// Wait this long before reading (lets sent bytes pile up unread).
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
    },
    /// Write "hello from <local addr>\n" to each connection and close it.
    Hello {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Send pseudo-random bytes to an echo server and verify what comes back.
    Client {
        #[arg(long)]
        connect: SocketAddr,
        /// Bytes per round.
        #[arg(long, default_value_t = 1 << 20)]
        bytes: usize,
        /// Write size.
        #[arg(long, default_value_t = 16384)]
        chunk: usize,
        /// Rounds on the same connection.
        #[arg(long, default_value_t = 1)]
        rounds: u32,
        /// Before each round after the first, wait (at most 20 s) for this file.
        #[arg(long)]
        gate: Option<PathBuf>,
    },
    /// Request/response latency against an echo server.
    Rr {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long, default_value_t = 1)]
        size: usize,
        #[arg(long, default_value_t = 20000)]
        iters: u32,
    },
    /// Send a known pattern in writes of `--write` bytes to a `digest`
    /// server and check that it received exactly those bytes, in order.
    Upload {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long, default_value_t = 8 << 20)]
        bytes: usize,
        #[arg(long, default_value_t = 1024)]
        write: usize,
        /// Expect the server's "HELLO\n" before sending.
        #[arg(long)]
        greet: bool,
        /// With --greet: read the greeting only after sending this many bytes.
        #[arg(long, default_value_t = 0)]
        greet_after: usize,
        /// Threads writing on the one socket at once, each its share of the
        /// bytes: the server must get them all; their order across threads
        /// is the scheduler's, so only the count is checked.
        #[arg(long, default_value_t = 1)]
        writers: usize,
    },
    /// Stream throughput into a sink.
    Stream {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long, default_value_t = 65536)]
        write: usize,
        #[arg(long, default_value_t = 2.0)]
        secs: f64,
        /// Read the sink's "HELLO\n" before streaming.
        #[arg(long)]
        greet: bool,
    },
    /// Accept, ask SO_ORIGINAL_DST, connect there with SO_MARK, reply
    /// "proxy orig=<addr>\n" and relay the upstream's bytes.
    CaptureProxy {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value_t = 1337)]
        mark: u32,
    },
    /// Connect (from `--bind` if given), read to the end, print what came.
    Fetch {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long)]
        bind: Option<std::net::IpAddr>,
    },
    /// Only connect; print "connect ok" or "connect error kind=<ErrorKind>
    /// errno=<n>" and exit 0 either way (for tests of refused connects).
    Probe {
        #[arg(long)]
        connect: SocketAddr,
    },
    /// Connect to every target in turn, round after round, and print one line
    /// per round: its start and end (CLOCK_MONOTONIC, ns) and a letter per
    /// target: `A` connected, `R` refused by the peer (ECONNREFUSED: no
    /// listener, or a reset), `D` refused locally (EPERM: the connect hook's
    /// policy), `E` anything else. Stops after `--rounds` rounds (0: no
    /// limit), after `--secs`, or (with `--until-stdin-closes`) when stdin closes.
    Probes {
        /// `tcp:ADDR`, `udp:ADDR`, or `tcp:ADDR@SOURCE_IP` (bound to that source).
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
        #[arg(long, default_value_t = 0)]
        rounds: u64,
        #[arg(long, default_value_t = 120.0)]
        secs: f64,
        #[arg(long)]
        until_stdin_closes: bool,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        // 64 KiB buffers, as proxies use: io::copy's 8 KiB would make every
        // echo a stream of small writes.
        Cmd::Echo { listen } => serve(listen, |mut s| {
            let mut buf = vec![0u8; 65536];
            loop {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                s.write_all(&buf[..n])?;
            }
        }),
        Cmd::Sink { listen, greet } => serve(listen, move |mut s| {
            if greet {
                s.write_all(b"HELLO\n")?;
            }
            let mut buf = vec![0u8; 65536];
            while s.read(&mut buf)? != 0 {}
            Ok(())
        }),
        Cmd::Digest {
            listen,
            greet,
            delay_ms,
        } => serve(listen, move |mut s| {
            if greet {
                s.write_all(b"HELLO\n")?;
            }
            thread::sleep(Duration::from_millis(delay_ms));
            let mut buf = vec![0u8; 65536];
            let (mut got, mut h) = (0u64, FNV_INIT);
            loop {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h = fnv(h, &buf[..n]);
                got += n as u64;
            }
            writeln!(s, "GOT bytes={got} fnv={h:016x}")?;
            Ok(())
        }),
        Cmd::Upload {
            connect,
            bytes,
            write,
            greet,
            greet_after,
            writers,
        } => upload(connect, bytes, write, greet, greet_after, writers),
        Cmd::Hello { listen } => serve(listen, |mut s| {
            writeln!(s, "hello from {}", s.local_addr()?)?;
            Ok(())
        }),
        Cmd::Client {
            connect,
            bytes,
            chunk,
            rounds,
            gate,
        } => client(connect, bytes, chunk, rounds, gate),
        Cmd::Rr {
            connect,
            size,
            iters,
        } => rr(connect, size, iters),
        Cmd::Stream {
            connect,
            write,
            secs,
            greet,
        } => stream(connect, write, secs, greet),
        Cmd::CaptureProxy { listen, mark } => {
            serve(listen, move |s| proxy_one(s, listen.port(), mark))
        }
        Cmd::Probe { connect } => {
            match TcpStream::connect(connect) {
                Ok(_) => println!("connect ok"),
                Err(e) => println!(
                    "connect error kind={:?} errno={}",
                    e.kind(),
                    e.raw_os_error().unwrap_or(0)
                ),
            }
            Ok(())
        }
        Cmd::Probes {
            targets,
            rounds,
            secs,
            until_stdin_closes,
        } => probes(&targets, rounds, secs, until_stdin_closes),
        Cmd::Fetch { connect, bind } => {
            let mut s = match bind {
                None => TcpStream::connect(connect)?,
                Some(ip) => connect_from(ip, connect)?,
            };
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            print!("{out}");
            Ok(())
        }
    }
}

fn serve<F>(listen: SocketAddr, handle: F) -> Result<()>
where
    F: Fn(TcpStream) -> Result<()> + Copy + Send + 'static,
{
    let l = TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
    println!("READY {}", l.local_addr()?);
    io::stdout().flush()?;
    for s in l.incoming() {
        let s = s?;
        s.set_nodelay(true)?;
        thread::spawn(move || {
            if let Err(e) = handle(s) {
                eprintln!("connection: {e:#}");
            }
        });
    }
    Ok(())
}

/// FNV-1a, 64 bit: a checksum, not a MAC.
fn fnv(mut h: u64, data: &[u8]) -> u64 {
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}
const FNV_INIT: u64 = 0xcbf2_9ce4_8422_2325;

fn pattern(round: u32, len: usize) -> Vec<u8> {
    // xorshift: cheap bytes that differ at every offset and round.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(round + 1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn client(
    connect: SocketAddr,
    bytes: usize,
    chunk: usize,
    rounds: u32,
    gate: Option<PathBuf>,
) -> Result<()> {
    let s = TcpStream::connect(connect).with_context(|| format!("connect {connect}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    for round in 0..rounds {
        if round > 0 {
            if let Some(g) = &gate {
                println!("WAITING round={round}");
                io::stdout().flush()?;
                let deadline = Instant::now() + Duration::from_secs(20);
                while !g.exists() {
                    if Instant::now() > deadline {
                        bail!("gate {} never appeared", g.display());
                    }
                    thread::sleep(Duration::from_millis(20));
                }
            }
        }
        let data = pattern(round, bytes);
        let sent_hash = fnv(FNV_INIT, &data);
        let mut w = s.try_clone()?;
        let writer = thread::spawn(move || -> io::Result<()> {
            for c in data.chunks(chunk.max(1)) {
                w.write_all(c)?;
            }
            Ok(())
        });
        let mut r = &s;
        let mut got = 0usize;
        let mut h = FNV_INIT;
        let mut buf = vec![0u8; 65536];
        while got < bytes {
            let n = r.read(&mut buf[..(bytes - got).min(65536)])?;
            if n == 0 {
                bail!("echo closed after {got} of {bytes} bytes");
            }
            h = fnv(h, &buf[..n]);
            got += n;
        }
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))??;
        if h != sent_hash {
            bail!("MISMATCH round={round} sent={sent_hash:016x} recv={h:016x}");
        }
        println!("OK round={round} bytes={got} fnv={h:016x}");
        io::stdout().flush()?;
    }
    s.shutdown(Shutdown::Both)?;
    Ok(())
}

/// Read a server's "HELLO\n".
fn read_greeting(s: &mut TcpStream) -> Result<()> {
    let mut hello = [0u8; 6];
    s.read_exact(&mut hello).context("read greeting")?;
    if &hello != b"HELLO\n" {
        bail!("unexpected greeting {hello:?}");
    }
    Ok(())
}

fn upload(
    connect: SocketAddr,
    bytes: usize,
    write: usize,
    greet: bool,
    greet_after: usize,
    writers: usize,
) -> Result<()> {
    if writers == 0 || (writers > 1 && greet_after > 0) {
        bail!("--writers must be at least 1, and 1 with --greet-after");
    }
    let mut s = TcpStream::connect(connect).with_context(|| format!("connect {connect}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut greeted = !greet;
    if greet && greet_after == 0 {
        read_greeting(&mut s)?;
        greeted = true;
    }
    let data = pattern(0, bytes);
    if writers > 1 {
        let share = bytes.div_ceil(writers);
        let threads = data
            .chunks(share.max(1))
            .map(|part| {
                let (mut w, part) = (s.try_clone()?, part.to_vec());
                Ok(thread::spawn(move || -> io::Result<()> {
                    for c in part.chunks(write.max(1)) {
                        w.write_all(c)?;
                    }
                    Ok(())
                }))
            })
            .collect::<io::Result<Vec<_>>>()?;
        for t in threads {
            t.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
        }
    } else {
        let mut sent = 0;
        for c in data.chunks(write.max(1)) {
            s.write_all(c)?;
            sent += c.len();
            if !greeted && sent >= greet_after {
                read_greeting(&mut s)?;
                greeted = true;
            }
        }
    }
    if !greeted {
        read_greeting(&mut s)?;
    }
    s.shutdown(Shutdown::Write)?;
    // A blocking read on a socket that is still in the sockhash returns
    // EAGAIN when woken with nothing queued (tcp_bpf_recvmsg; here: the ACK
    // of our FIN), so retry until the deadline rather than read_to_string.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut reply = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) && Instant::now() < deadline => {}
            Err(e) => return Err(e).context("read digest"),
        }
    }
    let reply = String::from_utf8_lossy(&reply);
    let want = format!("GOT bytes={bytes} fnv={:016x}", fnv(FNV_INIT, &data));
    if writers > 1 {
        let want = format!("GOT bytes={bytes} ");
        if !reply.starts_with(&want) {
            bail!("MISMATCH sent: {want:?} server: {:?}", reply.trim_end());
        }
        println!("OK bytes={bytes} writers={writers}");
        return Ok(());
    }
    if reply.trim_end() != want {
        bail!("MISMATCH sent: {want:?} server: {:?}", reply.trim_end());
    }
    println!("OK {}", &want[4..]);
    Ok(())
}

fn rr(connect: SocketAddr, size: usize, iters: u32) -> Result<()> {
    let mut s = TcpStream::connect(connect)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let req = vec![0x5au8; size];
    let mut resp = vec![0u8; size];
    let warmup = iters / 10;
    let mut lat = Vec::with_capacity(iters as usize);
    for i in 0..iters + warmup {
        let t = Instant::now();
        s.write_all(&req)?;
        s.read_exact(&mut resp)?;
        if i >= warmup {
            lat.push(t.elapsed().as_nanos() as u64);
        }
    }
    lat.sort_unstable();
    let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize] as f64 / 1000.0;
    let mean = lat.iter().sum::<u64>() as f64 / lat.len() as f64 / 1000.0;
    println!(
        "{{\"size\":{size},\"iters\":{iters},\"p50_us\":{:.2},\"p99_us\":{:.2},\"mean_us\":{mean:.2}}}",
        p(0.5),
        p(0.99)
    );
    Ok(())
}

fn stream(connect: SocketAddr, write: usize, secs: f64, greet: bool) -> Result<()> {
    let mut s = TcpStream::connect(connect)?;
    if greet {
        read_greeting(&mut s)?;
    }
    let buf = vec![0xa5u8; write];
    let start = Instant::now();
    let dur = Duration::from_secs_f64(secs);
    let mut total = 0u64;
    while start.elapsed() < dur {
        for _ in 0..64 {
            s.write_all(&buf)?;
            total += write as u64;
        }
    }
    let el = start.elapsed().as_secs_f64();
    println!(
        "{{\"write\":{write},\"bytes\":{total},\"secs\":{el:.3},\"gbit_s\":{:.3}}}",
        total as f64 * 8.0 / el / 1e9
    );
    Ok(())
}

/// Connect from a chosen source address (any port).
/// One target of `probes`.
struct Target {
    udp: bool,
    to: SocketAddr,
    from: Option<std::net::IpAddr>,
}

fn parse_target(t: &str) -> Result<Target> {
    let (proto, rest) = t
        .split_once(':')
        .with_context(|| format!("target {t:?}: expected tcp:ADDR or udp:ADDR"))?;
    let udp = match proto {
        "tcp" => false,
        "udp" => true,
        other => bail!("target {t:?}: protocol {other:?} is not tcp or udp"),
    };
    let (to, from) = match rest.split_once('@') {
        Some((to, from)) => (
            to,
            Some(
                from.parse()
                    .with_context(|| format!("target {t:?}: source"))?,
            ),
        ),
        None => (rest, None),
    };
    let to = to
        .parse()
        .with_context(|| format!("target {t:?}: address"))?;
    Ok(Target { udp, to, from })
}

fn probe_letter(r: Result<()>) -> char {
    let Err(e) = r else { return 'A' };
    let errno = e
        .chain()
        .find_map(|c| {
            c.downcast_ref::<io::Error>()
                .and_then(|e| e.raw_os_error())
                .or_else(|| c.downcast_ref::<nix::Error>().map(|e| *e as i32))
        })
        .unwrap_or(0);
    match errno {
        libc::ECONNREFUSED => 'R',
        libc::EPERM => 'D',
        _ => 'E',
    }
}

fn probe_once(t: &Target) -> Result<()> {
    if t.udp {
        let bind = match (t.from, t.to) {
            (Some(ip), _) => SocketAddr::new(ip, 0),
            (None, SocketAddr::V4(_)) => "0.0.0.0:0".parse()?,
            (None, SocketAddr::V6(_)) => "[::]:0".parse()?,
        };
        std::net::UdpSocket::bind(bind)?.connect(t.to)?;
        return Ok(());
    }
    match t.from {
        Some(ip) => connect_from(ip, t.to).map(drop),
        None => TcpStream::connect_timeout(&t.to, Duration::from_secs(5))
            .map(drop)
            .map_err(Into::into),
    }
}

fn monotonic_ns() -> Result<u64> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)?;
    Ok(t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
}

fn probes(targets: &[String], rounds: u64, secs: f64, until_stdin_closes: bool) -> Result<()> {
    let targets: Vec<Target> = targets
        .iter()
        .map(|t| parse_target(t))
        .collect::<Result<_>>()?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if until_stdin_closes {
        let stdin_closed = stop.clone();
        thread::spawn(move || {
            let _ = io::copy(&mut io::stdin(), &mut io::sink());
            stdin_closed.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    }
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut out = io::stdout().lock();
    let mut n = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed)
        && Instant::now() < deadline
        && (rounds == 0 || n < rounds)
    {
        let start = monotonic_ns()?;
        let line: String = targets
            .iter()
            .map(|t| probe_letter(probe_once(t)))
            .collect();
        let end = monotonic_ns()?;
        if writeln!(out, "{start} {end} {line}")
            .and_then(|()| out.flush())
            .is_err()
        {
            break;
        }
        n += 1;
    }
    Ok(())
}

fn connect_from(ip: std::net::IpAddr, to: SocketAddr) -> Result<TcpStream> {
    let family = if to.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd: OwnedFd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    socket::bind(raw, &SockaddrStorage::from(SocketAddr::new(ip, 0)))
        .with_context(|| format!("bind {ip}"))?;
    socket::connect(raw, &SockaddrStorage::from(to)).with_context(|| format!("connect {to}"))?;
    Ok(TcpStream::from(fd))
}

fn original_dst(s: &TcpStream) -> Result<SocketAddr> {
    let fam_v4 = match s.local_addr()? {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
    };
    if fam_v4 {
        let sin = socket::getsockopt(s, sockopt::OriginalDst)
            .context("getsockopt(SOL_IP, SO_ORIGINAL_DST)")?;
        let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        Ok(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
    } else {
        let sin6 = socket::getsockopt(s, sockopt::Ip6tOriginalDst)
            .context("getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)")?;
        let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
        Ok(SocketAddr::from((ip, u16::from_be(sin6.sin6_port))))
    }
}

/// As membrane-proxy: the answer to SO_ORIGINAL_DST (a steered outbound
/// connect), else the socket's own address when it is not the listener's
/// (an inbound connection sk_lookup handed over keeps its destination).
fn proxy_one(mut s: TcpStream, listen_port: u16, mark: u32) -> Result<()> {
    let local = s.local_addr()?;
    let local = SocketAddr::new(local.ip().to_canonical(), local.port());
    let orig = match original_dst(&s) {
        Ok(a) => a,
        Err(_) if local.port() != listen_port => local,
        Err(e) => {
            writeln!(s, "proxy error={e:#}")?;
            return Ok(());
        }
    };
    writeln!(s, "proxy orig={orig}")?;
    let family = if orig.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd: OwnedFd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    socket::setsockopt(&fd, sockopt::Mark, &mark)?;
    socket::connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(orig),
    )
    .with_context(|| format!("upstream connect {orig}"))?;
    let mut up = TcpStream::from(fd);
    io::copy(&mut up, &mut s)?;
    Ok(())
}
