#!/usr/bin/env bash
# `make fuzz`: run each fuzz target for a bounded time.
#
#   scripts/fuzz.sh [SECONDS]   (default 60, per target)
#
# parse_validate (policy parser/resolver) is seeded from /work/shared/corpus/cnp (override
# with FUZZ_SEED_DIR); h1_guard (the sidecar's HTTP/1 framing guard and path normalization)
# from a few well-formed and smuggling-shaped requests written below. Each runs with
# `cargo +nightly fuzz run TARGET` for SECONDS; the script exits non-zero if libFuzzer finds
# a crash, the crashing input left under fuzz/artifacts/TARGET/.
set -euo pipefail

seconds="${1:-60}"
seed_dir="${FUZZ_SEED_DIR:-/work/shared/corpus/cnp}"
root="$(cd "$(dirname "$0")/.." && pwd)"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    # Outside the repo so rust-toolchain.toml does not pin the install toolchain.
    (cd / && cargo install --locked cargo-fuzz)
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/membrane-fuzz-corpus.XXXXXX")"
trap 'rm -rf "$work"' EXIT

policy_corpus="$work/parse_validate"
mkdir -p "$policy_corpus"
if compgen -G "$seed_dir/*.yaml" >/dev/null; then
    cp "$seed_dir"/*.yaml "$policy_corpus"/
else
    echo "fuzz.sh: no seeds in $seed_dir, starting from an empty corpus" >&2
fi

# h1_guard inputs: one control byte (read split, merge-slashes), then the bytes.
h1_corpus="$work/h1_guard"
mkdir -p "$h1_corpus"
seed() { printf '%b' "$2" >"$h1_corpus/$1"; }
seed get 'GET /v1/x HTTP/1.1
Host: a

'
seed chunked 'POST / HTTP/1.1
Host: a
Transfer-Encoding: chunked

5;a=b
hello
0
X-T: v

'
seed pipelined 'POST / HTTP/1.1
Content-Length: 3

abcGET /b HTTP/1.1

'
seed clte 'POST / HTTP/1.1
Content-Length: 4
Transfer-Encoding: chunked

0

'
seed upgrade 'GET / HTTP/1.1
Upgrade: websocket
Connection: upgrade

POST / HTTP/1.1

'
seed badchunk '	POST / HTTP/1.1
Transfer-Encoding: chunked

0_2e

'
seed path '/public/..;/admin/%2e%2e/./x//y'

cd "$root/fuzz"
for target in parse_validate h1_guard; do
    cargo +nightly fuzz build "$target"
    # libFuzzer exits non-zero on a crash, leak or timeout; set -e turns that into ours.
    cargo +nightly fuzz run "$target" "$work/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1
done
