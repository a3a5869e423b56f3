#!/usr/bin/env bash
# sockmap acceleration, on vs off, in the same run (issue 5 "honest acceleration").
# App and "sidecar" are membrane-sockbench processes in a private netns and a
# private cgroup v2 child; "on" = membrane-agent attached to that cgroup, "off"
# = detached. Request/response p50/p99 at 1 B, 1 KiB, 16 KiB and stream
# throughput at 1/4/16/64 KiB writes, pinned to one core and unpinned, plus
# the first connection of a fresh small-write service (FIRST_WRITES) and the
# end-to-end sidecar cell. Every cell is reported as the median of per-rep
# on/off ratios (each rep runs off and on back to back, the order turning
# round every rep), with a distribution-free 95 % confidence interval of that
# median and the ratio of medians; the load average is recorded at every phase.
# Writes bench/results/sockmap-<date>.md (OUT=...).
# Usage: bench/sockmap.sh [SECONDS_PER_STREAM] (root; builds release bins).
# Third-party workloads beside membrane-sockbench, pinned, in the same repetitions:
# sockperf ping-pong (one-way latency p50 at SOCKPERF_SIZES) and iperf3 streams
# (receiver Gbit/s at IPERF_WRITES write sizes); THIRD_PARTY picks them (Debian
# sockperf, iperf3; installed when missing).
# Knobs: REPS RR_ITERS RR_SIZES STREAM_WRITES FIRST_WRITES GREET_WRITES CPUS E2E_SECS E2E_CONNS
# THIRD_PARTY SOCKPERF_SIZES IPERF_WRITES
# (a single space skips a list); NOISY_REPS (repetitions of the unpinned and split
# phases, whose per-rep ratios scatter far more than pinned ones). The defaults
# (7 and 15) are what the committed results use: about 35 minutes;
# WRK_LOG=file keeps every wrk report.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-2}
RR_ITERS=${RR_ITERS:-20000}
REPS=${REPS:-7}
NOISY_REPS=${NOISY_REPS:-15}
RR_SIZES=${RR_SIZES:-1 1024 16384}
STREAM_WRITES=${STREAM_WRITES:-1024 4096 16384 65536}
FIRST_WRITES=${FIRST_WRITES:-1024 4096 16384}
GREET_WRITES=${GREET_WRITES:-1024 4096 16384}
CPUS=${CPUS:-pinned unpinned split}
E2E_SECS=${E2E_SECS:-5}
E2E_CONNS=${E2E_CONNS:-1 32}
THIRD_PARTY=${THIRD_PARTY:-sockperf iperf3}
SOCKPERF_SIZES=${SOCKPERF_SIZES:-64 16384}
IPERF_WRITES=${IPERF_WRITES:-1024 65536}
for tool in $THIRD_PARTY; do
  command -v "$tool" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$tool" >/dev/null; }
done
# MEMBRANE_BIN_DIR: use already-built binaries instead of building them here.
if [ -z "${MEMBRANE_BIN_DIR:-}" ]; then
  ROOT=$PWD
  . bench/lib.sh
  build_release_bins
  MEMBRANE_BIN_DIR=$BIN_DIR
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
  rm -f "$RAW" "$RAW.counters" "$RAW.load"
}
load() { echo "$1: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$RAW.load"; }
trap cleanup EXIT
trap "exit 130" INT TERM

mkdir "$CG"
ip netns add "$NS"
ip -n "$NS" link set lo up

# in_pod PIN CMD...: run CMD inside the cgroup and netns, pinned to CPU 0 when PIN is
# pinned or core0, to CPU 1 when core1, anywhere when unpinned.
# It execs: call it in a subshell, $(...) or with &, never bare.
in_pod() {
  local pin=$1; shift
  local tset=()
  case $pin in pinned | core0) tset=(taskset -c 0) ;; core1) tset=(taskset -c 1) ;; esac
  exec sh -c 'cg=$1; shift; echo $$ > "$cg/cgroup.procs" && exec "$@"' sh "$CG" \
    ip netns exec "$NS" "${tset[@]}" "$@"
}

sink_port() { echo $((20000 + $1 / 1024)); }
# "split" places the two ends on different cores (client core 0, server core 1): the
# cross-core case that "unpinned" reaches only by chance.
client_cpu() { if [ "$1" = split ]; then echo core0; else echo "$1"; fi; }
server_cpu() { if [ "$1" = split ]; then echo core1; else echo "$1"; fi; }

start_servers() {
  local pin=$1
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  PIDS=()
  in_pod "$(server_cpu "$pin")" "$BIN" echo --listen 127.0.0.1:9000 >/dev/null & PIDS+=($!)
  # One sink (service) per write size: the splice decision is learned per
  # service port, and a service's write pattern is what it is.
  for w in $STREAM_WRITES; do
    in_pod "$(server_cpu "$pin")" "$BIN" sink --listen "127.0.0.1:$(sink_port "$w")" >/dev/null & PIDS+=($!)
  done
  case " $THIRD_PARTY " in *" sockperf "*)
    in_pod "$(server_cpu "$pin")" sockperf server --tcp -i 127.0.0.1 -p 9100 >/dev/null 2>&1 & PIDS+=($!) ;;
  esac
  case " $THIRD_PARTY " in *" iperf3 "*)
    in_pod "$(server_cpu "$pin")" iperf3 -s -B 127.0.0.1 -p 9200 >/dev/null 2>&1 & PIDS+=($!) ;;
  esac
  sleep 0.3
}

# third_party PIN MODE REP: the sockperf and iperf3 cells of one repetition, each a
# new connection (so it takes the mode in force), as raw lines.
third_party() {
  local pin=$1 mode=$2 rep=$3 m w out
  case " $THIRD_PARTY " in *" sockperf "*)
    for m in $SOCKPERF_SIZES; do
      out=$(in_pod "$pin" sockperf ping-pong --tcp -i 127.0.0.1 -p 9100 -m "$m" -t "$SECS" 2>&1)
      p50=$(echo "$out" | awk '/percentile 50.000 =/ { print $NF }')
      [ -n "$p50" ] || { echo "sockperf gave no p50: $out" >&2; exit 1; }
      echo "$pin $mode sockperf $m $rep {\"p50_us\":$p50}" >>"$RAW"
    done ;;
  esac
  case " $THIRD_PARTY " in *" iperf3 "*)
    for w in $IPERF_WRITES; do
      out=$(in_pod "$pin" iperf3 -c 127.0.0.1 -p 9200 -l "$w" -t "$SECS" -J 2>&1)
      gbit=$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9)' 2>/dev/null) \
        || { echo "iperf3 gave no result: $out" >&2; exit 1; }
      echo "$pin $mode iperf3 $w $rep {\"gbit_s\":$gbit}" >>"$RAW"
    done ;;
  esac
}

# "off" keeps the programs attached with splicing switched off (new
# connections take plain TCP; sockops runs once per connection), so what the
# datapath learned about services survives between the alternating runs.
set_mode() { # on | off | aa (off again)
  if [ "$1" = on ]; then
    "$AGENT" --bpffs "$BPFFS" attach --cgroup "$CG" >/dev/null
  else
    "$AGENT" --bpffs "$BPFFS" attach --cgroup "$CG" --no-splice >/dev/null
  fi
}

# first_conn PIN MODE REP W [greet]: one stream to a service nobody connected
# to before (fresh port, fresh sink), i.e. the connection that has to find out
# by itself that it streams small writes. With "greet" the sink speaks first
# (a spliced message into the client, as a server greeting or an earlier
# response would be), so the client's socket cannot leave the sockhash.
FIRST_SEQ=0
first_conn() {
  local pin=$1 mode=$2 rep=$3 w=$4 greet=${5:-} port spid kind=first
  local flag=()
  [ -n "$greet" ] && flag=(--greet) && kind=greet
  FIRST_SEQ=$((FIRST_SEQ + 1))
  port=$((21000 + FIRST_SEQ))
  in_pod "$pin" "$BIN" sink --listen "127.0.0.1:$port" "${flag[@]}" >/dev/null & spid=$!
  PIDS+=($spid)
  sleep 0.2
  echo "$pin $mode $kind $w $rep $(in_pod "$pin" "$BIN" stream --connect "127.0.0.1:$port" --write "$w" --secs "$SECS" "${flag[@]}")" >>"$RAW"
  kill "$spid" 2>/dev/null || true
  wait "$spid" 2>/dev/null || true
}

load "start"
for pin in $CPUS; do
  start_servers "$pin"
  cli=$(client_cpu "$pin")
  reps=$REPS
  [ "$pin" = pinned ] || reps=$NOISY_REPS
  for rep in $(seq "$reps"); do
    # Unpinned and split streams and every first connection also run "off" a second time
    # ("aa"): the ratio of two runs of the same datapath is the noise floor of the cell.
    # (Pinned first connections scatter as much as unpinned ones: A/A 0.81-1.10 per rep.)
    # Even reps run the modes in reverse order, so a drift within a rep (a warming page
    # cache, a neighbour's load) does not always favour the same mode.
    modes="off on aa"
    if [ $((rep % 2)) = 0 ]; then modes="aa on off"; fi
    for mode in $modes; do
      set_mode "$mode"
      if [ "$mode" != aa ] && [ "$pin" != split ]; then
        for size in $RR_SIZES; do
          echo "$pin $mode rr $size $rep $(in_pod "$cli" "$BIN" rr --connect 127.0.0.1:9000 --size "$size" --iters "$RR_ITERS")" >>"$RAW"
        done
      fi
      for w in $STREAM_WRITES; do
        [ "$mode" = aa ] && [ "$pin" = pinned ] && continue
        echo "$pin $mode stream $w $rep $(in_pod "$cli" "$BIN" stream --connect "127.0.0.1:$(sink_port "$w")" --write "$w" --secs "$SECS")" >>"$RAW"
      done
      if [ "$pin" = pinned ] && [ "$mode" != aa ]; then
        third_party "$pin" "$mode" "$rep"
      fi
      if [ "$pin" != split ]; then
        for w in $FIRST_WRITES; do
          first_conn "$pin" "$mode" "$rep" "$w"
        done
        for w in $GREET_WRITES; do
          first_conn "$pin" "$mode" "$rep" "$w" greet
        done
      fi
    done
    load "$pin rep $rep"
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
  E2E_NOTE="wrk -t1 (core 1) -> membrane-proxy standalone --concurrency 1 (core 0) -> nginx (core 1), HTTP/1.1 GET /v1/x allowed by cnp-l7-bench.yaml; ${E2E_SECS} s per cell after a 1 s warm-up on the same proxy process"
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
    modes="off on"
    if [ $((rep % 2)) = 0 ]; then modes="on off"; fi
    for mode in $modes; do
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
      for conns in $E2E_CONNS; do
        # Warm-up: upstream connections, page cache, branch predictors.
        (in_pod unpinned taskset -c 1 wrk -t1 -c"$conns" -d1s http://127.0.0.1:15006/v1/x >/dev/null)
        out=$(in_pod unpinned taskset -c 1 wrk -t1 -c"$conns" -d"${E2E_SECS}s" --latency http://127.0.0.1:15006/v1/x)
        [ -n "${WRK_LOG:-}" ] && echo "== $mode $conns $rep"$'\n'"$out" >>"$WRK_LOG"
        rps=$(echo "$out" | awk '/^Requests\/sec/ { print $2 }')
        p50=$(echo "$out" | awk '$1 == "50%" { v = $2; if (v ~ /ms$/) { sub(/ms$/, "", v); v *= 1000 } else if (v ~ /us$/) { sub(/us$/, "", v) } else if (v ~ /s$/) { sub(/s$/, "", v); v *= 1000000 }; print v }')
        mean=$(echo "$out" | awk '$1 == "Latency" { v = $2; if (v ~ /ms$/) { sub(/ms$/, "", v); v *= 1000 } else if (v ~ /us$/) { sub(/us$/, "", v) } else if (v ~ /s$/) { sub(/s$/, "", v); v *= 1000000 }; print v; exit }')
        echo "pinned $mode e2e $conns $rep {\"rps\":${rps:-0},\"p50_us\":${p50:-0},\"mean_us\":${mean:-0}}" >>"$RAW"
      done
      kill "$PROXY_PID" 2>/dev/null || true
      wait "$PROXY_PID" 2>/dev/null || true
    done
    load "e2e rep $rep"
  done
fi
"$AGENT" --bpffs "$BPFFS" counters >"$RAW.counters" 2>&1 || true

OUT=${OUT:-bench/results/sockmap-$(date -u +%Y-%m-%d).md}
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- 2>/dev/null || COMMIT="$COMMIT (with uncommitted changes)"
python3 - "$RAW" "$OUT" "$REPS" "$NOISY_REPS" "$SECS" "$E2E_NOTE" "$COMMIT" <<'PY'
import json, math, statistics, sys, platform, subprocess, datetime
raw, out, reps, noisy_reps, secs, e2e_note, commit = sys.argv[1:8]


def median_ci(xs, level=0.95):
    """Distribution-free confidence interval of the median: the order statistics
    x(k) and x(n+1-k) with the largest k whose binomial(n, 1/2) coverage is at
    least `level`. None when n is too small for that coverage."""
    xs, n = sorted(xs), len(xs)
    best = None
    for k in range(1, n // 2 + 1):
        cover = 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2 ** n
        if cover >= level:
            best = (xs[k - 1], xs[n - k])
    return best
counters = open(raw + ".counters").read()
loads = open(raw + ".load").read()
# cells[(kind, pin, size)][mode][rep] = value
cells = {}
for line in open(raw):
    pin, mode, kind, size, rep, js = line.split(" ", 5)
    d = json.loads(js)
    if kind == "e2e":
        for sub, key in (("e2e_rps", "rps"), ("e2e_p50", "p50_us"), ("e2e_mean", "mean_us")):
            cells.setdefault((sub, pin, int(size)), {}).setdefault(mode, {})[rep] = d[key]
        continue
    v = d["p50_us"] if kind in ("rr", "sockperf") else d["gbit_s"]
    cells.setdefault((kind, pin, int(size)), {}).setdefault(mode, {})[rep] = v
kernel = platform.release()
cpus = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
lines = [f"# sockmap acceleration: on vs off ({kernel}, {cpus} CPUs)", "",
         f"{now}, commit {commit}, {model}.",
         f"Each repetition runs off and on back to back (even repetitions on first); {reps} repetitions",
         f"pinned and end to end, {noisy_reps} unpinned and split; streams {secs} s each.",
         "'ratio' is the median of the per-repetition on/off ratios (> 1: acceleration on is",
         "better: lower latency, higher throughput), '95 % CI' a distribution-free 95 % confidence",
         "interval of that median (order statistics; '-' below 6 repetitions); 'ratio of medians'",
         "is median(on)/median(off).",
         "'first connection' streams to a service port nobody used before (a fresh sink per",
         "run): it is spliced at first and must switch itself to plain TCP; 'after a server",
         "greeting' the sink first sends 6 bytes, so the client has received a spliced message",
         "and its socket stays in the sockhash after the switch ('kept').",
         "'sockperf' and 'iperf3' are those programs (third-party workloads, pinned like the",
         "sockbench cells): sockperf ping-pong's one-way latency p50, iperf3's receiver rate.",
         "'split' runs the client on core 0 and the server on core 1 (the cross-core case);",
         "unpinned and split streams and all first connections also run 'off' a second time:",
         "the A/A control row is the",
         "ratio of two runs of the same datapath, the noise floor of that cell; the 'on' column",
         "of a control row holds the second 'off' run.", "",
         "| workload | cpu | size | off (median) | on (median) | ratio | 95 % CI | ratio of medians | per-rep ratios |",
         "|---|---|---|---|---|---|---|---|---|"]
names = {"rr": ("req/resp latency", "us p50", False), "stream": ("stream throughput", "Gbit/s", True),
         "first": ("first connection, stream", "Gbit/s", True),
         "greet": ("first connection after a server greeting, stream", "Gbit/s", True),
         "sockperf": ("sockperf ping-pong latency", "us p50", False),
         "iperf3": ("iperf3 stream throughput", "Gbit/s", True),
         "e2e_rps": ("e2e sidecar RPS (conns)", "req/s", True),
         "e2e_p50": ("e2e sidecar latency (conns)", "us p50", False),
         "e2e_mean": ("e2e sidecar mean latency (conns)", "us mean", False)}
worst = None
for (kind, pin, size), m in sorted(cells.items()):
    name, unit, higher_better = names[kind]
    def ratio(off, on):
        if higher_better:
            return on / off if off else 0.0
        return off / on if on else 0.0
    sz = f"{size}" if kind.startswith("e2e") else f"{size} B"
    for mode, label in (("on", name), ("aa", f"{name}, A/A control (off vs off again)")):
        if mode not in m:
            continue
        pairs = [(m["off"][r], m[mode][r]) for r in sorted(m[mode]) if r in m["off"]]
        per = [ratio(o, n) for o, n in pairs]
        off, on = statistics.median(m["off"].values()), statistics.median(m[mode].values())
        r = statistics.median(per)
        flag = ""
        if mode == "on":
            worst = r if worst is None else min(worst, r)
            flag = "" if r >= 0.95 else " (LOSS)"
        ci = median_ci(per)
        ci = f"{ci[0]:.2f}-{ci[1]:.2f}" if ci else "-"
        lines.append(f"| {label} | {pin} | {sz} | {off:.2f} {unit} | {on:.2f} {unit} | {r:.2f}x{flag} "
                     f"| {ci} | {ratio(off, on):.2f}x | {' '.join(f'{x:.2f}' for x in per)} |")
lines += ["", f"End to end: {e2e_note}.", "",
          f"Worst cell (median of per-rep ratios): {worst:.2f}x (target: no cell below 0.95x).", "",
          "Load average (1/5/15 min) during the run:", "", "```", loads.rstrip(), "```", "",
          "Datapath counters at the end of the run:", "", "```", counters.rstrip(), "```"]
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
print(f"\nwritten to {out}")
PY
