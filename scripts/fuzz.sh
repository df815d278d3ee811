#!/usr/bin/env bash
# Fuzz the chit parser (fuzz/fuzz_targets/chit_parse.rs) for a bounded time.
#
#   scripts/fuzz.sh [extra libFuzzer flags...]     e.g. -max_len=70000
#
# FUZZ_SECONDS (default 60) bounds the run. The corpus grows in
# fuzz/corpus/chit_parse (not committed), seeded from fuzz/seeds/chit_parse
# with the tokens of fuzz/chit_parse.dict;
# a crash is saved under fuzz/artifacts/chit_parse/ and fails the script.
# Only a stable toolchain is installed here, so RUSTC_BOOTSTRAP=1 lets
# cargo-fuzz pass the nightly-only sanitizer and coverage flags.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds="${FUZZ_SECONDS:-60}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
corpus=fuzz/corpus/chit_parse
mkdir -p "$corpus"
cargo fuzz run --fuzz-dir fuzz chit_parse "$corpus" fuzz/seeds/chit_parse -- \
    -max_total_time="$seconds" -dict=fuzz/chit_parse.dict "$@"
