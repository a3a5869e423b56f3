#!/usr/bin/env bash
# `make fuzz`: run each fuzz target for a bounded time.
#
#   scripts/fuzz.sh [SECONDS]   (default 60, per target)
#
# parse_validate (policy parser/resolver) is seeded from /work/shared/corpus/cnp (override
# with FUZZ_SEED_DIR); h1_guard (the sidecar's HTTP/1 framing guard and path normalization)
# from a few well-formed and smuggling-shaped requests written below; npds_decode (the
# sidecar's NPDS/NPHDS decoder, membrane-api) from an empty corpus. Each runs with
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
# Each seed: the control byte, then the request with CRLF line ends (printf %b reads the escapes).
seed() { printf '%b' "$2" >"$h1_corpus/$1"; }
seed get '\x00GET /v1/x HTTP/1.1\r\nHost: a\r\n\r\n'
seed chunked '\x01POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\nX-T: v\r\n\r\n'
seed pipelined '\x02POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\nHost: a\r\n\r\n'
seed clte '\x03POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n'
seed upgrade '\x04GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nPOST / HTTP/1.1\r\n\r\n'
seed badchunk '\x05POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0_2e\r\n\r\n'
seed bareline '\x06GET / HTTP/1.1\nHost: a\n\n'
seed path '\x07/public/..;/admin/%2e%2e/./x//y'

# npds_decode inputs: protobuf bytes; libFuzzer finds the field tags from nothing.
mkdir -p "$work/npds_decode"

cd "$root/fuzz"
for target in parse_validate h1_guard npds_decode; do
    cargo +nightly fuzz build "$target"
    # libFuzzer exits non-zero on a crash, leak or timeout; set -e turns that into ours.
    cargo +nightly fuzz run "$target" "$work/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1
done
