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
"$AGENT" --bpffs "$BPFFS" counters >"$RAW.counters" 2>&1 || true

OUT=${OUT:-bench/results/sockmap-$(date -u +%Y-%m-%d).md}
python3 - "$RAW" "$OUT" "$REPS" "$SECS" <<'PY'
import json, statistics, sys, platform, subprocess
raw, out, reps, secs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
counters = open(raw + ".counters").read()
cells = {}
for line in open(raw):
    pin, mode, kind, size, js = line.split(" ", 4)
    d = json.loads(js)
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
    else:
        ratio, unit, name = on / off, "Gbit/s", "stream throughput"
    worst = ratio if worst is None else min(worst, ratio)
    flag = "" if ratio >= 0.95 else " (LOSS)"
    runs = " ".join(f"{v:.2f}" for v in m["on"])
    lines.append(f"| {name} | {pin} | {size} B | {off:.2f} {unit} | {on:.2f} {unit} | {ratio:.2f}x{flag} | {runs} |")
lines += ["", f"Worst cell (medians): {worst:.2f}x (target: no cell below 0.95x).", "",
          "Datapath counters at the end of the run:", "", "```", counters.rstrip(), "```"]
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
print(f"\nwritten to {out}")
PY
