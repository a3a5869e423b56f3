#!/usr/bin/env bash
# The XDP prefilter's benchmark (issue 18; datapath/benches/prefilter.rs says what it
# measures): the same deny set in XDP (native, generic), its tc twin and an nftables set,
# side by side in one run.
#   bench/prefilter.sh [--reps N --secs S --cidrs 10000 --repeat R]
# Writes bench/results/prefilter-<date>.md (OUT=... to choose). Root; everything runs in
# network namespaces and a bpffs directory the benchmark creates, named
# membrane-test-<its pid>-*, and removes; nftables rules only inside those namespaces.
# Env: CARGO_TARGET_DIR; PROFILE (default bench, i.e. release; dev builds faster and
# measures the same kernel programs, the flood's sender being slower).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "prefilter.sh: run as root (network namespaces, BPF)" >&2; exit 1; }
for cmd in nft jq nsenter; do
  command -v "$cmd" >/dev/null 2>&1 || { echo "prefilter.sh: needs $cmd (apt-get install nftables jq util-linux)" >&2; exit 1; }
done

BIN=$(cd "$ROOT" && cargo bench -q -p membrane-datapath --bench prefilter --no-run \
  --profile "${PROFILE:-bench}" --message-format=json |
  jq -r 'select(.target.name == "prefilter" and .executable != null) | .executable' | tail -1)
[ -x "$BIN" ] || { echo "prefilter.sh: no prefilter benchmark binary" >&2; exit 1; }

OUT=${OUT:-$ROOT/bench/results/prefilter-$(date -u +%Y-%m-%d).md}
PID=
cleanup() {
  [ -n "$PID" ] || return 0
  kill "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
  local tag="membrane-test-$PID-"
  for ns in $(ip netns list | awk '{print $1}' | grep "^$tag" || true); do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  for d in /sys/fs/bpf/"$tag"*; do
    [ -e "$d" ] && rm -rf "$d"
  done
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cd "$ROOT"
"$BIN" --out "$OUT" "$@" &
PID=$!
wait "$PID"
PID=
