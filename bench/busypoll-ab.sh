#!/usr/bin/env bash
# Two membrane-proxy builds side by side (A, then B, alternating every repetition) at the
# loads where busy polling matters: Istio's moderate rate (oha, 1,000 rps over 16
# connections, latency corrected) for the CPU and context switches each request costs, and
# wrk back to back on 1 and 32 connections for the speed busy polling buys. Both proxies
# with their defaults but the access log (off, as in proxy.sh), one worker, pinned to core
# 0; nginx and the load generators on core 1; all inside a network namespace of its own
# (membrane-test-<pid>-bpab), removed at the end.
#   bench/busypoll-ab.sh BIN_A BIN_B [OUT.md]
# Env: REPS (default 3), SECS (default 5), OHA (default: oha on PATH). Root.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
A=$(realpath "$1") B=$(realpath "$2") OUT=${3:-/dev/stdout}
REPS=${REPS:-3} SECS=${SECS:-5}
OHA=${OHA:-$(command -v oha)}
BENCH_DIR=/work/shared/bench
[ -f "$ROOT/../shared/bench/cnp-l7-bench.yaml" ] && BENCH_DIR=$ROOT/../shared/bench
. "$ROOT/bench/lib.sh"
ab_netns bpab

sed -e "s#/tmp/membrane-bench-nginx.pid#$TMP/nginx.pid#" -e "s#/tmp/membrane-bench-nginx.err#$TMP/nginx.err#" \
  "$BENCH_DIR/nginx-backend.conf" >"$TMP/nginx.conf"
in_ns taskset -c 1 nginx -c "$TMP/nginx.conf" >"$TMP/nginx.log" 2>&1 &
declare -A PORT=([A]=18083 [B]=18093) PID=()
for v in A B; do
  bin=${!v}; p=${PORT[$v]}
  # Not through in_ns (a function would fork a subshell): ip, taskset and the proxy are
  # one process by exec, whose pid $! is.
  ip netns exec "$NS" taskset -c 0 "$bin" standalone --listen 127.0.0.1:$p --upstream 127.0.0.1:18080 \
    --policy "$BENCH_DIR/cnp-l7-bench.yaml" --endpoint-labels k8s:app=backend --concurrency 1 \
    --upstream-protocol http1 --access-log false --admin 127.0.0.1:$((p + 1)) \
    --metrics 127.0.0.1:$((p + 2)) --health 127.0.0.1:$((p + 3)) --log warn >"$TMP/$v.log" 2>&1 &
  PID[$v]=$!
done
for v in A B; do
  for _ in $(seq 100); do
    [ "$(in_ns curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${PORT[$v]}/v1/x")" = 200 ] && break
    sleep 0.1
  done
  d=$(in_ns curl -s -o /dev/null -w '%{http_code}' -X PUT "http://127.0.0.1:${PORT[$v]}/v1/exhaust-port")
  [ "$d" = 403 ] || { echo "busypoll-ab.sh: $v denied with $d, want 403" >&2; exit 1; }
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ctx() { cat /proc/"$1"/task/*/status | awk '/ctxt_switches/ {n += $2} END {print n}'; }
TICK=$(getconf CLK_TCK)
RES=$TMP/results
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
for rep in $(seq "$REPS"); do
  order="A B"; [ $((rep % 2)) = 0 ] && order="B A"
  for v in $order; do
    url="http://127.0.0.1:${PORT[$v]}/v1/x"; pid=${PID[$v]}
    c0=$(cpu_ticks "$pid"); x0=$(ctx "$pid")
    in_ns taskset -c 1 "$OHA" --no-tui --output-format json -z "${SECS}s" -w -c 16 -q 1000 \
      --latency-correction "$url" >"$TMP/oha.json"
    c1=$(cpu_ticks "$pid"); x1=$(ctx "$pid")
    python3 - "$TMP/oha.json" "$v" "$((c1 - c0))" "$((x1 - x0))" "$TICK" "$SECS" >>"$RES" <<'EOF'
import json, sys
js = json.load(open(sys.argv[1])); v, ticks, ctx, tick, secs = sys.argv[2], *map(int, sys.argv[3:])
rps = js["summary"]["requestsPerSec"]; p = js["latencyPercentiles"]
ok = js["statusCodeDistribution"].get("200", 0)
print(v, "rate", f"{ticks / tick / secs / (rps / 1000):.4f}", f"{ctx / (rps * secs):.2f}",
      f"{p['p50'] * 1e3:.3f}", f"{p['p99'] * 1e3:.3f}", f"{rps:.0f}", ok)
EOF
    for c in 1 32; do
      out=$(in_ns taskset -c 1 wrk -t1 -c$c -d"${SECS}s" --latency "$url")
      rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
      p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
      echo "$v wrk$c $rps $p50" >>"$RES"
    done
  done
done
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)
python3 - "$RES" "$A" "$B" "$LOAD0" "$LOAD1" "$REPS" "$SECS" >"$OUT" <<'EOF'
import statistics, sys
res, a, b, load0, load1, reps, secs = sys.argv[1:]
rows = {}
for line in open(res):
    f = line.split()
    rows.setdefault((f[0], f[1]), []).append(f[2:])
def us(s):  # wrk's latency: 84.00us, 1.20ms
    for unit, k in (("us", 1e-3), ("ms", 1), ("s", 1e3)):
        if s.endswith(unit):
            return float(s[: -len(unit)]) * k
def med(v, kind, i, conv=float):
    return statistics.median(conv(r[i]) for r in rows[(v, kind)])
print(f"A: `{a}`  \nB: `{b}`  \n{reps} repetitions, {secs} s per run, A and B alternating; medians. "
      f"Load average (1/5/15 min) at start {load0}, at end {load1} (2 cores; other work on the machine).\n")
print("| measure | A | B | B / A |\n|---|---:|---:|---:|")
for name, kind, i, conv in (
        ("vCPU per 1,000 rps, 1,000 rps over 16 conns", "rate", 0, float),
        ("context switches per request, 1,000 rps over 16 conns", "rate", 1, float),
        ("p50 ms, 1,000 rps over 16 conns (latency corrected)", "rate", 2, float),
        ("p99 ms, 1,000 rps over 16 conns (latency corrected)", "rate", 3, float),
        ("RPS, wrk 1 conn", "wrk1", 0, float),
        ("p50 ms, wrk 1 conn", "wrk1", 1, us),
        ("RPS, wrk 32 conns", "wrk32", 0, float),
        ("p50 ms, wrk 32 conns", "wrk32", 1, us)):
    x, y = med("A", kind, i, conv), med("B", kind, i, conv)
    print(f"| {name} | {x:.3f} | {y:.3f} | {y / x if x else float('nan'):.2f} |")
EOF
