#!/usr/bin/env python3
"""Live policy change through real membrane-proxy sidecars.

K membrane-proxy processes (one per deathstar pod, each with its own Istio node
id) follow membrane-xds over xDS. Each round rewrites the L7 policy (atomic
rename), alternately allowing and denying `PUT /v1/exhaust-port`, and measures,
per proxy, the time from the rename to the proxy's ACK of the new NPDS version
(membrane-proxy ACKs only after the new policy is in force). After every round
a request from the tiefighter through every proxy must get the new verdict.

Prints a Markdown section on stdout. Traffic stays on loopback; every process
started here is stopped on exit.
"""

import argparse
import http.server
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

TIEFIGHTER = "127.0.0.3"
NPDS = "type.googleapis.com/cilium.NetworkPolicy"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Backend(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        n = int(self.headers.get("content-length") or 0)
        if n:
            self.rfile.read(n)
        body = f"backend: {self.command} {self.path}\n".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = answer

    def log_message(self, *args):
        pass


def pods(k, port):
    docs = []
    for i in range(k):
        docs.append(
            f"""apiVersion: v1
kind: Pod
metadata: {{name: deathstar-{i}, namespace: default, labels: {{org: empire, class: deathstar}}}}
spec: {{containers: [{{name: app, ports: [{{containerPort: {port}, name: http}}]}}]}}
status: {{podIP: {pod_ip(i)}}}
"""
        )
    docs.append(
        f"""apiVersion: v1
kind: Pod
metadata: {{name: tiefighter, namespace: default, labels: {{org: empire, class: tiefighter}}}}
status: {{podIP: {TIEFIGHTER}}}
"""
    )
    return "---\n".join(docs)


def pod_ip(i):
    return f"127.0.{1 + i // 250}.{1 + i % 250}"


def policy(port, allow_exhaust):
    extra = "        - method: PUT\n          path: /v1/exhaust-port\n" if allow_exhaust else ""
    return f"""apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: rule1, namespace: default}}
spec:
  endpointSelector: {{matchLabels: {{org: empire, class: deathstar}}}}
  ingress:
  - fromEndpoints: [{{matchLabels: {{org: empire}}}}]
    toPorts:
    - ports: [{{port: "{port}", protocol: TCP}}]
      rules:
        http:
        - method: POST
          path: /v1/request-landing
{extra}"""


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def status_of(listen, method, path):
    """One HTTP/1.1 request from the tiefighter's address; the status code."""
    with socket.socket() as s:
        s.settimeout(5)
        s.bind((TIEFIGHTER, 0))
        s.connect(listen)
        s.sendall(
            f"{method} {path} HTTP/1.1\r\nhost: deathstar\r\ncontent-length: 0\r\n"
            "connection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


def get_json(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * len(xs) + 0.5) - 1))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--xds", required=True, help="membrane-xds binary")
    ap.add_argument("--proxy", required=True, help="membrane-proxy binary")
    ap.add_argument("--proxies", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=20)
    a = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="membrane-xds-live-")
    procs = []

    def stop(*_):
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        backend = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Backend)
        threading.Thread(target=backend.serve_forever, daemon=True).start()
        port = backend.server_address[1]
        src = os.path.join(tmp, "src")
        os.mkdir(src)
        write_atomic(os.path.join(src, "pods.yaml"), pods(a.proxies, port))
        pol = os.path.join(src, "policy.yaml")
        write_atomic(pol, policy(port, False))

        xds = subprocess.Popen(
            # Plaintext xDS, opted in: a trusted loopback-only bench.
            [a.xds, "--source-dir", src, "--plaintext-xds", "--grpc-addr", "127.0.0.1:0",
             "--debug-addr", "127.0.0.1:0", "--poll-ms", "600000", "--log", "warn"],
            stdout=subprocess.PIPE, text=True)
        procs.append(xds)
        line = xds.stdout.readline()
        fields = dict(w.split("=", 1) for w in line.split() if "=" in w)
        grpc, debug = fields["grpc"], fields["debug"]

        listens = []
        for i in range(a.proxies):
            listen = ("127.0.0.1", free_port())
            node = f"sidecar~{pod_ip(i)}~deathstar-{i}.default~default.svc.cluster.local"
            p = subprocess.Popen(
                [a.proxy, "standalone", "--listen", f"{listen[0]}:{listen[1]}",
                 "--upstream", f"127.0.0.1:{port}", "--admin", "127.0.0.1:0",
                 "--metrics", "127.0.0.1:0", "--health", "127.0.0.1:0",
                 "--xds-address", f"http://{grpc}", "--node-id", node,
                 "--concurrency", "1", "--access-log", "false"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(p)
            listens.append(listen)

        def acked(since_ms, version=None):
            """Per proxy: NPDS ACK time (ms) at or after since_ms, else None."""
            out = {}
            for p in get_json(f"http://{debug}/debug/flightz"):
                t = p.get("types", {}).get(NPDS) or {}
                ok = t.get("acked_version") and t.get("acked_version") == t.get("latest_version")
                at = t.get("acked_at_ms")
                out[p["node_id"]] = at if ok and at is not None and at >= since_ms else None
            return out

        deadline = time.time() + 60
        while True:
            got = acked(0)
            if len(got) == a.proxies and all(v is not None for v in got.values()):
                break
            if time.time() > deadline:
                sys.exit(f"xds_live: only {sum(v is not None for v in got.values())} of "
                         f"{a.proxies} proxies ACKed the first policy within 60 s")
            time.sleep(0.1)
        for listen in listens:
            assert status_of(listen, "PUT", "/v1/exhaust-port") == 403

        lat = []
        allow = False
        for r in range(a.rounds):
            allow = not allow
            time.sleep(0.3)
            t0 = time.time()
            write_atomic(pol, policy(port, allow))
            since = int(t0 * 1000)
            deadline = t0 + 10
            while True:
                got = acked(since)
                if len(got) == a.proxies and all(v is not None for v in got.values()):
                    break
                if time.time() > deadline:
                    sys.exit(f"xds_live: round {r}: not every proxy ACKed within 10 s")
                time.sleep(0.01)
            lat.extend(v - t0 * 1000 for v in got.values())
            want = 200 if allow else 403
            for listen in listens:
                s = status_of(listen, "PUT", "/v1/exhaust-port")
                if s != want:
                    sys.exit(f"xds_live: round {r}: a proxy that ACKed answers {s}, want {want}")

        proxy_rss = [rss_kib(p.pid) for p in procs[1:]]
        print(f"## Live policy change through {a.proxies} membrane-proxy sidecars\n")
        print(f"{a.rounds} changes (alternately allowing and denying `PUT /v1/exhaust-port`), "
              "each timed from the policy file's rename to every proxy's NPDS ACK "
              "(a proxy ACKs only once the policy is in force); after each change every "
              "proxy answered the request with the new verdict.\n")
        print("| measure | value | goal |")
        print("|---|---:|---|")
        print(f"| rename → ACK p50 | {statistics.median(lat):.1f} ms | |")
        print(f"| rename → ACK p99 | {pct(lat, 99):.1f} ms | < 100 ms |")
        print(f"| rename → ACK max | {max(lat):.1f} ms | |")
        print(f"| membrane-proxy RSS, median | {statistics.median(proxy_rss) / 1024:.1f} MiB | |")
        print(f"| membrane-xds RSS | {rss_kib(xds.pid) / 1024:.1f} MiB | |")
        print()
        print("Timestamps are the control plane's ACK receipt times (millisecond resolution).")
    finally:
        stop()


if __name__ == "__main__":
    main()
