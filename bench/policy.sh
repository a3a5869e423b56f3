#!/usr/bin/env bash
# Policy resolution benchmark: 1,000 endpoints under 1,000 CiliumNetworkPolicy objects
# (policy/benches/resolve.rs), pinned to one core. Writes bench/results/policy-<date>.md with
# the machine, the measured times and the full-resolution time against the 1 s goal.
#
# Env: BENCH_CORE (default 0), CARGO_TARGET_DIR.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CORE=${BENCH_CORE:-0}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
GOAL_NS=1000000000
for cmd in taskset jq cargo; do
  command -v "$cmd" >/dev/null || { echo "policy.sh: $cmd missing" >&2; exit 1; }
done

DATE=$(date -u +%Y-%m-%d)
OUT="$ROOT/bench/results/policy-$DATE.md"
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT

# Build unpinned, measure pinned: only the measurement needs to stay on one core.
(cd "$ROOT" && cargo bench -p membrane-policy --bench resolve --no-run -q)
(cd "$ROOT" && taskset -c "$CORE" cargo bench -p membrane-policy --bench resolve) 2>&1 | tee "$LOG"

# Criterion's estimates, in ns: mean and its 95% confidence interval.
estimate() {
  local f="$TARGET_DIR/criterion/resolve/$1/new/estimates.json"
  [ -f "$f" ] || { echo "policy.sh: no criterion estimates at $f" >&2; exit 1; }
  jq -r '[.mean.point_estimate, .mean.confidence_interval.lower_bound,
          .mean.confidence_interval.upper_bound] | map(floor) | @tsv' "$f"
}
human() { # ns -> readable
  awk -v n="$1" 'BEGIN {
    if (n >= 1e9) printf "%.3f s", n / 1e9; else if (n >= 1e6) printf "%.2f ms", n / 1e6;
    else if (n >= 1e3) printf "%.2f µs", n / 1e3; else printf "%d ns", n }'
}
row() { # name description
  local mean lo hi
  read -r mean lo hi < <(estimate "$1")
  echo "| $2 | $(human "$mean") | $(human "$lo") – $(human "$hi") |"
}

read -r FULL _ _ < <(estimate full_1000_endpoints_1000_policies)
REERESOLVED=$(sed -n 's/.*one_rule_change_reresolved=\([0-9]*\).*/\1/p' "$LOG" | tail -1)
RATIO=$(awk -v f="$FULL" -v g="$GOAL_NS" 'BEGIN { printf "%.2f", f / g }')
if [ "$FULL" -lt "$GOAL_NS" ]; then VERDICT="meets the goal"; else VERDICT="MISSES the goal"; fi

{
  echo "# Policy resolution benchmark, $DATE"
  echo
  echo "- Machine: $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
  echo "- Kernel: $(uname -r); rustc: $(cd "$ROOT" && rustc --version)"
  echo "- Run: \`taskset -c $CORE cargo bench -p membrane-policy --bench resolve\` (criterion, 10 samples for the resolution cases)"
  echo "- Input: 1,000 endpoints (200 apps × 5, 10 namespaces), 1,000 CiliumNetworkPolicy objects"
  echo "  parsed from one YAML text: each selects one app and allows ingress from another on one"
  echo "  port; 1 in 4 with HTTP rules, 1 in 10 with a CIDR egress rule, 1 in 10 with an ingress deny."
  echo
  echo "| Case | Mean | 95% CI |"
  echo "|---|---|---|"
  row full_1000_endpoints_1000_policies "Full resolution: apply 1,000 policies, upsert 1,000 endpoints"
  row one_policy_change "Replace one policy (re-resolves ${REERESOLVED:-?} endpoints, the ones it selects)"
  row connection_and_check_http "One \`connection()\` + \`check_http()\` lookup"
  echo
  echo "Goal: full resolution under 1 s on one core. Measured $(human "$FULL") = ${RATIO}× the goal: $VERDICT."
} > "$OUT"
echo "policy.sh: wrote $OUT"
cat "$OUT"
