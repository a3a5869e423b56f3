#!/usr/bin/env python3
"""The two-sidecar mesh benchmark (issue 17; bench/mesh.sh runs it, bench/README.md says
what it measures). Rows, each its own pair of pods on one node, measured in turn within
every repetition (the order turning round each repetition):

  direct        client app -> server app, no mesh
  relay         a TCP relay that does nothing in each pod, in the sidecars' places
  envoy         Envoy sidecars in both pods, Istio's iptables capture, RBAC for the rule
  membrane      membrane-proxy sidecars, eBPF capture, splice off
  membrane-all  membrane-proxy sidecars, eBPF capture and splice

Loads: oha in the client pod at a fixed rate (default 1,000 rps over 16 connections,
latency corrected for coordinated omission), 1 KiB request and response bodies; then the
most each row answers with 16 connections and no rate limit. Protocols: HTTP/1.1 and h2c
against nginx, gRPC unary against a grpcio server (bench/mesh_grpc_app.py). Writes the
Markdown result and a PNG plot beside it."""

import argparse
import json
import re
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mesh_configs as cfg  # noqa: E402
import mesh_pods  # noqa: E402
import mesh_report  # noqa: E402

ROWS = ["direct", "relay", "envoy", "membrane", "membrane-all", "envoy-mtls", "membrane-mtls",
        "membrane-b"]
# membrane-b: the membrane row with another build (--membrane-b), to compare two builds in
# one run; not a default row.
DEFAULT_ROWS = [r for r in ROWS if r != "membrane-b"]
SIDECAR_ROWS = ["envoy", "membrane", "membrane-all", "envoy-mtls", "membrane-mtls", "membrane-b"]
# Default: the rows in plaintext, and both meshes with Istio mTLS between the sidecars.
SPLICE_ROWS = ["membrane-all", "membrane-mtls"]
TICK = os.sysconf("SC_CLK_TCK")
GRPC_APP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mesh_grpc_app.py")


def cpu_seconds(pid):
    """utime + stime of every thread of `pid` so far, in seconds."""
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def ctx_switches(pid):
    """Context switches of every thread of `pid` so far (a sleep and wake-up is one
    voluntary switch)."""
    n = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            for line in open(f"/proc/{pid}/task/{task}/status"):
                if "ctxt_switches" in line:
                    n += int(line.split()[1])
        except FileNotFoundError:
            pass
    return n


def loadavg():
    return " ".join(open("/proc/loadavg").read().split()[:3])


class Row:
    """A row's pods, processes and the URL its load generator asks per protocol."""

    def __init__(self, name, client, server):
        self.name, self.client, self.server = name, client, server
        self.urls = {proto: f"http://{server.ip}:{port}{path}"
                     for proto, (port, _, _, path, _) in cfg.PROTOS.items()}
        self.sidecars = []  # (pod, Popen)
        self.grpc_count = None  # the file where the gRPC app writes how many calls it answered

    def grpc_answered(self):
        """How many calls the gRPC app has answered (written every 50 ms)."""
        time.sleep(0.2)
        return int(open(self.grpc_count).read() or 0)


def wait_for(what, check, secs=30):
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what}: not ready after {secs} s")


def curl(pod, args, timeout=10):
    """curl in the pod (its cgroup, so connects are captured as the app's are): status code."""
    rc, out, _ = pod.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "5"] + args,
                         timeout=timeout)
    return out.strip() if rc == 0 else f"error {rc}"


def grpc_call(pod, target, method):
    """One gRPC unary call from the pod by grpcio's client: the status code's name."""
    rc, out, err = pod.run([sys.executable, GRPC_APP, "call", target, method], timeout=20)
    return out.strip() if rc == 0 else f"error {rc}: {err.strip()[-300:]}"


def check_grpc(client, name, url):
    """The gRPC row's rule as grpcio's client sees it: the allowed method OK, another one
    PERMISSION_DENIED (sidecar rows: the server's sidecar's denial, grpc-status 7) or OK
    (direct, relay: the app answers every method)."""
    target = url.split("//", 1)[1].split("/", 1)[0]
    wait_for(f"{name} app (grpc)", lambda: grpc_call(client, target, cfg.GRPC_METHOD) == "OK")
    deny = grpc_call(client, target, cfg.GRPC_DENIED)
    want = "PERMISSION_DENIED" if name in SIDECAR_ROWS else "OK"
    if deny != want:
        raise RuntimeError(f"{name}: gRPC {cfg.GRPC_DENIED} answered {deny}, want {want} "
                           "(the rule must be enforced by the server's sidecar, and only there)")


def setup(bed, tmp, bins, idx, name):
    """The row's two pods with their processes, checked to answer as the rule says."""
    net = f"10.210.{idx}"
    client = bed.add_pod(f"{name}-c", f"{net}.2")
    server = bed.add_pod(f"{name}-s", f"{net}.3")
    app_conf = os.path.join(tmp, f"{name}-app.conf")
    open(app_conf, "w").write(cfg.nginx_app(tmp, f"{name}-app"))
    server.spawn(["nginx", "-c", app_conf], os.path.join(tmp, f"{name}-app.log"))
    row = Row(name, client, server)
    if "grpc" in bins["protos"]:
        row.grpc_count = os.path.join(tmp, f"{name}-grpc.count")
        server.spawn([sys.executable, GRPC_APP, "serve", str(cfg.GRPC_PORT), row.grpc_count],
                     os.path.join(tmp, f"{name}-grpc.log"))
    if name == "relay":
        for pod, pairs in (
                (client, [(f"127.0.0.1:{cfg.OUTBOUND}", f"{server.ip}:{cfg.INBOUND}"),
                          (f"127.0.0.1:{cfg.RELAY_H2C_OUT}", f"{server.ip}:{cfg.RELAY_H2C_IN}"),
                          (f"127.0.0.1:{cfg.RELAY_GRPC_OUT}", f"{server.ip}:{cfg.RELAY_GRPC_IN}")]),
                (server, [(f"0.0.0.0:{cfg.INBOUND}", f"{server.ip}:{cfg.APP_PORT}"),
                          (f"0.0.0.0:{cfg.RELAY_H2C_IN}", f"{server.ip}:{cfg.H2C_PORT}"),
                          (f"0.0.0.0:{cfg.RELAY_GRPC_IN}", f"{server.ip}:{cfg.GRPC_PORT}")])):
            conf = os.path.join(tmp, f"{pod.name}-relay.conf")
            open(conf, "w").write(cfg.nginx_relay(tmp, f"{pod.name}-relay", pairs))
            # nginx's master only supervises; the worker relays. Measured: the worker.
            master = pod.spawn(["nginx", "-c", conf], os.path.join(tmp, f"{pod.name}-relay.log"))
            row.sidecars.append((pod, master))
        row.urls = {proto: f"http://127.0.0.1:{port}{cfg.PROTOS[proto][3]}"
                    for proto, port in (("h1", cfg.OUTBOUND), ("h2c", cfg.RELAY_H2C_OUT),
                                        ("grpc", cfg.RELAY_GRPC_OUT))}
    elif name.startswith("envoy"):
        for base_id, (pod, role) in enumerate(((client, "client"), (server, "server"))):
            certs = os.path.join(tmp, f"certs-{role}") if name.endswith("-mtls") else None
            conf = os.path.join(tmp, f"{pod.name}-envoy.yaml")
            open(conf, "w").write(cfg.envoy_sidecar(certs=certs))
            os.chmod(conf, 0o644)
            for rule in cfg.ISTIO_IPTABLES:
                mesh_pods.sh("iptables", "-t", "nat", *rule.split(), ns=pod.ns)
            p = pod.spawn([bins["envoy"], "-c", conf, "--concurrency", "1", "--base-id",
                           str(40000 + os.getpid() % 10000 * 16 + idx * 2 + base_id), "--disable-hot-restart",
                           "--log-level", "error"],
                          os.path.join(tmp, f"{pod.name}-envoy.log"), uid=cfg.PROXY_UID)
            row.sidecars.append((pod, p))
            wait_for(f"{pod.name} envoy", lambda pod=pod: curl(pod, ["http://127.0.0.1:15000/ready"]) == "200")
    elif name.startswith("membrane"):
        policy = os.path.join(tmp, "cnp.yaml")
        open(policy, "w").write(cfg.CNP)
        os.chmod(policy, 0o644)
        for pod, labels, role in ((client, "k8s:app=client", "client"),
                                  (server, "k8s:app=backend", "server")):
            bed.attach(pod, splice=name in SPLICE_ROWS)
            tls = []
            if name.endswith("-mtls"):
                certs = os.path.join(tmp, f"certs-{role}")
                tls = ["--mesh-tls-mode", "STRICT", "--mesh-cert", f"{certs}/cert-chain.pem",
                       "--mesh-key", f"{certs}/key.pem", "--mesh-root", f"{certs}/root-cert.pem",
                       "--mesh-outbound-cidrs", "10.210.0.0/16", "--trust-domain", cfg.TRUST_DOMAIN]
            binary = bins["membrane-b"] if name == "membrane-b" else bins["membrane"]
            p = pod.spawn([binary, "standalone"] + tls + [
                           "--capture-outbound", f"127.0.0.1:{cfg.OUTBOUND}",
                           "--capture-inbound", f"0.0.0.0:{cfg.INBOUND}",
                           "--listen", "127.0.0.1:15007", "--upstream", f"127.0.0.1:{cfg.APP_PORT}",
                           "--admin", "127.0.0.1:15000", "--metrics", "0.0.0.0:15020",
                           "--health", "0.0.0.0:15021",
                           "--endpoint-labels", labels,
                           "--peer", f"{client.ip}/32=k8s:app=client",
                           "--peer", f"{server.ip}/32=k8s:app=backend",
                           "--policy", policy, "--concurrency", "1", "--access-log", "false",
                           "--log", "warn"] + bins["membrane_args"],
                          os.path.join(tmp, f"{pod.name}-membrane.log"), uid=cfg.PROXY_UID)
            row.sidecars.append((pod, p))
            wait_for(f"{pod.name} membrane-proxy",
                     lambda pod=pod: curl(pod, ["http://127.0.0.1:15021/healthz/ready"]) == "200")
    for proto, url in row.urls.items():
        if proto not in bins["protos"]:
            continue
        if proto == "grpc":
            check_grpc(client, name, url)
            continue
        _, _, method, path, body = cfg.PROTOS[proto]
        flags = (["--http2-prior-knowledge"] if proto == "h2c" else []) + (["-d", cfg.BODY] if body else [])
        wait_for(f"{name} app ({proto})",
                 lambda: curl(client, flags + ["-X", method, url]) == "200")
        deny = curl(client, flags + ["-X", "PUT", url.replace(path, "/v1/exhaust-port")])
        want = "403" if name in SIDECAR_ROWS else "200"
        if deny != want:
            raise RuntimeError(f"{name}: PUT /v1/exhaust-port ({proto}) answered {deny}, want {want} "
                               "(the rule must be enforced by the server's sidecar, and only there)")
    if name.endswith("-mtls"):
        # STRICT: plaintext from outside any sidecar (the node) must not reach the app.
        for proto, (port, *_) in cfg.PROTOS.items():
            if proto not in bins["protos"]:
                continue
            r = subprocess.run(["ip", "netns", "exec", bed.node, "curl", "-s", "-o", "/dev/null",
                                "-w", "%{http_code}", "-m", "5", f"http://{server.ip}:{port}/v1/x"],
                               capture_output=True, text=True)
            if r.stdout.strip() not in ("000", ""):
                raise RuntimeError(f"{name}: plaintext from the node to port {port} answered "
                                   f"{r.stdout.strip()}: the server sidecar does not require mTLS")
    if name.startswith("membrane"):
        # Both sidecars on the path: the client's outbound capture took the requests.
        rc, out, _ = client.run(["curl", "-s", "-m", "5", "http://127.0.0.1:15020/stats/prometheus"],
                                timeout=10)
        # The client's egress has no L7 rule, so its sidecar relays the connection without
        # parsing HTTP (as Cilium's proxy does): it counts connections, not requests.
        n = sum(float(ln.rsplit(" ", 1)[1]) for ln in out.splitlines()
                if ln.startswith("membrane_downstream_connections_total"))
        if n < 2 * len(bins["protos"]):
            raise RuntimeError(f"{name}: the client sidecar accepted {n:.0f} connections, want "
                               f"{2 * len(bins['protos'])}: the client pod's capture does not work")
    if name.startswith("envoy"):
        # Both sidecars on the path: the client's outbound HTTP listeners took the requests.
        for proto, (port, *_) in cfg.PROTOS.items():
            if proto not in bins["protos"]:
                continue
            rc, out, _ = client.run(["curl", "-s", "-m", "5", "http://127.0.0.1:15000/stats?filter="
                                     f"http.outbound_0.0.0.0_{port}.downstream_rq_total"], timeout=10)
            n = int(out.split(":")[-1]) if rc == 0 and ":" in out else 0
            if n < 2:
                raise RuntimeError(f"envoy: the client sidecar counted {n} requests to port {port}, "
                                   "want 2: the client pod's capture does not work")
    return row


def measured_pids(row):
    """(role, pid) of each sidecar: for the relay the nginx worker, which does the work."""
    out = []
    for (pod, p), role in zip(row.sidecars, ("client", "server")):
        pid = p.pid
        if row.name == "relay":
            kids = open(f"/proc/{pid}/task/{pid}/children").read().split()
            pid = int(kids[0]) if kids else pid
        out.append((role, pid))
    return out


def oha(bins, row, proto, secs, rate, conns):
    """One oha run in the client pod: its JSON, plus the sidecars' CPU seconds over the run
    and their largest RSS seen (sampled every 200 ms)."""
    _, flags, method, _, body = cfg.PROTOS[proto]
    # -w: requests in flight at the deadline finish (else oha counts them as errors).
    args = [bins["oha"], "--no-tui", "--output-format", "json", "-z", f"{secs}s", "-w",
            "-c", str(conns), "-m", method] + flags
    if body == "1k":
        args += ["-d", cfg.BODY, "-H", "content-type: application/octet-stream"]
    elif body == "grpc":
        # A gRPC unary call as gRPC's HTTP/2 mapping has it; its status is in the trailers,
        # which oha does not read: the app's count of answered calls is checked instead.
        args += ["-D", bins["grpc_request"], "-H", "content-type: application/grpc",
                 "-H", "te: trailers"]
    if rate:
        args += ["-q", str(rate), "--latency-correction"]
    args.append(row.urls[proto])
    pids = measured_pids(row)
    cpu0 = {role: cpu_seconds(pid) for role, pid in pids}
    ctx0 = {role: ctx_switches(pid) for role, pid in pids}
    rss = {role: 0 for role, _ in pids}
    stop = threading.Event()

    def sample():
        while not stop.wait(0.2):
            for role, pid in pids:
                rss[role] = max(rss[role], rss_kib(pid))

    t = threading.Thread(target=sample)
    answered0 = row.grpc_answered() if proto == "grpc" else None
    t.start()
    try:
        rc, out, err = row.client.run(args, timeout=secs + 60)
    finally:
        stop.set()
        t.join()
    if rc != 0:
        raise RuntimeError(f"{row.name}: oha failed ({rc}): {err.strip()[-500:]}")
    cpu = {role: cpu_seconds(pid) - cpu0[role] for role, pid in pids}
    ctx = {role: ctx_switches(pid) - ctx0[role] for role, pid in pids}
    js = json.loads(out)
    if proto == "grpc":
        js["appAnswered"] = row.grpc_answered() - answered0
    return js, cpu, rss, ctx


def summarise(name, js, cpu, rss, ctx, secs):
    """The numbers a run gives: latencies in ms, rps, failures, CPU, RSS and context
    switches per sidecar."""
    pct = js["latencyPercentiles"]
    if pct.get("p50") is None:
        raise RuntimeError(f"{name}: no request succeeded in the run "
                           f"(errors: {js.get('errorDistribution')})")
    codes = js.get("statusCodeDistribution", {})
    ok = sum(v for k, v in codes.items() if str(k) == "200")
    # A request still in flight when the run's time is up is cut off by oha (with h2c even
    # under -w): the run's end, not a failure of the path; listed, not counted as failed.
    errors = js.get("errorDistribution", {})
    bad = sum(v for k, v in codes.items() if str(k) != "200") + sum(
        v for k, v in errors.items() if k != "aborted due to deadline")
    if "appAnswered" in js and js["appAnswered"] < ok:
        # gRPC: an answer 200 that the app did not give (a denial or error made by a sidecar,
        # grpc-status other than 0 in HTTP 200) is a failure.
        errors = dict(errors, **{"HTTP 200 not answered by the gRPC app": ok - js["appAnswered"]})
        bad += ok - js["appAnswered"]
    rps = js["summary"]["requestsPerSec"]
    r = {"row": name, "rps": rps, "ok": ok, "failed": bad, "errors": errors,
         "p50": pct["p50"] * 1e3, "p90": pct["p90"] * 1e3, "p99": pct["p99"] * 1e3,
         "p99.9": pct["p99.9"] * 1e3}
    for role in cpu:
        # vCPU (cores busy) per 1,000 rps of this sidecar over the run.
        r[f"cpu_{role}"] = cpu[role] / secs / (rps / 1000) if rps else None
        r[f"rss_{role}"] = rss[role] / 1024
        r[f"ctx_{role}"] = ctx[role] / (rps * secs) if rps else None
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--secs", type=int, default=15, help="seconds per fixed-rate run")
    ap.add_argument("--max-secs", type=int, default=5, help="seconds per maximum-rate run")
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--rows", default=",".join(DEFAULT_ROWS))
    ap.add_argument("--protos", default=",".join(cfg.PROTOS), help="h1 (HTTP/1.1), h2c, grpc (unary)")
    ap.add_argument("--membrane", required=True, help="membrane-proxy binary")
    ap.add_argument("--membrane-b", help="another membrane-proxy build for the membrane-b row "
                    "(as the membrane row: capture, splice off)")
    ap.add_argument("--agent", required=True, help="membrane-agent binary")
    ap.add_argument("--envoy", required=True)
    ap.add_argument("--oha", required=True)
    ap.add_argument("--membrane-args", default="",
                    help="extra membrane-proxy flags for every membrane row (space-separated)")
    ap.add_argument("--out", required=True, help="the Markdown result; the plot goes beside it")
    ap.add_argument("--commit", default="unknown")
    a = ap.parse_args()
    rows = [r for r in a.rows.split(",") if r]
    for r in rows:
        if r not in ROWS:
            sys.exit(f"mesh.py: unknown row {r!r} (rows: {', '.join(ROWS)})")
    protos = [p for p in a.protos.split(",") if p]
    for p in protos:
        if p not in cfg.PROTOS:
            sys.exit(f"mesh.py: unknown protocol {p!r} (protocols: {', '.join(cfg.PROTOS)})")
    if "membrane-b" in rows and not a.membrane_b:
        sys.exit("mesh.py: the membrane-b row needs --membrane-b")
    if "direct" not in rows:
        sys.exit("mesh.py: the direct row is needed (every latency is reported as added over it)")

    def stop(sig, _frame):
        raise KeyboardInterrupt(f"signal {sig}")

    signal.signal(signal.SIGTERM, stop)
    tmp = tempfile.mkdtemp(prefix=f"membrane-test-{os.getpid()}-mesh-")
    os.chmod(tmp, 0o755)
    # The sidecars run as uid 1337, which cannot reach into /root: their binaries go beside
    # their configurations.
    bins = {"oha": a.oha, "membrane_args": a.membrane_args.split(), "protos": protos,
            "grpc_request": os.path.join(tmp, "grpc-request.bin")}
    subprocess.run([sys.executable, GRPC_APP, "request", bins["grpc_request"]], check=True)
    os.chmod(bins["grpc_request"], 0o644)
    for key, src in (("membrane", a.membrane), ("envoy", a.envoy), ("membrane-b", a.membrane_b)):
        if not src or not any(r.startswith(key) for r in rows):
            continue
        dst = os.path.join(tmp, ("b-" if key == "membrane-b" else "") + os.path.basename(src))
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
        os.chmod(dst, 0o755)
        bins[key] = dst
    bed = mesh_pods.Bed(a.agent)
    runs = []
    loads = [("start", loadavg())]
    try:
        if any(r.endswith("-mtls") for r in rows):
            cfg.make_certs(tmp)
        live = {name: setup(bed, tmp, bins, i, name) for i, name in enumerate(rows)}
        print(f"mesh.py: {len(rows)} rows up, every rule answered as it should", flush=True)
        for rep in range(a.reps):
            order = rows[rep % len(rows):] + rows[:rep % len(rows)]
            for proto in protos:
                for load in ("fixed", "max"):
                    for name in order:
                        row = live[name]
                        rate = a.rate if load == "fixed" else None
                        secs = a.secs if load == "fixed" else a.max_secs
                        if load == "fixed":
                            oha(bins, row, proto, 1, rate, a.conns)  # warm-up: pools, caches
                        js, cpu, rss, ctx = oha(bins, row, proto, secs, rate, a.conns)
                        r = summarise(name, js, cpu, rss, ctx, secs)
                        r.update(rep=rep, load=load, proto=proto)
                        runs.append(r)
                        print(f"rep {rep} {proto:3} {load:5} {name:13} {r['rps']:7.0f} rps  p50 "
                              f"{r['p50']:.3f} ms  p99 {r['p99']:.3f} ms  failed {r['failed']} "
                              f"{r['errors'] or ''}", flush=True)
            loads.append((f"after repetition {rep + 1}", loadavg()))
        counters = {name: bed.counters(live[name].client) for name in rows if name.startswith("membrane")}
    finally:
        # A second signal must not cut the cleanup short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        bed.close()
        shutil.rmtree(tmp, ignore_errors=True)
    oha_version = subprocess.run([a.oha, "--version"], capture_output=True, text=True).stdout.strip()
    envoy_version = subprocess.run([a.envoy, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"version: \S*?/(\d+\.\d+\.\d+)/", envoy_version)
    envoy_version = m.group(1) if m else "(version unknown)"
    raw = os.path.splitext(a.out)[0] + ".json"
    json.dump({"runs": runs, "loads": loads, "counters": counters}, open(raw, "w"), indent=1)
    mesh_report.write(a, rows, protos, runs, loads, counters, oha_version, envoy_version)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt as e:
        sys.exit(f"mesh.py: interrupted ({e}); everything it made is removed")
