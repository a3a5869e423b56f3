//! The handover exchange between two ends in one process, over a real unix socket.

use std::io::{Read, Write};
use std::os::fd::AsFd;

use super::*;

fn offer(listeners: &[(Role, &std::net::TcpListener)]) -> Offer {
    Offer {
        epoch: 4,
        sockets: listeners
            .iter()
            .map(|(role, l)| Inherited {
                role: *role,
                addr: l.local_addr().unwrap(),
                fd: l.as_fd().try_clone_to_owned().unwrap(),
            })
            .collect(),
    }
}

#[tokio::test]
async fn sockets_move_with_their_queues_and_the_old_side_learns_of_the_drain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.sock");
    let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (stop_tx, stop) = watch::channel(false);
    let mut server = Server::listen(
        &path,
        offer(&[(Role::Listen, &listen), (Role::Admin, &admin)]),
        stop,
    )
    .unwrap();
    // A client queued on the old socket, accepted by nobody yet.
    let mut queued = std::net::TcpStream::connect(listen.local_addr().unwrap()).unwrap();

    let (pred, inherited) = connect(&path).await.unwrap().expect("a running proxy");
    assert_eq!(pred.epoch, 4);
    assert_eq!(pred.pid, std::process::id());
    let roles: Vec<_> = inherited.iter().map(|i| (i.role, i.addr)).collect();
    assert_eq!(
        roles,
        vec![
            (Role::Listen, listen.local_addr().unwrap()),
            (Role::Admin, admin.local_addr().unwrap())
        ]
    );
    check_same_proxy(pred.pid, &inherited, listen.local_addr().unwrap()).unwrap();

    pred.drain().await.unwrap();
    assert_eq!(server.handed_over().await, std::process::id());
    // The socket file is still this server's: closing removes it.
    server.close();
    assert!(!path.exists());

    // Every copy on the old side closes (its listener; the offer went with the server):
    // the queued connection is accepted through the received socket.
    drop(listen);
    drop(stop_tx);
    let received = std::net::TcpListener::from(inherited.into_iter().next().unwrap().fd);
    let (mut accepted, _) = received.accept().unwrap();
    queued.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    accepted.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn no_socket_or_a_stale_one_is_a_fresh_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.sock");
    assert!(connect(&path).await.unwrap().is_none());
    // A socket file left by a process that died: nobody listens.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    assert!(connect(&path).await.unwrap().is_none());
}

#[tokio::test]
async fn another_protocol_version_is_refused_and_the_offer_stands() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.sock");
    let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (_stop_tx, stop) = watch::channel(false);
    let _server = Server::listen(&path, offer(&[(Role::Listen, &listen)]), stop).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let mut conn = Conn::new(UnixStream::connect(&path).await.unwrap());
    conn.send(
        &Message::Hello {
            version: 99,
            pid: 1,
        },
        &[],
    )
    .await
    .unwrap();
    match conn.recv().await.unwrap() {
        (Message::Refused { reason }, fds) => {
            assert!(reason.contains("protocol version 99"), "{reason}");
            assert!(fds.is_empty());
        }
        (other, _) => panic!("{other:?}"),
    }
    // Garbage is refused too, and the next successor still gets the sockets.
    let mut raw = UnixStream::connect(&path).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut raw, b"{not json\n")
        .await
        .unwrap();
    let (_, inherited) = connect(&path).await.unwrap().expect("still offered");
    assert_eq!(inherited.len(), 1);
}

#[test]
fn only_the_proxy_with_the_same_listen_address_is_taken_over() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let theirs = vec![Inherited {
        role: Role::Listen,
        addr,
        fd: l.as_fd().try_clone_to_owned().unwrap(),
    }];
    check_same_proxy(1, &theirs, addr).unwrap();
    // Port 0: the same address, whatever port it got.
    check_same_proxy(1, &theirs, "127.0.0.1:0".parse().unwrap()).unwrap();
    let e = check_same_proxy(1, &theirs, "127.0.0.2:0".parse().unwrap()).unwrap_err();
    assert!(e.to_string().contains("not taking it over"), "{e}");
    let mut other_port = addr;
    other_port.set_port(addr.port().wrapping_add(1).max(1));
    assert!(check_same_proxy(1, &theirs, other_port).is_err());
    // A proxy that offers no --listen socket is not one to replace.
    assert!(check_same_proxy(1, &[], addr).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_uid_gets_no_socket_even_through_an_open_file_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.sock");
    let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (_stop_tx, stop) = watch::channel(false);
    let _server = Server::listen(&path, offer(&[(Role::Listen, &listen)]), stop).unwrap();
    // Open the path to everyone, so that only the peer check stands in the way.
    let open = |p: &Path, mode| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
    open(dir.path(), 0o755).unwrap();
    open(&path, 0o666).unwrap();
    // nobody (65534) says hello and reads what comes back: the connection closes unanswered
    // (closed, reset, or gone before the hello is written).
    let script = "import socket,sys\n\
        s=socket.socket(socket.AF_UNIX)\n\
        s.connect(sys.argv[1])\n\
        try:\n s.sendall(b'{\"op\":\"hello\",\"version\":1,\"pid\":1}\\n')\n d=s.recv(65536)\n\
        except OSError: d=b''\n\
        print('answered' if d else 'closed')\n";
    let out = tokio::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            script,
        ])
        .arg(&path)
        .output()
        .await
        .expect("setpriv runs (the test needs root)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "closed");
    // The proxy's own uid still gets the sockets.
    let (_, inherited) = connect(&path).await.unwrap().expect("still offered");
    assert_eq!(inherited.len(), 1);
}
