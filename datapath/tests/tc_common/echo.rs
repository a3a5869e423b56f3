//! Echo servers inside a test's network namespace, and their clients, shared by the
//! packet-path tests.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

/// Echo servers in a namespace (TCP and UDP, on the given ports) until dropped; the
/// loop is bounded by a 120 s deadline besides the stop flag.
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Servers {
    pub fn start(ns: PathBuf, tcp: &[u16], udp: &[u16]) -> Servers {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        for (port, is_udp) in tcp
            .iter()
            .map(|p| (*p, false))
            .chain(udp.iter().map(|p| (*p, true)))
        {
            let (ns, stop, ready) = (ns.clone(), stop.clone(), ready_tx.clone());
            threads.push(thread::spawn(move || {
                let f = std::fs::File::open(&ns).unwrap();
                nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                let deadline = Instant::now() + Duration::from_secs(120);
                // [::] takes IPv4 too (v4-mapped): one socket per port for both.
                let addr: SocketAddr = format!("[::]:{port}").parse().unwrap();
                if is_udp {
                    let s = UdpSocket::bind(addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                    ready.send(()).unwrap();
                    let mut buf = [0u8; 1500];
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        if let Ok((n, from)) = s.recv_from(&mut buf) {
                            let _ = s.send_to(&buf[..n], from);
                        }
                    }
                } else {
                    let l = TcpListener::bind(addr).unwrap();
                    l.set_nonblocking(true).unwrap();
                    ready.send(()).unwrap();
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        match l.accept() {
                            Ok((mut c, _)) => {
                                c.set_nonblocking(false).unwrap();
                                c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                                let mut buf = [0u8; 64];
                                if let Ok(n) = c.read(&mut buf) {
                                    let _ = c.write_all(&buf[..n]);
                                }
                            }
                            Err(_) => thread::sleep(Duration::from_millis(5)),
                        }
                    }
                }
            }));
        }
        for _ in 0..threads.len() {
            ready_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("server ready");
        }
        Servers { stop, threads }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A TCP echo round trip from inside `ns` (a thread that is in no pod's cgroup: only the
/// packet path translates or decides): true when it came back.
pub fn tcp_echo(ns: &Path, to: &str) -> bool {
    let to: SocketAddr = to.parse().unwrap();
    super::in_netns(ns, || {
        let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_secs(2)) else {
            return false;
        };
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 5];
        s.write_all(b"hello").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"hello"
    })
}

/// A UDP round trip from inside `ns` to `to` without connect (so no socket hook could
/// translate it), 3 tries: where the answer came from.
pub fn udp_echo(ns: &Path, to: &str) -> Option<SocketAddr> {
    let to: SocketAddr = to.parse().unwrap();
    super::in_netns(ns, || {
        let any = if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
        let s = UdpSocket::bind(any).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 16];
        (0..3).find_map(|_| {
            s.send_to(b"ping", to).unwrap();
            match s.recv_from(&mut buf) {
                Ok((4, from)) => Some(from),
                _ => None,
            }
        })
    })
}
