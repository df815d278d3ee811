#!/usr/bin/env bash
# shellcheck disable=SC2016 # measure() evals its command strings
# hash.sh — SHA-256 throughput over one big page-cached file: chitd's hash
# path (the sha2 crate, through examples/hashbench.rs) against
# `openssl dgst -sha256` and coreutils `sha256sum`.
#
#   HASH_SIZE=$BIG_SIZE or 1G   file size (IEC suffixes); cached in $BENCH_DIR/data
#   RUNS=5                      timed runs per command
#   BENCH_DIR, CHITD_BUILT, KEEP, NO_INSTALL, NO_CHITD: see lib.sh
#
# chitd's part needs examples/hashbench.rs (reads FILE in 1 MiB chunks
# through sha2's Sha256 and prints the hex digest); without it that row is
# skipped. Every command's digest is checked.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

: "${HASH_SIZE:=${BIG_SIZE:-1G}}"

bench_init hash
need_tools openssl:openssl sha256sum:coreutils

src=$(random_file "$HASH_SIZE")
sha=$(cat "$src.sha256")
bytes=$(stat -c %s "$src")
cat "$src" >/dev/null # into the page cache

hashbench=
if [[ -z ${NO_CHITD:-} ]]; then
    if [[ -f $REPO_ROOT/examples/hashbench.rs ]]; then
        hashbench=${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/examples/hashbench
        if [[ ${CHITD_BUILT:-} != 1 || ! -x $hashbench ]]; then
            log "cargo build --release --example hashbench"
            (cd "$REPO_ROOT" && cargo build --release --locked --example hashbench) >&2
        fi
    else
        log "skipped chitd (sha2): needs examples/hashbench.rs"
    fi
fi

got=
digest_ok() { [[ $(cut -c1-64 <<<"$got" | tr 'A-F' 'a-f') == "$sha" ]] || die "wrong digest: $got"; }
# The digest is the first 64-hex-digit word of the output.
first_hex() { grep -oiE '\b[0-9a-f]{64}\b' | head -n 1; }

if [[ -n $hashbench ]]; then
    measure "chitd (sha2)" true 'got=$("$hashbench" "$src" | first_hex)' digest_ok
fi
measure "openssl dgst" true 'got=$(openssl dgst -sha256 -r "$src" | first_hex)' digest_ok
measure sha256sum true 'got=$(sha256sum "$src" | first_hex)' digest_ok

report "hash: SHA-256 of a $(human_bytes "$bytes") page-cached file" \
    --bytes "$bytes" --baseline "openssl dgst" --baseline sha256sum \
    --note "$(machine_note); $(grep -m1 -o 'sha_ni' /proc/cpuinfo >/dev/null && echo 'CPU has SHA-NI' || echo 'CPU without SHA-NI')."
