#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets) for a bounded time, one after another:
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET ...]     # default 600 s, every target
#
# Needs a nightly toolchain (cargo fuzz builds with sanitizers) and cargo-fuzz, installed here
# when missing. The fuzzer works in fuzz/work/TARGET (not committed) from the committed corpus
# fuzz/corpus/TARGET (seeds from scripts/make_fuzz_seeds.py); at the end, the inputs that reach
# new coverage are merged into the committed corpus. A crash is written to
# fuzz/artifacts/TARGET/ and stops the run: turn it into a regression test next to the code it
# broke, then fix. Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(metadata tar image caption_answer config sql_rule)
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target" "fuzz/work/$target"
    echo "== $target: $seconds s"
    # A single allocation over 2 GB is a finding (a size taken from a header), as is an input
    # that takes over 20 s.
    cargo +nightly fuzz run "$target" "fuzz/work/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=20 \
        -print_final_stats=1
    cargo +nightly fuzz run "$target" -- -set_cover_merge=1 "fuzz/corpus/$target" "fuzz/work/$target"
done
