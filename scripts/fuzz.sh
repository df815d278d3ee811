#!/usr/bin/env bash
# Fuzz chitd's parsers of untrusted text for a bounded time each:
#
#   chit_parse    Chit::parse (fuzz/fuzz_targets/chit_parse.rs): chits are
#                 written by consumers.
#   record_parse  partial::Record::parse (fuzz/fuzz_targets/record_parse.rs):
#                 progress records survive crashes and may be torn.
#
#   scripts/fuzz.sh [TARGET] [extra libFuzzer flags...]   e.g. chit_parse -runs=100000
#
# With no TARGET (or "all"), every target runs in turn. FUZZ_SECONDS
# (default 60) bounds each run. Inputs go up to FUZZ_MAX_LEN bytes (default
# 70000, past the 64 KiB chit limit, so the parser's TooLarge path is fuzzed
# too; libFuzzer would otherwise guess it from the corpus's largest input);
# a -max_len= among the extra flags comes later and wins. The corpus grows in fuzz/corpus/<target>
# (not committed), seeded from fuzz/seeds/<target> with the tokens of
# fuzz/<target>.dict; a crash is saved under fuzz/artifacts/<target>/ and
# fails the script. Only a stable toolchain is installed here, so
# RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass the nightly-only sanitizer and
# coverage flags.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds="${FUZZ_SECONDS:-60}"
max_len="${FUZZ_MAX_LEN:-70000}"
targets=(chit_parse record_parse)
case "${1:-all}" in
    all) [[ $# -gt 0 ]] && shift ;;
    chit_parse | record_parse) targets=("$1"); shift ;;
    -*) ;;
    *) echo "unknown fuzz target: $1 (one of: ${targets[*]}, all)" >&2; exit 2 ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

# A chit padded with a comment line to exactly $2 bytes, written to $1.
padded_chit() {
    local base=fuzz/seeds/chit_parse/minimal
    local fill=$(($2 - $(wc -c <"$base") - 3))
    { cat "$base"; printf '# '; head -c "$fill" /dev/zero | tr '\0' x; printf '\n'; } >"$1"
}

export RUSTC_BOOTSTRAP=1
for target in "${targets[@]}"; do
    corpus="fuzz/corpus/$target"
    mkdir -p "$corpus"
    if [[ $target == chit_parse ]]; then
        # Seeds at the 64 KiB limit and one byte past it (TooLarge): made
        # here, not committed; mutations would take long to grow that far.
        padded_chit "$corpus/seed-at-the-limit" 65536
        padded_chit "$corpus/seed-past-the-limit" 65537
    fi
    echo "== fuzzing $target for ${seconds}s"
    cargo fuzz run --fuzz-dir fuzz "$target" "$corpus" "fuzz/seeds/$target" -- \
        -max_total_time="$seconds" -max_len="$max_len" -dict="fuzz/$target.dict" "$@"
done
