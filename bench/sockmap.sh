#!/usr/bin/env bash
# sockmap acceleration, on vs off, in the same run (issue 5 "honest acceleration").
# App and "sidecar" are membrane-sockbench processes in a private netns and a
# private cgroup v2 child; "on" = membrane-agent attached to that cgroup, "off"
# = detached. Request/response p50/p99 at 1 B, 1 KiB, 16 KiB and stream
# throughput at 1/4/16/64 KiB writes, pinned to one core and unpinned.
# Writes bench/results/sockmap-<date>.md with every cell as an on/off ratio.
# Usage: bench/sockmap.sh [SECONDS_PER_STREAM] (root; builds release bins).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-2}
RR_ITERS=${RR_ITERS:-20000}
REPS=${REPS:-3}
RR_SIZES=${RR_SIZES:-1 1024 16384}
STREAM_WRITES=${STREAM_WRITES:-1024 4096 16384 65536}
CPUS=${CPUS:-pinned unpinned}
# MEMBRANE_BIN_DIR: use already-built binaries instead of building them here.
if [ -z "${MEMBRANE_BIN_DIR:-}" ]; then
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/membrane-target}
  cargo build --release -q -p membrane-datapath --bins
  # The end-to-end cell needs the sidecar; skipped (and said so) without it.
  cargo build --release -q -p membrane-proxy 2>/dev/null || true
  MEMBRANE_BIN_DIR=$CARGO_TARGET_DIR/release
fi
BIN=$MEMBRANE_BIN_DIR/membrane-sockbench
AGENT=$MEMBRANE_BIN_DIR/membrane-agent

TAG=membrane-bench-$$
NS=$TAG
CG2=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/self/mounts)
[ -n "$CG2" ] || { echo "no cgroup2 mount" >&2; exit 1; }
CG=$CG2/$TAG
BPFFS=/sys/fs/bpf/$TAG
PIDS=()
RAW=$(mktemp)

cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  "$AGENT" --bpffs "$BPFFS" detach --cgroup "$CG" >/dev/null 2>&1 || true
  rmdir "$CG" 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  rm -f "$RAW" "$RAW.counters"
}
trap cleanup EXIT

mkdir "$CG"
ip netns add "$NS"
ip -n "$NS" link set lo up

# in_pod PIN CMD...: run CMD inside the cgroup and netns, pinned to CPU 0 when PIN=pinned.
# It execs: call it in a subshell, $(...) or with &, never bare.
in_pod() {
  local pin=$1; shift
  local tset=()
  [ "$pin" = pinned ] && tset=(taskset -c 0)
  exec sh -c 'cg=$1; shift; echo $$ > "$cg/cgroup.procs" && exec "$@"' sh "$CG" \
    ip netns exec "$NS" "${tset[@]}" "$@"
}

sink_port() { echo $((20000 + $1 / 1024)); }

start_servers() {
  local pin=$1
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  PIDS=()
  in_pod "$pin" "$BIN" echo --listen 127.0.0.1:9000 >/dev/null & PIDS+=($!)
  # One sink (service) per write size: the splice decision is learned per
  # service port, and a service's write pattern is what it is.
  for w in $STREAM_WRITES; do
    in_pod "$pin" "$BIN" sink --listen "127.0.0.1:$(sink_port "$w")" >/dev/null & PIDS+=($!)
  done
  sleep 0.3
}

# "off" keeps the programs attached with splicing switched off (new
# connections take plain TCP; sockops runs once per connection), so what the
# datapath learned about services survives between the alternating runs.
set_mode() {
  if [ "$1" = on ]; then
    "$AGENT" --bpffs "$BPFFS" attach --cgroup "$CG" >/dev/null
  else
    "$AGENT" --bpffs "$BPFFS" attach --cgroup "$CG" --no-splice >/dev/null
  fi
}

for pin in $CPUS; do
  start_servers "$pin"
  for rep in $(seq "$REPS"); do
    for mode in off on; do
      set_mode "$mode"
      for size in $RR_SIZES; do
        echo "$pin $mode rr $size $(in_pod "$pin" "$BIN" rr --connect 127.0.0.1:9000 --size "$size" --iters "$RR_ITERS")" >>"$RAW"
      done
      for w in $STREAM_WRITES; do
        echo "$pin $mode stream $w $(in_pod "$pin" "$BIN" stream --connect "127.0.0.1:$(sink_port "$w")" --write "$w" --secs "$SECS")" >>"$RAW"
      done
    done
  done
done
# End to end: wrk -> membrane-proxy (the sidecar, standalone) -> nginx, all in
# the pod; "on" splices both loopback hops. The proxy is restarted for every
# run so no upstream connection outlives the mode it was made in.
E2E_NOTE="not run"
PROXY_BIN=$MEMBRANE_BIN_DIR/membrane-proxy
BENCH_DIR=${BENCH_DIR:-}
for d in ../shared/bench /work/shared/bench; do
  [ -z "$BENCH_DIR" ] && [ -f "$d/cnp-l7-bench.yaml" ] && BENCH_DIR=$d
done
if [ -x "$PROXY_BIN" ] && [ -n "$BENCH_DIR" ] && command -v nginx >/dev/null && command -v wrk >/dev/null; then
  E2E_NOTE="wrk -t1 (core 1) -> membrane-proxy standalone --concurrency 1 (core 0) -> nginx (core 1), HTTP/1.1 GET /v1/x allowed by cnp-l7-bench.yaml"
  NGX=$(mktemp -d)
  cat >"$NGX/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $NGX/nginx.pid;
error_log $NGX/nginx.err;
events { worker_connections 4096; }
http { access_log off; server { listen 127.0.0.1:18080; location / { return 200 "ok\n"; } } }
NGINX
  in_pod unpinned taskset -c 1 nginx -c "$NGX/nginx.conf" & PIDS+=($!)
  for rep in $(seq "$REPS"); do
    for mode in off on; do
      set_mode "$mode"
      in_pod unpinned taskset -c 0 "$PROXY_BIN" standalone --listen 127.0.0.1:15006 \
        --upstream 127.0.0.1:18080 --policy "$BENCH_DIR/cnp-l7-bench.yaml" \
        --endpoint-labels k8s:app=backend --concurrency 1 --upstream-protocol http1 \
        --access-log false --admin 127.0.0.1:19902 --metrics 127.0.0.1:19903 \
        --health 127.0.0.1:19904 --log warn >/dev/null 2>&1 &
      PROXY_PID=$!
      for _ in $(seq 50); do
        (in_pod unpinned curl -s -m 1 -o /dev/null http://127.0.0.1:15006/v1/x) && break
        sleep 0.1
      done
      for conns in 1 32; do
        out=$(in_pod unpinned taskset -c 1 wrk -t1 -c"$conns" -d"${SECS}s" --latency http://127.0.0.1:15006/v1/x)
        rps=$(echo "$out" | awk '/^Requests\/sec/ { print $2 }')
        p50=$(echo "$out" | awk '$1 == "50%" { v = $2; if (v ~ /ms$/) { sub(/ms$/, "", v); v *= 1000 } else if (v ~ /us$/) { sub(/us$/, "", v) } else if (v ~ /s$/) { sub(/s$/, "", v); v *= 1000000 }; print v }')
        echo "pinned $mode e2e $conns {\"rps\":${rps:-0},\"p50_us\":${p50:-0}}" >>"$RAW"
      done
      kill "$PROXY_PID" 2>/dev/null || true
      wait "$PROXY_PID" 2>/dev/null || true
    done
  done
fi
"$AGENT" --bpffs "$BPFFS" counters >"$RAW.counters" 2>&1 || true

OUT=${OUT:-bench/results/sockmap-$(date -u +%Y-%m-%d).md}
python3 - "$RAW" "$OUT" "$REPS" "$SECS" "$E2E_NOTE" <<'PY'
import json, statistics, sys, platform, subprocess
raw, out, reps, secs, e2e_note = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
counters = open(raw + ".counters").read()
cells = {}
for line in open(raw):
    pin, mode, kind, size, js = line.split(" ", 4)
    d = json.loads(js)
    if kind == "e2e":
        for sub, key in (("e2e_rps", "rps"), ("e2e_p50", "p50_us")):
            cells.setdefault((sub, pin, int(size)), {}).setdefault(mode, []).append(d[key])
        continue
    v = d["p50_us"] if kind == "rr" else d["gbit_s"]
    cells.setdefault((kind, pin, int(size)), {}).setdefault(mode, []).append(v)
kernel = platform.release()
cpus = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
lines = [f"# sockmap acceleration: on vs off ({kernel}, {cpus} CPUs)", "",
         f"Same run, alternating off/on, median of {reps} repetitions; streams {secs} s each.",
         "Ratio > 1 means acceleration on is better (lower latency / higher throughput).", "",
         "The 'on runs' column lists every repetition in order: the first connection to a",
         "service that streams small writes stays spliced (and slow) for its whole life;",
         "it teaches the datapath to keep that service on plain TCP for later connections.", "",
         "| workload | cpu | size | off | on | ratio on/off | on runs |", "|---|---|---|---|---|---|---|"]
worst = None
for (kind, pin, size), m in sorted(cells.items()):
    off, on = statistics.median(m["off"]), statistics.median(m["on"])
    if kind == "rr":
        ratio, unit, name = off / on, "us p50", "req/resp latency"
    elif kind == "e2e_p50":
        ratio, unit, name = off / on if on else 0, "us p50", "e2e sidecar latency (conns)"
    elif kind == "e2e_rps":
        ratio, unit, name = on / off if off else 0, "req/s", "e2e sidecar RPS (conns)"
    else:
        ratio, unit, name = on / off, "Gbit/s", "stream throughput"
    worst = ratio if worst is None else min(worst, ratio)
    flag = "" if ratio >= 0.95 else " (LOSS)"
    runs = " ".join(f"{v:.2f}" for v in m["on"])
    sz = f"{size}" if kind.startswith("e2e") else f"{size} B"
    lines.append(f"| {name} | {pin} | {sz} | {off:.2f} {unit} | {on:.2f} {unit} | {ratio:.2f}x{flag} | {runs} |")
lines += ["", f"End to end: {e2e_note}.", "",
          f"Worst cell (medians): {worst:.2f}x (target: no cell below 0.95x).", "",
          "Datapath counters at the end of the run:", "", "```", counters.rstrip(), "```"]
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
print(f"\nwritten to {out}")
PY
