#!/usr/bin/env bash
# Fuzzes one decoder of outside bytes with libFuzzer for a bounded time (docs/TESTING.md):
#   bash bench/fuzz.sh TARGET [SECONDS]      (default 600; targets: ls fuzz/fuzz_targets)
# New inputs go to target/fuzz-corpus/TARGET (seeded from the committed fuzz/corpus/TARGET);
# a crash is written to fuzz/artifacts/TARGET/ and the run stops with its backtrace. The last
# lines print executions, coverage and the corpus size. Needs cargo-fuzz (installed here when
# missing) and a nightly toolchain, or the stable one with RUSTC_BOOTSTRAP=1 (used when no
# nightly is installed).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: bash bench/fuzz.sh TARGET [SECONDS]}
seconds=${2:-600}
[ -f "fuzz/fuzz_targets/$target.rs" ] || { echo "no target $target; targets: $(ls fuzz/fuzz_targets | sed 's/\.rs$//' | tr '\n' ' ')" >&2; exit 2; }
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    toolchain=(+nightly)
else
    export RUSTC_BOOTSTRAP=1
fi
# SQLite (bundled by rusqlite, linked into the library the targets use) trips ASan's
# one-definition check at start-up on a static table; that check is about linking, not about
# the code fuzzed.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_odr_violation=0"
work="target/fuzz-corpus/$target"
mkdir -p "$work"
cp -n "fuzz/corpus/$target"/* "$work"/ 2>/dev/null || true
# -max_len: the largest request a connection buffers is 64 KiB (binary) or 12 KiB (HTTP); the
# text files and segments fuzzed are read whole. -rss_limit_mb: memory that grows without bound
# is a finding too.
exec cargo "${toolchain[@]}" fuzz run --release --debug-assertions "$target" "$work" -- \
    -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1
