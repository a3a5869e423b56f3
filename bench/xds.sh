#!/usr/bin/env bash
# Control-plane benchmark (xds/benches/fanout.rs): one policy change reaching 1,000
# connected ADS clients (p50/p99/max, goal p99 < 100 ms), server memory per connected
# proxy, translation of 10,000 rules for 1,000 endpoints (goal < 1 s), one policy change
# reaching every node agent and sidecar of 100 simulated nodes (issue 14), and a live policy
# change followed by real membrane-proxy sidecars over xDS (bench/xds_live.py).
# Writes bench/results/xds-<date>.md. Then the fleet-size load (xds/benches/ads_load.rs,
# issue 17): N sidecars (half SotW, half delta ADS), one policy change → every proxy ACKed,
# RSS per connected proxy, pod churn; writes bench/results/xds-load-<date>.md.
#
# Env: XDS_BENCH_CLIENTS (1000), XDS_BENCH_ROUNDS (5), XDS_BENCH_POLL_MS (1000, fallback poll),
#      XDS_BENCH_NODES (100), XDS_BENCH_NODE_PODS (10), XDS_BENCH_ONLY (nodes: that part
#      alone), XDS_LIVE_PROXIES (50), XDS_LIVE_ROUNDS (20), CARGO_TARGET_DIR.
#      XDS_ONLY=load: the fleet-size load alone. XDS_LOAD_FULL=1: 10,000 clients (the
#      default is a short 1,000); XDS_LOAD_CLIENTS, XDS_LOAD_CHURN_SECS, XDS_LOAD_CHURN_RATE,
#      XDS_LOAD_ROUNDS, XDS_LOAD_PROBES override. XDS_LOAD_BASE_BIN=path: also run the same
#      load against that membrane-xds build first (before/after in one run). XDS_LOAD_OUT:
#      where the load's page goes (default bench/results/xds-load-<date>.md).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"
DATE=$(date -u +%Y-%m-%d)
OUT="$ROOT/bench/results/xds-$DATE.md"
# 1,000 clients hold 2,000 sockets in the benchmark process and the server.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# 10,000 clients hold 20,000 sockets (both ends) besides the server's files.
ulimit -n 65536 2>/dev/null || true

load() {
  (cd "$ROOT" && cargo bench -p membrane-xds --bench ads_load --no-run -q)
  if [ "${XDS_LOAD_FULL:-0}" = 1 ]; then export XDS_LOAD_CLIENTS="${XDS_LOAD_CLIENTS:-10000}"; fi
  local out="${XDS_LOAD_OUT:-$ROOT/bench/results/xds-load-$DATE.md}" rep before after
  rep=$(mktemp)
  before=$(cut -d' ' -f1-3 /proc/loadavg)
  echo "# membrane-xds at fleet size" >"$rep"
  echo >>"$rep"
  if [ -n "${XDS_LOAD_BASE_BIN:-}" ]; then
    echo "## Before: \`$XDS_LOAD_BASE_BIN\`" >>"$rep"
    echo >>"$rep"
    (cd "$ROOT" && XDS_LOAD_BIN="$XDS_LOAD_BASE_BIN" cargo bench -q -p membrane-xds --bench ads_load) \
      | sed 's/^## /### /; s/^### \([A-Z]\)/#### \1/' >>"$rep"
    echo "## After: this commit" >>"$rep"
    echo >>"$rep"
    (cd "$ROOT" && cargo bench -q -p membrane-xds --bench ads_load) \
      | sed 's/^## /### /; s/^### \([A-Z]\)/#### \1/' >>"$rep"
  else
    (cd "$ROOT" && cargo bench -q -p membrane-xds --bench ads_load) >>"$rep"
  fi
  after=$(cut -d' ' -f1-3 /proc/loadavg)
  {
    cat "$rep"
    echo
    echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')."
    echo "Run: \`bench/xds.sh\` (XDS_ONLY=load) on $(date -u +%Y-%m-%dT%H:%MZ), commit $(git -C "$ROOT" rev-parse --short HEAD)."
    echo "Load average before/after (other work on the machine skews the latencies): $before / $after."
  } >"$out"
  rm -f "$rep"
  cat "$out"
  echo "xds.sh: wrote $out"
}

if [ "${XDS_ONLY:-}" = load ]; then
  load
  exit 0
fi

(cd "$ROOT" && cargo bench -p membrane-xds --bench fanout --no-run -q)
build_release_bins
BIN=$BIN_DIR
REPORT=$(mktemp)
trap 'rm -f "$REPORT"' EXIT
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
(cd "$ROOT" && cargo bench -q -p membrane-xds --bench fanout) >"$REPORT"
echo >>"$REPORT"
python3 "$ROOT/bench/xds_live.py" --xds "$BIN/membrane-xds" --proxy "$BIN/membrane-proxy" \
  --proxies "${XDS_LIVE_PROXIES:-50}" --rounds "${XDS_LIVE_ROUNDS:-20}" >>"$REPORT"
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
{
  cat "$REPORT"
  echo
  echo "Run: \`bench/xds.sh\` on $(date -u +%Y-%m-%dT%H:%MZ), commit $(git -C "$ROOT" rev-parse --short HEAD)."
  echo "Load average before/after (other work on the machine skews the latencies): $LOAD_BEFORE / $LOAD_AFTER."
} >"$OUT"
cat "$OUT"
echo "xds.sh: wrote $OUT"
load
