//! Small Python programs the overlay tests run inside pods and underlay hosts (python3
//! is on every test machine): echo servers, clients that check what came back, and a
//! probe of the path MTU a sender learned; and the marker frames a capture waits for.

/// A UDP echo server on the port in argv[1] (IPv6 socket: IPv4 and IPv6 alike).
pub const UDP_ECHO: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[1])))
print("READY", flush=True)
while True:
    d, a = s.recvfrom(65535)
    s.sendto(d, a)
"#;

/// Send argv[3] datagrams of 1 KiB to argv[1]:argv[2], count the exact echoes.
pub const UDP_CLIENT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
ok = 0
for i in range(int(sys.argv[3])):
    msg = b"datagram %d " % i + b"x" * 1000
    s.sendto(msg, (sys.argv[1], int(sys.argv[2])))
    try:
        d, a = s.recvfrom(65535)
        if d == msg and a[0] == sys.argv[1]:
            ok += 1
    except socket.timeout:
        pass
print("udp ok=%d" % ok)
"#;

/// Connect to argv[1]:argv[2] (3 s), send a line, print what the echo sent back.
pub const TCP_PROBE: &str = r#"
import socket, sys
s = socket.socket()
s.settimeout(3)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    s.sendall(b"hello\n")
    print("tcp connected", s.recv(16))
except Exception as e:
    print("tcp failed", e)
"#;

/// With DF (IP_PMTUDISC_DO), send argv[3]-byte datagrams to argv[1]:argv[2] until the
/// kernel refuses one as too big for the path (an ICMP error came back), at most 3 s;
/// print the path MTU it learned.
pub const PMTU_PROBE: &str = r#"
import socket, sys, time, errno
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER = IP_PMTUDISC_DO
s.connect((sys.argv[1], int(sys.argv[2])))
end = time.time() + 3
while time.time() < end:
    try:
        s.send(b"x" * int(sys.argv[3]))
    except OSError as e:
        if e.errno == errno.EMSGSIZE:
            print("too big, path mtu=%d" % s.getsockopt(socket.IPPROTO_IP, 14))  # IP_MTU
            sys.exit(0)
    time.sleep(0.05)
print("never refused")
"#;

/// Broadcast an Ethernet frame of ethertype 0x88b5 (IEEE 802's local experimental one,
/// which nothing else on the underlay sends) out of the device in argv[1] every 50 ms,
/// for 20 s at most: the marker a capture waits to see before it counts as started.
pub const CAPTURE_MARKER: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
frame = b"\xff" * 6 + s.getsockname()[4] + b"\x88\xb5" + b"membrane capture marker".ljust(46, b"\0")
end = time.time() + 20
while time.time() < end:
    s.send(frame)
    time.sleep(0.05)
"#;
