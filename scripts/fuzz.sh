#!/usr/bin/env bash
# `make fuzz`: run the policy parser/resolver fuzz target for a bounded time.
#
#   scripts/fuzz.sh [SECONDS]   (default 60)
#
# Seeds a throwaway corpus from /work/shared/corpus/cnp (override with FUZZ_SEED_DIR), runs
# `cargo +nightly fuzz run parse_validate` for SECONDS and exits non-zero if libFuzzer finds
# a crash; the crashing input is left under fuzz/artifacts/parse_validate/.
set -euo pipefail

seconds="${1:-60}"
target="parse_validate"
seed_dir="${FUZZ_SEED_DIR:-/work/shared/corpus/cnp}"
root="$(cd "$(dirname "$0")/.." && pwd)"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    # Outside the repo so rust-toolchain.toml does not pin the install toolchain.
    (cd / && cargo install --locked cargo-fuzz)
fi

corpus="$(mktemp -d "${TMPDIR:-/tmp}/membrane-fuzz-corpus.XXXXXX")"
trap 'rm -rf "$corpus"' EXIT
if compgen -G "$seed_dir/*.yaml" >/dev/null; then
    cp "$seed_dir"/*.yaml "$corpus"/
else
    echo "fuzz.sh: no seeds in $seed_dir, starting from an empty corpus" >&2
fi

cd "$root/fuzz"
cargo +nightly fuzz build "$target"
# libFuzzer exits non-zero on a crash, leak or timeout; set -e turns that into ours.
cargo +nightly fuzz run "$target" "$corpus" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1
