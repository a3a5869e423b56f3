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
  rm -f "$RAW"
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

start_servers() {
  local pin=$1
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  PIDS=()
  in_pod "$pin" "$BIN" echo --listen 127.0.0.1:9000 >/dev/null & PIDS+=($!)
  in_pod "$pin" "$BIN" sink --listen 127.0.0.1:9001 >/dev/null & PIDS+=($!)
  sleep 0.3
}

set_mode() {
  if [ "$1" = on ]; then
    "$AGENT" --bpffs "$BPFFS" attach --cgroup "$CG" >/dev/null
  else
    "$AGENT" --bpffs "$BPFFS" detach --cgroup "$CG" >/dev/null 2>&1 || true
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
        echo "$pin $mode stream $w $(in_pod "$pin" "$BIN" stream --connect 127.0.0.1:9001 --write "$w" --secs "$SECS")" >>"$RAW"
      done
    done
  done
done
set_mode off

OUT=${OUT:-bench/results/sockmap-$(date -u +%Y-%m-%d).md}
python3 - "$RAW" "$OUT" "$REPS" "$SECS" <<'PY'
import json, statistics, sys, platform, subprocess
raw, out, reps, secs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
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
         "| workload | cpu | size | off | on | ratio on/off |", "|---|---|---|---|---|---|"]
worst = None
for (kind, pin, size), m in sorted(cells.items()):
    off, on = statistics.median(m["off"]), statistics.median(m["on"])
    if kind == "rr":
        ratio, unit, name = off / on, "us p50", "req/resp latency"
    else:
        ratio, unit, name = on / off, "Gbit/s", "stream throughput"
    worst = ratio if worst is None else min(worst, ratio)
    flag = "" if ratio >= 0.95 else " (LOSS)"
    lines.append(f"| {name} | {pin} | {size} B | {off:.2f} {unit} | {on:.2f} {unit} | {ratio:.2f}x{flag} |")
lines += ["", f"Worst cell: {worst:.2f}x (target: no cell below 0.95x)."]
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
print(f"\nwritten to {out}")
PY
