#!/usr/bin/env bash
# Two membrane-proxy builds side by side (A, then B, alternating every repetition) in the
# mesh benchmark's server-sidecar shape, per protocol: the CPU one request costs the
# sidecar that parses and enforces the L7 rule (issue 17). One proxy per build and
# protocol, `standalone --concurrency 1 --access-log false` as the mesh rows run it, in
# front of the mesh benchmark's apps (bench/mesh_configs.py: nginx answering 1 KiB on
# HTTP/1.1 and h2c; bench/mesh_grpc_app.py: grpcio's server, gRPC unary), HTTP/2 upstream
# for h2c and gRPC (the default, `--upstream-protocol match`), under the mesh benchmark's
# rule. Load: oha at 1,000 rps over 16 connections, latency corrected (the mesh benchmark's
# requests: HTTP/1.1 POST with 1 KiB, h2c GET, gRPC unary with a framed 1 KiB message).
# Per run: vCPU per 1,000 rps, context switches, and the proxy's socket system calls per
# request, counted by `perf stat` on the syscall tracepoints of its pid (writes: write,
# writev, sendto; reads: read, recvfrom; epoll_wait), latency. The proxies are pinned to core 0,
# the apps and oha to core 1; everything inside a network namespace of its own
# (membrane-test-<pid>-cpuab), removed at the end. No capture, no client sidecar: this
# isolates the server sidecar's own work, which is what a change to the proxy changes.
#   bench/proxy-cpu-ab.sh BIN_A BIN_B [OUT.md]
# Env: REPS (default 3), SECS (default 5), PROTOS (default h1,h2c,grpc), RATE (1000),
# CONNS (16), ARGS_A / ARGS_B (extra proxy flags for A / B, e.g. "--busy-poll 0us"),
# OHA (default: oha on PATH). Root (a network namespace; `perf stat` on syscall tracepoints).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
A=$(realpath "$1") B=$(realpath "$2") OUT=${3:-/dev/stdout}
REPS=${REPS:-3} SECS=${SECS:-5} PROTOS=${PROTOS:-h1,h2c,grpc} RATE=${RATE:-1000} CONNS=${CONNS:-16}
ARGS_A=${ARGS_A:-} ARGS_B=${ARGS_B:-}
OHA=${OHA:-$(command -v oha)}
. "$ROOT/bench/lib.sh"
ab_netns cpuab

# The mesh benchmark's apps, rule and request bodies.
python3 - "$ROOT/bench" "$TMP" <<'EOF'
import os, sys
sys.path.insert(0, sys.argv[1])
import mesh_configs as cfg
tmp = sys.argv[2]
open(f"{tmp}/app.conf", "w").write(cfg.nginx_app(tmp, "app"))
open(f"{tmp}/cnp.yaml", "w").write(cfg.CNP)
open(f"{tmp}/body", "w").write(cfg.BODY)
for proto, (port, _, method, path, _) in cfg.PROTOS.items():
    open(f"{tmp}/{proto}.req", "w").write(f"{port} {method} {path}\n")
EOF
GRPC_APP=$ROOT/bench/mesh_grpc_app.py
python3 "$GRPC_APP" request "$TMP/grpc.bin"
in_ns taskset -c 1 nginx -c "$TMP/app.conf" >"$TMP/app.log" 2>&1 &
in_ns taskset -c 1 python3 "$GRPC_APP" serve 18084 "$TMP/grpc.count" >"$TMP/grpc.log" 2>&1 &

IFS=, read -ra PROTO_LIST <<<"$PROTOS"
declare -A PID=() PORT=()
next_port=19000
for v in A B; do
  bin=${!v}; extra=ARGS_$v
  for proto in "${PROTO_LIST[@]}"; do
    read -r app_port _ _ <"$TMP/$proto.req"
    p=$next_port; next_port=$((next_port + 10))
    PORT[$v.$proto]=$p
    # shellcheck disable=SC2086 # ARGS_A/ARGS_B are flag lists
    ip netns exec "$NS" taskset -c 0 "$bin" standalone --listen 127.0.0.1:$p \
      --upstream 127.0.0.1:"$app_port" --policy "$TMP/cnp.yaml" --endpoint-labels k8s:app=backend \
      --concurrency 1 --access-log false --admin 127.0.0.1:$((p + 1)) \
      --metrics 127.0.0.1:$((p + 2)) --health 127.0.0.1:$((p + 3)) --log warn ${!extra} \
      >"$TMP/$v.$proto.log" 2>&1 &
    PID[$v.$proto]=$!
  done
done

# Each proxy answers the allowed request and denies another, as the mesh rows are checked.
check() {
  local v=$1 proto=$2 url code deny
  read -r _ method path <"$TMP/$proto.req"
  url="http://127.0.0.1:${PORT[$v.$proto]}"
  for _ in $(seq 100); do
    case $proto in
      grpc) code=$(in_ns python3 "$GRPC_APP" call "127.0.0.1:${PORT[$v.$proto]}" /bench.Echo/Unary 2>/dev/null || true) ;;
      h2c) code=$(in_ns curl -s -o /dev/null -w '%{http_code}' --http2-prior-knowledge "$url$path" || true) ;;
      h1) code=$(in_ns curl -s -o /dev/null -w '%{http_code}' -X POST -d @"$TMP/body" "$url$path" || true) ;;
    esac
    [ "$code" = 200 ] || [ "$code" = OK ] && break
    sleep 0.2
  done
  case $proto in
    grpc) deny=$(in_ns python3 "$GRPC_APP" call "127.0.0.1:${PORT[$v.$proto]}" /bench.Echo/Forbidden) ;;
    h2c) deny=$(in_ns curl -s -o /dev/null -w '%{http_code}' --http2-prior-knowledge -X PUT "$url/v1/exhaust-port") ;;
    h1) deny=$(in_ns curl -s -o /dev/null -w '%{http_code}' -X PUT "$url/v1/exhaust-port") ;;
  esac
  if { [ "$code" != 200 ] && [ "$code" != OK ]; } || { [ "$deny" != 403 ] && [ "$deny" != PERMISSION_DENIED ]; }; then
    echo "proxy-cpu-ab.sh: $v $proto answered $code / denied $deny (want 200 or OK / 403 or PERMISSION_DENIED)" >&2
    cat "$TMP/$v.$proto.log" >&2
    exit 1
  fi
}
for v in A B; do for proto in "${PROTO_LIST[@]}"; do check "$v" "$proto"; done; done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ctx() { cat /proc/"$1"/task/*/status | awk '/ctxt_switches/ {n += $2} END {print n}'; }
grpc_count() { sleep 0.2; cat "$TMP/grpc.count" 2>/dev/null || echo 0; }
TICK=$(getconf CLK_TCK)
RES=$TMP/results
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
for rep in $(seq "$REPS"); do
  order="A B"; [ $((rep % 2)) = 0 ] && order="B A"
  for proto in "${PROTO_LIST[@]}"; do
    read -r _ method path <"$TMP/$proto.req"
    case $proto in
      h1) flags=(-m POST -D "$TMP/body" -H "content-type: application/octet-stream") ;;
      h2c) flags=(--http2 -m GET) ;;
      grpc) flags=(--http2 -m POST -D "$TMP/grpc.bin" -H "content-type: application/grpc" -H "te: trailers") ;;
    esac
    for v in $order; do
      url="http://127.0.0.1:${PORT[$v.$proto]}$path"; pid=${PID[$v.$proto]}
      # Warm-up: the upstream pool and caches.
      in_ns taskset -c 1 "$OHA" --no-tui --output-format json -z 1s -w -c "$CONNS" -q "$RATE" \
        --latency-correction "${flags[@]}" "$url" >/dev/null
      c0=$(cpu_ticks "$pid"); x0=$(ctx "$pid"); g0=$(grpc_count)
      # The proxy's socket system calls over the run (tracepoint counts, no tracing of
      # each call).
      perf stat -x, -o "$TMP/sys.csv" -p "$pid" -e syscalls:sys_enter_write,syscalls:sys_enter_writev \
        -e syscalls:sys_enter_sendto,syscalls:sys_enter_read,syscalls:sys_enter_recvfrom \
        -e syscalls:sys_enter_epoll_wait -- sleep "$SECS" &
      perf_pid=$!
      in_ns taskset -c 1 "$OHA" --no-tui --output-format json -z "${SECS}s" -w -c "$CONNS" -q "$RATE" \
        --latency-correction "${flags[@]}" "$url" >"$TMP/oha.json"
      c1=$(cpu_ticks "$pid"); x1=$(ctx "$pid"); g1=$(grpc_count)
      wait "$perf_pid"
      python3 - "$TMP/oha.json" "$v" "$proto" "$((c1 - c0))" "$((x1 - x0))" \
        "$TMP/sys.csv" "$((g1 - g0))" "$TICK" "$SECS" >>"$RES" <<'EOF'
import json, sys
js = json.load(open(sys.argv[1])); v, proto = sys.argv[2:4]
ticks, ctx = map(int, sys.argv[4:6])
app, tick, secs = map(int, sys.argv[7:])
sys_n = {}
for line in open(sys.argv[6]):
    f = line.strip().split(",")
    if len(f) > 2 and f[0].isdigit():
        sys_n[f[2].rsplit("sys_enter_", 1)[-1]] = int(f[0])
wr = sum(sys_n.get(k, 0) for k in ("write", "writev", "sendto"))
rd = sum(sys_n.get(k, 0) for k in ("read", "recvfrom"))
ep = sys_n.get("epoll_wait", 0)
rps = js["summary"]["requestsPerSec"]; p = js["latencyPercentiles"]
codes = js.get("statusCodeDistribution", {})
ok = sum(n for c, n in codes.items() if str(c) == "200")
bad = sum(n for c, n in codes.items() if str(c) != "200") + sum(
    n for k, n in js.get("errorDistribution", {}).items() if k != "aborted due to deadline")
if proto == "grpc":
    # oha does not read trailers: a 200 the app did not answer is a sidecar's error.
    bad += max(0, ok - app)
n = rps * secs
print(v, proto, f"{ticks / tick / secs / (rps / 1000):.4f}", f"{ctx / n:.2f}", f"{wr / n:.2f}",
      f"{rd / n:.2f}", f"{ep / n:.2f}", f"{p['p50'] * 1e3:.3f}", f"{p['p99'] * 1e3:.3f}",
      f"{rps:.0f}", bad)
EOF
      tail -1 "$RES" >&2
    done
  done
done
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)
python3 - "$RES" "$A" "$B" "$LOAD0" "$LOAD1" "$REPS" "$SECS" "$RATE" "$CONNS" "$ARGS_A" "$ARGS_B" >"$OUT" <<'EOF'
import statistics, sys
res, a, b, load0, load1, reps, secs, rate, conns, args_a, args_b = sys.argv[1:]
rows = {}
for line in open(res):
    f = line.split()
    rows.setdefault((f[0], f[1]), []).append(f[2:])
protos = list(dict.fromkeys(p for _, p in rows))
print(f"A: `{a}` {args_a}  \nB: `{b}` {args_b}  \n{reps} repetitions, {secs} s per run at {rate} rps "
      f"over {conns} connections, A and B alternating; medians. Load average (1/5/15 min) at "
      f"start {load0}, at end {load1} (2 cores).\n")
names = ("vCPU per 1,000 rps", "context switches / request", "socket writes / request",
         "socket reads / request", "epoll_wait / request", "p50 ms", "p99 ms", "rps")
for proto in protos:
    print(f"\n### {proto}\n\n| measure | A | B | B / A |\n|---|---:|---:|---:|")
    for i, name in enumerate(names):
        x = statistics.median(float(r[i]) for r in rows[("A", proto)])
        y = statistics.median(float(r[i]) for r in rows[("B", proto)])
        print(f"| {name} | {x:.3f} | {y:.3f} | {y / x if x else float('nan'):.2f} |")
    fa = sum(int(r[8]) for r in rows[("A", proto)])
    fb = sum(int(r[8]) for r in rows[("B", proto)])
    print(f"| failed (all runs) | {fa} | {fb} | |")
EOF
