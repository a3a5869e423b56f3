# Shared by the bench scripts (sourced, not run).
#
# The release binaries every benchmark runs, built in one cargo invocation over the whole
# workspace: the set `make build` builds, so after it (or after another bench script) this is
# a no-op. Cargo unifies a dependency's features over the packages one invocation selects,
# so a build of `-p membrane-proxy` alone compiles several dependencies, and with them the
# proxy itself under fat LTO, a second time with other features: tens of minutes on two
# cores, once per differing `-p` set.
#
# Sets and exports CARGO_TARGET_DIR (the Makefile's default when unset) and BIN_DIR (its
# release directory). Needs ROOT (the repository).

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/membrane-target}
BIN_DIR=$CARGO_TARGET_DIR/release

build_release_bins() {
  (cd "$ROOT" && cargo build --release -q --workspace --bins)
}

# The shared bench configurations (../shared/bench beside the repository, else
# /work/shared/bench) into BENCH_DIR, unless it is set.
find_bench_dir() {
  if [ -z "${BENCH_DIR:-}" ]; then
    for d in "$ROOT/../shared/bench" /work/shared/bench; do
      [ -f "$d/cnp-l7-bench.yaml" ] && BENCH_DIR=$(cd "$d" && pwd) && break
    done
  fi
  [ -n "${BENCH_DIR:-}" ] || { echo "${0##*/}: cannot find the shared bench configs (set BENCH_DIR)" >&2; exit 1; }
}

# Fails when one of the given loopback ports already has a listener.
require_free_ports() {
  local port
  for port in "$@"; do
    if ss -Hltn "sport = :$port" | grep -q .; then
      echo "${0##*/}: port $port is busy; is another benchmark running?" >&2
      exit 1
    fi
  done
}

# A temporary directory in TMP and the processes in PIDS, both gone when the script exits.
bench_tmp() {
  TMP=$(mktemp -d "/tmp/$1.XXXXXX")
  PIDS=()
  trap bench_cleanup EXIT
}
bench_cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}

# The A/B scripts' sandbox: a network namespace NS (membrane-test-<pid>-TAG, loopback up) and
# a temporary directory TMP beside it (mode 755: the proxies run as other users), both gone
# when the script exits, the namespace's processes ended first. `in_ns` runs a command in NS.
ab_netns() {
  NS=membrane-test-$$-$1
  TMP=$(mktemp -d "/tmp/membrane-test-$$-$1.XXXXXX")
  chmod 755 "$TMP"
  trap ab_netns_cleanup EXIT
  ip netns add "$NS"
  in_ns ip link set lo up
}
ab_netns_cleanup() {
  local p
  for p in $(ip netns pids "$NS" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in $(ip netns pids "$NS" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$TMP"
}
in_ns() { ip netns exec "$NS" "$@"; }

# Waits (10 s at most) until an HTTP server answers on a loopback port.
wait_port() {
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0
    sleep 0.1
  done
  echo "${0##*/}: nothing answers on port $1" >&2
  return 1
}

# The nginx backend of the shared configuration (port 18080, h2c on 18082) on LOAD_CORE,
# its pid and error log in TMP.
start_nginx_backend() {
  sed -e "s#/tmp/membrane-bench-nginx.pid#$TMP/nginx.pid#" -e "s#/tmp/membrane-bench-nginx.err#$TMP/nginx.err#" \
    "$BENCH_DIR/nginx-backend.conf" >"$TMP/nginx.conf"
  mkdir -p "$TMP/nginx"
  taskset -c "$LOAD_CORE" nginx -p "$TMP/nginx" -e "$TMP/nginx.err" -c "$TMP/nginx.conf" &
  PIDS+=($!)
  wait_port 18080
}

# The executable of benchmark target NAME of package PKG, built (cargo bench --no-run) with
# PROFILE (default bench, i.e. release). Empty when cargo names none.
bench_executable() {
  local pkg=$1 name=$2 profile=${3:-bench}
  (cd "$ROOT" && cargo bench -q -p "$pkg" --bench "$name" --no-run --profile "$profile" \
    --message-format=json |
    jq -r --arg n "$name" 'select(.target.name == $n and .executable != null) | .executable' |
    tail -1)
}

# Runs a benchmark driver (the arguments: the command) from ROOT and waits for it. When the
# script exits, also when interrupted, the driver is ended and what it left is removed:
# network namespaces (and the processes in them), cgroups and bpffs pin directories named
# membrane-test-<the driver's pid>-*.
DRIVER_PID=
run_driver() {
  trap driver_cleanup EXIT
  trap 'exit 130' INT TERM
  (cd "$ROOT" && exec "$@") &
  DRIVER_PID=$!
  wait "$DRIVER_PID"
  DRIVER_PID=
}
driver_cleanup() {
  [ -n "$DRIVER_PID" ] || return 0
  kill "$DRIVER_PID" 2>/dev/null || true
  wait "$DRIVER_PID" 2>/dev/null || true
  local tag="membrane-test-$DRIVER_PID-" ns p d cg2
  for ns in $(ip netns list | awk '{print $1}' | grep "^$tag" || true); do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  cg2=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/self/mounts)
  for d in "$cg2/$tag"* /sys/fs/bpf/"$tag"*; do
    [ -e "$d" ] || continue
    case $d in
      /sys/fs/bpf/*) rm -rf "$d" ;;
      *) rmdir "$d" 2>/dev/null || true ;;
    esac
  done
  return 0
}
