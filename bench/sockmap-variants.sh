#!/usr/bin/env bash
# First-connection streams through several datapath builds at once, interleaved
# per repetition: the way to compare a datapath change against the current one
# (and an A/A control) when a cell's noise between runs is larger than the
# effect. Each variant gets its own cgroup v2 child and pin directory in one
# private netns; every stream goes to a fresh sink (a service nobody used).
#
# VARIANTS="name:bindir:agent-flags ..." (the first is the baseline), e.g.
#   VARIANTS="off:$R:--no-splice off2:$R:--no-splice on:$R: new:/tmp/new:"
#   with R=$CARGO_TARGET_DIR/release and /tmp/new holding another build's
#   membrane-agent and membrane-sockbench.
# Knobs: W (write sizes), REPS, SECS, PIN (pinned|unpinned), GREET=1 (the sink
# speaks first). Prints one JSON line per stream and, at the end, the median of
# the per-repetition ratios of each variant to the baseline. Root.
set -u
R=${CARGO_TARGET_DIR:-$HOME/.cache/membrane-target}/release
VARIANTS=${VARIANTS:-"off:$R:--no-splice off2:$R:--no-splice on:$R:"}
W=${W:-1024 4096 16384}
TAG=mbv-$$
NS=$TAG
CG2=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/self/mounts)
RAW=$(mktemp)
cleanup() {
  wait 2>/dev/null
  for v in $VARIANTS; do
    IFS=: read -r n b _ <<<"$v"
    "$b/membrane-agent" --bpffs "/sys/fs/bpf/$TAG-$n" detach --cgroup "$CG2/$TAG-$n" >/dev/null 2>&1
    rmdir "$CG2/$TAG-$n" 2>/dev/null
  done
  ip netns del "$NS" 2>/dev/null
  rm -f "$RAW"
}
trap cleanup EXIT
trap "exit 130" INT TERM
ip netns add "$NS"
ip -n "$NS" link set lo up
for v in $VARIANTS; do
  IFS=: read -r n b f <<<"$v"
  mkdir "$CG2/$TAG-$n"
  # shellcheck disable=SC2086 # f holds zero or more flags
  "$b/membrane-agent" --bpffs "/sys/fs/bpf/$TAG-$n" attach --cgroup "$CG2/$TAG-$n" $f >/dev/null || exit 1
done
in_cg() {
  local cg=$1 t=()
  shift
  [ "${PIN:-pinned}" = pinned ] && t=(taskset -c 0)
  exec sh -c 'cg=$1; shift; echo $$ > "$cg/cgroup.procs" && exec "$@"' sh "$cg" ip netns exec "$NS" "${t[@]}" "$@"
}
greet=()
[ -n "${GREET:-}" ] && greet=(--greet)
seq_no=0
for r in $(seq "${REPS:-8}"); do
  for v in $VARIANTS; do
    IFS=: read -r n b _ <<<"$v"
    for w in $W; do
      seq_no=$((seq_no + 1))
      port=$((21000 + seq_no))
      in_cg "$CG2/$TAG-$n" "$b/membrane-sockbench" sink --listen "127.0.0.1:$port" "${greet[@]}" >/dev/null &
      sp=$!
      sleep 0.2
      echo "$r $n $w $(in_cg "$CG2/$TAG-$n" "$b/membrane-sockbench" stream --connect "127.0.0.1:$port" --write "$w" --secs "${SECS:-2}" "${greet[@]}")" | tee -a "$RAW"
      kill "$sp" 2>/dev/null
      wait "$sp" 2>/dev/null
    done
  done
done
python3 - "$RAW" <<'PY'
import collections, json, statistics, sys
runs, names = collections.defaultdict(dict), []
for line in open(sys.argv[1]):
    r, n, w, js = line.split(" ", 3)
    if n not in names:
        names.append(n)
    runs[(int(w), r)][n] = json.loads(js)["gbit_s"]
base = names[0]
for w in sorted({k[0] for k in runs}):
    for n in names[1:]:
        per = [v[n] / v[base] for (ww, _), v in sorted(runs.items()) if ww == w and n in v and base in v]
        print(f"{w} B {n}/{base}: median {statistics.median(per):.3f}  per rep " + " ".join(f"{x:.2f}" for x in per))
PY
