#!/usr/bin/env bash
# The embedded default's Star Wars scenario, played step by step against the policy engine.
# Each step prints what the request got and why. Run by `make demo` after the build.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${CARGO_TARGET_DIR:-target}/release"
MEMBRANE="$BIN/membrane"
SW=manifests/examples/starwars

DEATHSTAR="k8s:org=empire,k8s:class=deathstar"
TIEFIGHTER="k8s:org=empire,k8s:class=tiefighter"
XWING="k8s:org=alliance,k8s:class=xwing"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# ask LABEL POLICY-FILES SRC [http args...]: one request, one line with the verdict and the rule.
ask() {
  local label=$1 policy=$2 src=$3; shift 3
  local out verdict rule
  out=$("$MEMBRANE" policy trace -o json ${policy:+--policy $policy} -s "$src" -d "$DEATHSTAR" --dport 80/TCP "$@")
  verdict=$(python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["verdict"])' <<<"$out")
  rule=$(python3 -c '
import json, sys
d = json.load(sys.stdin)
by = d["decided_by"]
if by:
    print("%s %s" % (by["policy"], by["rule"]))
else:
    print("default deny" if d["verdict"] == "denied" else "no policy selects the deathstar")
' <<<"$out")
  if [ "$verdict" = allowed ]; then
    printf '  %-52s \033[32m%-8s\033[0m (%s)\n' "$label" "$verdict" "$rule"
  else
    printf '  %-52s \033[31m%-8s\033[0m (%s)\n' "$label" "$verdict" "$rule"
  fi
}

step "1. The policies validate"
"$MEMBRANE" policy validate "$SW"

step "2. No policy: everyone lands"
# No policy selects the deathstar: an empty policy directory.
EMPTY=$(mktemp -d); trap 'rm -rf "$EMPTY"' EXIT
ask "tiefighter -> deathstar:80" "$EMPTY" "$TIEFIGHTER"
ask "xwing      -> deathstar:80" "$EMPTY" "$XWING"

step "3. L3/L4 policy ($SW/sw_l3_l4_policy.yaml): only the Empire on 80/TCP"
ask "tiefighter -> deathstar:80" "$SW/sw_l3_l4_policy.yaml" "$TIEFIGHTER"
ask "xwing      -> deathstar:80 (dropped)" "$SW/sw_l3_l4_policy.yaml" "$XWING"

step "4. L7 policy ($SW/sw_l3_l4_l7_policy.yaml): landing only"
ask "tiefighter POST /v1/request-landing" "$SW/sw_l3_l4_l7_policy.yaml" "$TIEFIGHTER" --http-method POST --http-path /v1/request-landing
ask "tiefighter PUT /v1/exhaust-port (403 Access denied)" "$SW/sw_l3_l4_l7_policy.yaml" "$TIEFIGHTER" --http-method PUT --http-path /v1/exhaust-port
ask "xwing POST /v1/request-landing (dropped at L3)" "$SW/sw_l3_l4_l7_policy.yaml" "$XWING" --http-method POST --http-path /v1/request-landing

step "5. Why: the full trace of the denied PUT"
"$MEMBRANE" policy trace --policy "$SW/sw_l3_l4_l7_policy.yaml" -s "$TIEFIGHTER" -d "$DEATHSTAR" \
  --dport 80/TCP --http-method PUT --http-path /v1/exhaust-port

# Live: the same L7 policy enforced by membrane-proxy in front of the deathstar's API, in a
# network namespace of its own. Ships are told apart by source address, as an ipcache would.
PROXY="$BIN/membrane-proxy"
if [ "$(id -u)" -ne 0 ] || ! command -v ip >/dev/null || [ ! -x "$PROXY" ]; then
  step "6. (skipped: the live sidecar step needs root, iproute2 and membrane-proxy)"
  exit 0
fi
step "6. Live: membrane-proxy enforcing the L7 policy (netns membrane-demo-$$)"
NS="membrane-demo-$$"
LOGDIR=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$EMPTY" "$LOGDIR"
}
trap cleanup EXIT
ip netns add "$NS"
ip -n "$NS" link set lo up
in_ns() { ip netns exec "$NS" "$@"; }
# Started directly (not through a shell function) so that $! is the process to stop.
ip netns exec "$NS" python3 scripts/demo/deathstar.py 127.0.0.1 80 & PIDS+=($!)
ip netns exec "$NS" "$PROXY" standalone --listen 127.0.0.1:8080 --upstream 127.0.0.1:80 \
  --policy "$SW/sw_l3_l4_l7_policy.yaml" --endpoint-labels "$DEATHSTAR" \
  --peer "127.0.0.2/32=$TIEFIGHTER" --peer "127.0.0.3/32=$XWING" \
  --admin 127.0.0.1:15000 >"$LOGDIR/proxy.log" 2>&1 & PIDS+=($!)
for _ in $(seq 1 50); do
  in_ns curl -sf -o /dev/null http://127.0.0.1:15021/healthz/ready &&
    in_ns curl -sf -o /dev/null http://127.0.0.1:80/ && break
  sleep 0.1
done
live() { # label source-address method path
  local code body
  body=$(in_ns curl -s --max-time 5 --interface "$2" -X "$3" -w '\n%{http_code}' "http://127.0.0.1:8080$4" || true)
  code=$(tail -n1 <<<"$body"); body=$(head -n -1 <<<"$body" | tr -d '\r' | head -n1)
  printf '  %-44s %s %s\n' "$1" "$code" "$body"
}
live "tiefighter POST /v1/request-landing" 127.0.0.2 POST /v1/request-landing
live "tiefighter PUT /v1/exhaust-port" 127.0.0.2 PUT /v1/exhaust-port
live "xwing POST /v1/request-landing" 127.0.0.3 POST /v1/request-landing
echo "  (the sidecar answers 403 for the xwing; in the datapath an L3/L4 denial is a drop)"
echo
echo "  access log of the sidecar:"
sed 's/^/    /' "$LOGDIR/proxy.log" | grep -v '^    $' | tail -n 3
