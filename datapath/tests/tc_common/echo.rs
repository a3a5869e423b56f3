//! Echo servers inside a test's network namespace, shared by the packet-path tests.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, UdpSocket},
    path::PathBuf,
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
