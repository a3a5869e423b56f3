#!/usr/bin/env bash
# The packet path's benchmarks (issue 15), each side by side with its reference in one run
# (datapath/benches/tcpath.rs; bench/README.md says what each measures):
#   bench/tcpath.sh policy    [--reps N --secs S --rules 1,1000,16000 --repeat R]
#   bench/tcpath.sh clusterip [--reps N --secs S --services 1,1000,10000 --threads T --pin BOOL]
#   bench/tcpath.sh crossnode [--reps N --secs S --iters I]
# Writes bench/results/tc-<name>-<date>.md (OUT=... to choose). Root; everything runs in
# network namespaces, cgroups and bpffs directories the benchmark creates, named
# membrane-test-<its pid>-*, and removes; iptables rules only inside those namespaces.
# When the benchmark is interrupted, the trap below removes what it left (by that pid).
# Env: CARGO_TARGET_DIR.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"
NAME=${1:-}
case $NAME in
  policy | clusterip | crossnode) shift ;;
  *)
    echo "usage: bench/tcpath.sh policy|clusterip|crossnode [options]" >&2
    exit 2
    ;;
esac
[ "$(id -u)" = 0 ] || { echo "tcpath.sh: run as root (network namespaces, BPF)" >&2; exit 1; }

# Debian packages the references and the load need: command -> package.
declare -A APT=([iptables]=iptables [iptables-legacy]=iptables [iperf3]=iperf3
  [bpftool]=bpftool [taskset]=util-linux [jq]=jq)
missing=()
for cmd in "${!APT[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${APT[$cmd]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "tcpath.sh: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Build (release, the bench profile), then run the binary itself: cargo bench would add
# its own arguments.
BIN=$(bench_executable membrane-datapath tcpath)
[ -x "$BIN" ] || { echo "tcpath.sh: no tcpath benchmark binary" >&2; exit 1; }

OUT=${OUT:-$ROOT/bench/results/tc-$NAME-$(date -u +%Y-%m-%d).md}
run_driver "$BIN" "$NAME" --out "$OUT" "$@"
