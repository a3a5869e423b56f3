//! The load the benchmarks put on the packet path, run inside a pod's namespace by
//! re-executing this binary there (`ip netns exec NS tcpath worker ...`): a bounded UDP
//! flood, a TCP accept server, a TCP connection-rate client that counts every failed
//! connection, and a one-byte TCP ping-pong. Each client stops by itself after its
//! duration and prints one JSON line.

use std::io::{BufRead, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use nix::sys::socket::{setsockopt, sockopt};
use nix::time::{clock_gettime, ClockId};

/// The workers (`tcpath worker <cmd>`).
#[derive(Subcommand)]
pub enum Worker {
    /// Send 64-byte UDP datagrams to `to` as fast as one thread can, for `secs`.
    UdpFlood {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        secs: f64,
    },
    /// Accept TCP connections on each `listen` address: read one byte, answer one byte,
    /// read to the end. Prints READY once listening; runs until killed.
    TcpServe {
        #[arg(long, required = true)]
        listen: Vec<SocketAddr>,
        /// Accepting threads per address.
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// Echo every byte until the end instead (the ping-pong peer).
        #[arg(long)]
        echo: bool,
    },
    /// Open, use (one byte each way) and abort (RST, no TIME_WAIT) connections to `to`
    /// from `threads` threads for `secs`; count the ones that worked and the failures, and
    /// report the process's CPU time (`cpu_secs`). With several `to`, each connection goes
    /// to one of them at random (as a load balancer with random selection spreads them).
    ConnRate {
        #[arg(long, required = true)]
        to: Vec<SocketAddr>,
        #[arg(long)]
        secs: f64,
        #[arg(long, default_value_t = 4)]
        threads: usize,
    },
    /// One-byte request/response over one TCP connection, `iters` times: latency.
    Rr {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        iters: usize,
    },
}

/// Runs a worker to its end.
pub fn run(w: Worker) -> Result<()> {
    match w {
        Worker::UdpFlood { to, secs } => udp_flood(to, secs),
        Worker::TcpServe {
            listen,
            threads,
            echo,
        } => tcp_serve(&listen, threads, echo),
        Worker::ConnRate { to, secs, threads } => conn_rate(&to, secs, threads),
        Worker::Rr { to, iters } => rr(to, iters),
    }
}

fn udp_flood(to: SocketAddr, secs: f64) -> Result<()> {
    let sock = UdpSocket::bind("0.0.0.0:0").context("bind udp")?;
    let payload = [0x5au8; 64];
    let (mut sent, mut errors) = (0u64, 0u64);
    let start = Instant::now();
    let limit = Duration::from_secs_f64(secs);
    // The clock is read once per 256 datagrams: a syscall per datagram would be
    // measured along with the path.
    while start.elapsed() < limit {
        for _ in 0..256 {
            match sock.send_to(&payload, to) {
                Ok(_) => sent += 1,
                Err(_) => errors += 1,
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(r#"{{"sent":{sent},"errors":{errors},"secs":{secs}}}"#);
    Ok(())
}

fn tcp_serve(listen: &[SocketAddr], threads: usize, echo: bool) -> Result<()> {
    let mut handles = Vec::new();
    for addr in listen {
        let l = Arc::new(TcpListener::bind(addr).with_context(|| format!("listen {addr}"))?);
        for _ in 0..threads {
            let l = l.clone();
            handles.push(std::thread::spawn(move || loop {
                if let Ok((mut s, _)) = l.accept() {
                    if echo {
                        let _ = s.set_nodelay(true);
                        let mut buf = [0u8; 4096];
                        while let Ok(n @ 1..) = s.read(&mut buf) {
                            if s.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        continue;
                    }
                    let mut b = [0u8; 1];
                    if s.read_exact(&mut b).is_ok() && s.write_all(&b).is_ok() {
                        // Until the client's RST or FIN.
                        let _ = s.read(&mut b);
                    }
                }
            }));
        }
    }
    println!("READY");
    std::io::stdout().flush()?;
    // Ends when the parent closes stdin (or kills it).
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    Ok(())
}

fn one_connection(to: SocketAddr) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).context("connect")?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_nodelay(true)?;
    s.write_all(b"x").context("write")?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).context("read the answer")?;
    // Abort: an RST frees the 4-tuple at once on both sides, so a bounded run never
    // exhausts the client's ports in TIME_WAIT.
    setsockopt(
        &s,
        sockopt::Linger,
        &libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )?;
    drop(s);
    Ok(())
}

fn conn_rate(to: &[SocketAddr], secs: f64, threads: usize) -> Result<()> {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let limit = Duration::from_secs_f64(secs);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (ok, failed, first_error, stop) = (
                ok.clone(),
                failed.clone(),
                first_error.clone(),
                stop.clone(),
            );
            let to = to.to_vec();
            std::thread::spawn(move || {
                // xorshift32: a cheap pick per connection, seeded per thread.
                let mut x = 0x9e37_79b9u32 ^ (t as u32 + 1).wrapping_mul(0x85eb_ca6b);
                while !stop.load(Ordering::Relaxed) && start.elapsed() < limit {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    match one_connection(to[x as usize % to.len()]) {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            first_error.lock().unwrap().get_or_insert(format!("{e:#}"));
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    stop.store(true, Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64();
    let err = first_error.lock().unwrap().clone().unwrap_or_default();
    // The process's CPU clock counts its exited threads too, and (the kernel charging
    // softirq work to the task it interrupts) the packet processing done in their
    // context: a veth delivers most packets on the sender's own CPU at once.
    let cpu = clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID).context("process cpu clock")?;
    let cpu_secs = cpu.tv_sec() as f64 + cpu.tv_nsec() as f64 / 1e9;
    println!(
        "{}",
        serde_json::json!({"ok": ok.load(Ordering::Relaxed),
            "failed": failed.load(Ordering::Relaxed), "secs": secs, "first_error": err,
            "cpu_secs": cpu_secs})
    );
    Ok(())
}

fn rr(to: SocketAddr, iters: usize) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).context("connect")?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut lat = Vec::with_capacity(iters);
    let mut b = [0u8; 1];
    // Against `tcp-serve --echo`.
    for _ in 0..iters {
        let t = Instant::now();
        s.write_all(b"p")?;
        s.read_exact(&mut b).context("read pong")?;
        lat.push(t.elapsed().as_nanos() as u64);
    }
    s.shutdown(Shutdown::Both).ok();
    if lat.is_empty() {
        bail!("no iterations");
    }
    lat.sort_unstable();
    let q = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
    let mean = lat.iter().sum::<u64>() as f64 / lat.len() as f64 / 1000.0;
    println!(
        r#"{{"p50_us":{},"p99_us":{},"mean_us":{mean}}}"#,
        q(0.5),
        q(0.99)
    );
    Ok(())
}
