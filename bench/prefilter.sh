#!/usr/bin/env bash
# The XDP prefilter's benchmark (issue 18; datapath/benches/prefilter.rs says what it
# measures): the same deny set in XDP (native, generic), its tc twin and an nftables set,
# side by side in one run.
#   bench/prefilter.sh [--reps N --secs S --cidrs 10000 --repeat R --sender auto|udp|mmsg|ring]
# Writes bench/results/prefilter-<date>.md (OUT=... to choose). Root; everything runs in
# network namespaces and a bpffs directory the benchmark creates, named
# membrane-test-<its pid>-*, and removes; nftables rules only inside those namespaces.
# The flood runs one sender thread per CPU, each pinned: give the machine to it (a busy
# machine shows in the page's load average and in its busy-CPU figures).
# Env: CARGO_TARGET_DIR; PROFILE (default bench, i.e. release; dev builds faster and
# measures the same kernel programs, the senders' own code being slower).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"
[ "$(id -u)" = 0 ] || { echo "prefilter.sh: run as root (network namespaces, BPF)" >&2; exit 1; }
for cmd in nft jq nsenter; do
  command -v "$cmd" >/dev/null 2>&1 || { echo "prefilter.sh: needs $cmd (apt-get install nftables jq util-linux)" >&2; exit 1; }
done

BIN=$(bench_executable membrane-datapath prefilter "${PROFILE:-bench}")
[ -x "$BIN" ] || { echo "prefilter.sh: no prefilter benchmark binary" >&2; exit 1; }

OUT=${OUT:-$ROOT/bench/results/prefilter-$(date -u +%Y-%m-%d).md}
run_driver "$BIN" --out "$OUT" "$@"
