#!/usr/bin/env bash
# What the sidecar's L7 records cost the request path: three membrane-proxy instances side
# by side in one run, the same policy and nginx backend as bench/proxy.sh, each with one
# worker on core 0 (load and backend on core 1), no access log:
#   plain   - no --records-socket (the bench path as it always was)
#   absent  - --records-socket naming a socket nobody serves (records skipped and counted)
#   records - --records-socket to a reader that takes every line (a stand-in for the agent,
#             which never blocks its readers), so every request is encoded and sent
# wrk at 1 and 32 connections, allowed (GET /v1/x) and denied (PUT /v1/exhaust-port),
# REPS repetitions alternating between the three, medians and ratios to `plain`, the load
# average before and after, and whether the reader got every record the proxy says it sent.
# Loopback only, bounded runs. Writes bench/results/records-<date>.md (OUT=... to choose).
#
# Env: DURATION (seconds per run, default 5), REPS (default 3), BENCH_DIR, CARGO_TARGET_DIR.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"
find_bench_dir
DURATION=${DURATION:-5}
REPS=${REPS:-3}
PROXY_CORE=${PROXY_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
for cmd in nginx wrk taskset curl python3; do
  command -v "$cmd" >/dev/null || { echo "records.sh: $cmd missing (run scripts/install-deps.sh)" >&2; exit 1; }
done

build_release_bins
MEMBRANE="$BIN_DIR/membrane-proxy"

NGINX_PORT=18080
declare -A PORT=([plain]=18091 [absent]=18092 [records]=18093)
declare -A ADMIN=([plain]=19921 [absent]=19924 [records]=19927)
require_free_ports $NGINX_PORT 18082 "${PORT[@]}" 19921 19922 19923 19924 19925 19926 19927 19928 19929

bench_tmp membrane-bench-records

start_nginx_backend

# The reader: accepts connections and counts the lines it takes.
cat >"$TMP/sink.py" <<'EOF'
import os, socket, sys, threading
path, count_file = sys.argv[1], sys.argv[2]
n = [0]
lock = threading.Lock()
def serve(c):
    buf = b""
    while True:
        d = c.recv(1 << 16)
        if not d:
            return
        with lock:
            n[0] += d.count(b"\n")
            with open(count_file, "w") as f:
                f.write(str(n[0]))
s = socket.socket(socket.AF_UNIX)
s.bind(path)
s.listen(8)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
EOF
taskset -c "$LOAD_CORE" python3 "$TMP/sink.py" "$TMP/records.sock" "$TMP/sink.count" &
PIDS+=($!)

declare -A PID
for name in plain absent records; do
  extra=()
  case $name in
    absent) extra=(--records-socket "$TMP/nobody.sock") ;;
    records) extra=(--records-socket "$TMP/records.sock") ;;
  esac
  a=${ADMIN[$name]}
  taskset -c "$PROXY_CORE" "$MEMBRANE" standalone --listen "127.0.0.1:${PORT[$name]}" \
    --upstream 127.0.0.1:$NGINX_PORT --policy "$BENCH_DIR/cnp-l7-bench.yaml" \
    --endpoint-labels k8s:app=backend --concurrency 1 --upstream-protocol http1 --access-log false \
    --admin "127.0.0.1:$a" --metrics "127.0.0.1:$((a + 1))" --health "127.0.0.1:$((a + 2))" --log warn \
    "${extra[@]}" >"$TMP/$name.log" 2>&1 &
  PID[$name]=$!
  PIDS+=($!)
  wait_port "${PORT[$name]}"
done
# The reporter connects in the background: wait until the reader has had a record.
for _ in $(seq 100); do
  curl -s -o /dev/null "http://127.0.0.1:${PORT[records]}/v1/x"
  sleep 0.2
  [ "$(cat "$TMP/sink.count" 2>/dev/null || echo 0)" -gt 0 ] && break
done
[ "$(cat "$TMP/sink.count" 2>/dev/null || echo 0)" -gt 0 ] || { echo "records.sh: the reader got no record" >&2; exit 1; }
# Sanity: the verdicts the policy gives, before anything is measured.
for name in plain absent records; do
  a=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${PORT[$name]}/v1/x")
  d=$(curl -s -o /dev/null -w '%{http_code}' -X PUT "http://127.0.0.1:${PORT[$name]}/v1/exhaust-port")
  [ "$a/$d" = "200/403" ] || { echo "records.sh: $name gave allow=$a deny=$d, want 200/403" >&2; exit 1; }
done
printf 'wrk.method = "PUT"\n' >"$TMP/put.lua"

run_wrk() { # port conns path [lua] -> rps
  taskset -c "$LOAD_CORE" wrk -t1 -c"$2" -d"${DURATION}s" ${4:+-s "$4"} "http://127.0.0.1:$1$3" |
    awk '/Requests\/sec/ { printf "%d\n", $2 }'
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))

LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
: >"$TMP/samples"
for rep in $(seq "$REPS"); do
  for load in "1 /v1/x" "32 /v1/x" "32 /v1/exhaust-port put"; do
    read -r conns path put <<<"$load"
    for name in plain absent records; do
      t0=$(cpu_ticks "${PID[$name]}")
      rps=$(run_wrk "${PORT[$name]}" "$conns" "$path" ${put:+"$TMP/put.lua"})
      t1=$(cpu_ticks "${PID[$name]}")
      key="$name ${put:-get}$conns"
      echo "$key rps $rps" >>"$TMP/samples"
      echo "$key cpu_us $(( (t1 - t0) * TICK_US / (rps * DURATION) ))" >>"$TMP/samples"
    done
  done
done
LOADAVG_END=$(cut -d' ' -f1-3 /proc/loadavg)
sleep 1
SENT=$(curl -s "http://127.0.0.1:$((ADMIN[records] + 1))/stats/prometheus" | awk '/^membrane_l7_records_sent_total/ { print $2 }')
DROPPED=$(curl -s "http://127.0.0.1:$((ADMIN[records] + 1))/stats/prometheus" | awk '/^membrane_l7_records_dropped_total/ { n += $2 } END { print n + 0 }')
SKIPPED=$(curl -s "http://127.0.0.1:$((ADMIN[absent] + 1))/stats/prometheus" | awk '/^membrane_l7_records_dropped_total\{reason="disconnected"\}/ { print $2 }')
READ=$(cat "$TMP/sink.count" 2>/dev/null || echo 0)

OUT=${OUT:-$ROOT/bench/results/records-$(date -u +%Y-%m-%d).md}
python3 - "$TMP/samples" "$LOADAVG" "$LOADAVG_END" "$DURATION" "$REPS" "$SENT" "$DROPPED" "$SKIPPED" "$READ" "$(git -C "$ROOT" rev-parse --short HEAD)" >"$OUT" <<'EOF'
import statistics, sys
samples, la0, la1, dur, reps, sent, dropped, skipped, read, commit = sys.argv[1:]
vals = {}
for line in open(samples):
    name, load, metric, v = line.split()
    vals.setdefault((name, load, metric), []).append(float(v))
med = lambda k: statistics.median(vals[k])
print(f"# L7 records: the request path's cost (commit {commit})\n")
print(f"bench/records.sh, {reps} reps x {dur} s per run, medians; load average before {la0}, after {la1}.")
print("Each proxy one worker on core 0; wrk and nginx on core 1. Ratios are to `plain` (no --records-socket).\n")
print("| load | plain rps | absent rps (ratio) | records rps (ratio) | plain CPU µs/req | absent | records |")
print("|---|---|---|---|---|---|---|")
for load, label in [("get1", "GET, 1 conn"), ("get32", "GET, 32 conns"), ("put32", "PUT denied, 32 conns")]:
    p, a, r = (med((n, load, "rps")) for n in ("plain", "absent", "records"))
    c = [med((n, load, "cpu_us")) for n in ("plain", "absent", "records")]
    print(f"| {label} | {p:.0f} | {a:.0f} ({a/p:.2f}) | {r:.0f} ({r/p:.2f}) | {c[0]:.1f} | {c[1]:.1f} | {c[2]:.1f} |")
print(f"\n`records`: {sent} records sent, {dropped} dropped, {read} lines read by the reader; `absent`: {skipped} skipped (no agent).")
EOF
cat "$OUT"
