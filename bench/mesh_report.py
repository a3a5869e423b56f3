"""The mesh benchmark's result page and plot (bench/mesh.py): medians over the repetitions,
latency added over the direct row (computed per repetition, then the median), the ratios
against the Envoy row and the issue's targets."""

import datetime
import os
import platform
import statistics

PCTS = ["p50", "p90", "p99", "p99.9"]
LABEL = {
    "direct": "direct (no mesh)",
    "relay": "TCP relay floor (nginx stream)",
    "envoy": "Envoy 1.40 + istio-iptables",
    "membrane": "membrane, eBPF capture, splice off",
    "membrane-all": "membrane, everything on (capture + splice)",
    "envoy-mtls": "Envoy 1.40 + istio-iptables, Istio mTLS",
    "membrane-mtls": "membrane, everything on, Istio mTLS",
    "membrane-b": "membrane B (--membrane-b), eBPF capture, splice off",
}
# Each membrane row against the Envoy row with the same security between the sidecars.
AGAINST = {"membrane": "envoy", "membrane-all": "envoy", "membrane-mtls": "envoy-mtls",
           "membrane-b": "envoy"}


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(v, d=2):
    return "–" if v is None else f"{v:.{d}f}"


def added(runs, rows, proto, load):
    """added[row][pct] = median over repetitions of (row − direct in that repetition)."""
    by = {}
    for r in runs:
        if r["load"] == load and r["proto"] == proto:
            by[(r["row"], r["rep"])] = r
    reps = sorted({rep for (_, rep) in by})
    out = {}
    for row in rows:
        out[row] = {}
        for p in PCTS:
            out[row][p] = med([by[(row, rep)][p] - by[("direct", rep)][p]
                               for rep in reps if (row, rep) in by and ("direct", rep) in by])
    return out


def medians(runs, rows, proto, load):
    out = {}
    for row in rows:
        rs = [r for r in runs if r["row"] == row and r["load"] == load and r["proto"] == proto]
        keys = {k for r in rs for k in r if isinstance(r[k], (int, float)) and k != "rep"}
        errors = {}
        for r in rs:
            for kind, n in r.get("errors", {}).items():
                errors[kind] = errors.get(kind, 0) + n
        out[row] = {k: med([r.get(k) for r in rs]) for k in keys}
        out[row]["failed_total"] = sum(r["failed"] for r in rs)
        out[row]["errors"] = errors
    return out


def verdict(ratio, limit):
    if ratio is None:
        return "n/a"
    return "met" if ratio <= limit else "**missed**"


PROTO = {"h1": "HTTP/1.1", "h2c": "h2c (HTTP/2 prior knowledge)", "grpc": "gRPC unary (h2c)"}


def write(a, rows, protos, runs, loads, counters, oha_version, envoy_version):
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                  if ln.startswith("model name")), "?")
    png = os.path.splitext(a.out)[0] + ".png"
    L = [f"# Mesh benchmark: two sidecars and capture, {now}", "",
         f"Commit {a.commit}; {os.cpu_count()} cores ({model}), kernel {platform.release()}."
         + (f" Row membrane-b runs `{a.membrane_b}`, the other membrane rows `{a.membrane}`."
            if "membrane-b" in rows else ""),
         "Load average (1/5/15 min): " + "; ".join(f"{w} {v}" for w, v in loads) + ".",
         f"Load generator: {oha_version}, in the client pod: {a.rate} rps over {a.conns} connections "
         "with latency correction (coordinated omission: a request's latency counts from when it "
         f"was due), {a.secs} s per run after a 1 s warm-up; then no rate limit, {a.conns} connections, "
         f"{a.max_secs} s (the maximum each row answers). Plaintext, "
         + " and ".join(PROTO[p] for p in protos) + ". HTTP/1.1: POST /v1/request-landing with a 1 KiB "
         "body; h2c: GET /v1/x (oha's --http2, prior knowledge; no request body: nginx reset h2c "
         "streams whose body its `return` left unread), both sidecars speaking HTTP/2 upstream; "
         "answered 200 with 1 KiB by nginx (one worker) in the server pod."
         + (" gRPC unary: oha's --http2 POST /bench.Echo/Unary with `content-type: application/grpc`, "
            "`te: trailers` and one framed 1 KiB message, answered with 1 KiB and grpc-status 0 by a "
            "grpcio server (gRPC's C core, Python asyncio handlers, one process; bench/mesh_grpc_app.py) "
            "in the server pod; both sidecars speak HTTP/2 upstream. oha does not read trailers: a run "
            "counts as failed every 200 beyond the calls the app itself answered (a sidecar's denial "
            "is 200 with grpc-status 7). The app's own speed caps every row's maximum rate: see the "
            "direct row." if "grpc" in protos else ""),
         f"{a.reps} repetitions, the rows measured in turn within each (the order turning round "
         "every repetition); every number is the median over the repetitions, an added latency "
         "the median of (row − direct) per repetition.",
         f"Envoy {envoy_version}, `--concurrency 1`, as uid 1337 behind istio-iptables' nat rules; "
         "membrane-proxy `standalone --concurrency 1 --access-log false` as uid 1337 behind "
         "`membrane-agent attach --capture --inbound-netns` (no netfilter in its pods). Nothing pinned "
         "to a core. Every pod its own network namespace and cgroup, routed through one node "
         "namespace as the mini-cluster's pods are; each row has its own pair of pods.",
         "The rule is the server's ingress; the client's egress has no L7 rule, so membrane's client "
         "sidecar relays its connections without parsing HTTP (as Cilium's proxy leaves a port "
         "without L7 rules), while Envoy's client sidecar runs its HTTP connection manager, as an "
         "Istio sidecar does for every HTTP port.",
         "The -mtls rows speak Istio's mutual TLS between the sidecars (workload certificates "
         "made per run, SPIFFE ids as URI SANs; the server side STRICT, checked to refuse plaintext).",
         "Before measuring, each row answered the allowed request 200 and `PUT /v1/exhaust-port` "
         "403 (sidecar rows: the rule is enforced by the server's sidecar) or 200 (direct, relay)"
         + (f"; gRPC, called by grpcio's client: /bench.Echo/Unary OK and /bench.Echo/Forbidden "
            "PERMISSION_DENIED (sidecar rows) or OK (direct, relay)" if "grpc" in protos else "") + ".",
         "", f"![latency per row]({os.path.basename(png)})", ""]
    tables = {}
    for proto in protos:
        tables[proto] = section(a, rows, proto, runs, L)
    L += ["vCPU per 1,000 rps: the sidecar process's CPU time (utime + stime of all its threads, "
          "/proc/PID/stat) over the run, divided by the run's seconds and by the rps achieved / 1,000. "
          "For the relay row the nginx stream worker. RSS: the largest VmRSS sampled every 200 ms "
          "during the run. Context switches: voluntary and involuntary, every thread of the sidecar, "
          "over the run, per request answered. 'failed': non-200 answers and connection errors, summed over all runs "
          "(requests oha cut off at the end of a run, 'aborted due to deadline', are listed but "
          "not counted).",
          "",
          "Not measured yet: two nodes." + ("" if "grpc" in protos else " Not in this run: gRPC unary."),
          ""]
    for row, text in counters.items():
        L += [f"Datapath counters of {row}'s client pod at the end:", "", "```", text.strip(), "```", ""]
    open(a.out, "w").write("\n".join(L))
    plot(rows, protos, tables, png, a)
    print("\n".join(L))
    print(f"mesh.py: wrote {a.out} and {png}")


def section(a, rows, proto, runs, L):
    """The tables of one protocol, appended to L; returns (fixed, added) for the plot."""
    fixed, mx = medians(runs, rows, proto, "fixed"), medians(runs, rows, proto, "max")
    add = added(runs, rows, proto, "fixed")
    L += [f"## {PROTO[proto]}: {a.rate} rps over {a.conns} connections", "",
          "| row | rps | p50 ms | p90 ms | p99 ms | p99.9 ms | added p50 | added p90 | added p99 | "
          "added p99.9 | vCPU/1k rps client sidecar | server sidecar | RSS MiB client | server | "
          "context switches/request client | server | failed |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        f, d = fixed[row], add[row]
        L.append(f"| {LABEL[row]} | {fmt(f.get('rps'), 0)} | " + " | ".join(fmt(f.get(p), 3) for p in PCTS)
                 + " | " + " | ".join(fmt(d[p], 3) if row != "direct" else "" for p in PCTS)
                 + f" | {fmt(f.get('cpu_client'), 3)} | {fmt(f.get('cpu_server'), 3)}"
                 + f" | {fmt(f.get('rss_client'), 1)} | {fmt(f.get('rss_server'), 1)}"
                 + f" | {fmt(f.get('ctx_client'), 1)} | {fmt(f.get('ctx_server'), 1)} | {f['failed_total']} |")
    errs = [(row, load, fixed[row]["errors"] if load == "fixed" else mx[row]["errors"])
            for row in rows for load in ("fixed", "max")]
    errs = [(row, load, e) for row, load, e in errs if e]
    if errs:
        L += ["", "Connection errors (oha's error distribution, all repetitions): " + "; ".join(
            f"{row} ({load} load): " + ", ".join(f"{n}× {k}" for k, n in e.items()) for row, load, e in errs) + "."]
    L += ["", f"## {PROTO[proto]}: maximum rate, {a.conns} connections, no rate limit", "",
          "| row | max rps | p50 ms | p99 ms | vCPU client sidecar per 1k rps | server | failed |",
          "|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        m = mx[row]
        L.append(f"| {LABEL[row]} | {fmt(m.get('rps'), 0)} | {fmt(m.get('p50'), 3)} | {fmt(m.get('p99'), 3)} "
                 f"| {fmt(m.get('cpu_client'), 3)} | {fmt(m.get('cpu_server'), 3)} | {m['failed_total']} |")
    L += ["", f"## {PROTO[proto]}: against Envoy and the targets", ""]
    pairs = [(m, e) for m, e in AGAINST.items() if m in rows and e in rows]
    if pairs:
        L += ["| row | against | added p90 / Envoy's (≤ 0.25) | added p99 / Envoy's (≤ 0.25) | "
              "vCPU per 1k rps, both sidecars / Envoy's (≤ 0.25) | RSS, larger sidecar / Envoy's (≤ 0.2) | "
              "max rps / Envoy's |", "|---|---|---|---|---|---|---|"]
        for row, env in pairs:
            e = fixed[env]
            ecpu = (e.get("cpu_client") or 0) + (e.get("cpu_server") or 0)
            erss = max(e.get("rss_client") or 0, e.get("rss_server") or 0)
            f = fixed[row]
            cells = []
            for p in ("p90", "p99"):
                ea, ma = add[env][p], add[row][p]
                r = ma / ea if ea and ea > 0 and ma is not None else None
                cells.append(f"{fmt(r)} {verdict(r, 0.25)}")
            mcpu = (f.get("cpu_client") or 0) + (f.get("cpu_server") or 0)
            r = mcpu / ecpu if ecpu else None
            cells.append(f"{fmt(r)} {verdict(r, 0.25)}")
            mrss = max(f.get("rss_client") or 0, f.get("rss_server") or 0)
            r = mrss / erss if erss else None
            cells.append(f"{fmt(r)} {verdict(r, 0.2)}")
            rm = mx[row].get("rps") / mx[env]["rps"] if mx[env].get("rps") else None
            cells.append(fmt(rm))
            L.append(f"| {LABEL[row]} | {env} | " + " | ".join(cells) + " |")
    if "relay" in rows and "membrane-all" in rows:
        fl, ma = add["relay"]["p50"], add["membrane-all"]["p50"]
        r = ma / fl if fl and fl > 0 and ma is not None else None
        L += ["", f"Everything on, added p50 against the relay floor's (target ≤ 2×): "
              f"{fmt(ma, 3)} ms / {fmt(fl, 3)} ms = {fmt(r)}× — "
              + ("met" if r is not None and r <= 2 else "**missed**") + "."]
    L.append("")
    return fixed, add


def plot(rows, protos, tables, png, a):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(protos), 2, figsize=(13, 4.6 * len(protos)), squeeze=False)
    width = 0.8 / len(rows)
    for line, proto in zip(axes, protos):
        fixed, add = tables[proto]
        for ax, data, title in ((line[0], fixed, "latency (ms, log)"),
                                (line[1], add, "added over direct (ms)")):
            for i, row in enumerate(rows):
                if data is add and row == "direct":
                    continue
                ys = [data[row].get(p) or 0 for p in PCTS]
                # One colour per row in both panels (the added panel has no direct bar).
                ax.bar([x + i * width for x in range(len(PCTS))], ys, width, label=LABEL[row],
                       color=f"C{i}")
            ax.set_xticks([x + width * (len(rows) - 1) / 2 for x in range(len(PCTS))])
            ax.set_xticklabels(PCTS)
            if data is fixed:
                ax.set_yscale("log")
            else:
                # Linear near zero (an added latency can be slightly negative), log above 0.1 ms.
                ax.set_yscale("symlog", linthresh=0.1)
            ax.set_title(f"{PROTO[proto]}: {title}, {a.rate} rps, {a.conns} conns, 1 KiB", fontsize=9)
            ax.grid(axis="y", alpha=0.3)
        line[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
