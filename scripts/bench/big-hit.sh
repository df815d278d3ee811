#!/usr/bin/env bash
# big-hit.sh — one big file already in the cache: chitd's verified cache hit
# against `cp` + `sync` of the same file (issue 16: at most 1.5x).
#
#   HIT_SIZE=1G        file size (IEC suffixes); the random file is made once
#                      and cached in $BENCH_DIR/data
#   RUNS=5             timed runs per command
#   BENCH_DIR, CHITD, CHITD_BUILT, KEEP, NO_INSTALL, NO_CHITD: see lib.sh
#
# The object is placed in a cache directory as chitd publishes one
# (sha256-v1/ab/<hex>, mode 0444). Before every run (untimed): a fresh
# delivery directory, the object read into the page cache (`cat` to
# /dev/null: chitd drops a big object's pages behind its copy, so every
# command starts from the same warm object), and `sync`.
#
# Commands:
#   chitd         chit already in request/, `chitd run --exit-when-idle`
#                 with no mirror, timed until it exits (start-up, scan,
#                 verified copy, fsync, rename, group commit, exit)
#   cp+sync       cp the object into the delivery dir, sync the file
#   cp+sha+sync   the same, then `openssl dgst -sha256` of the copy: a shell
#                 worker that verifies what it delivered
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

: "${HIT_SIZE:=1G}"

bench_init big-hit
need_tools openssl:openssl
build_chitd

src=$(random_file "$HIT_SIZE")
sha=$(cat "$src.sha256")
bytes=$(stat -c %s "$src")
cache=$WORK/cache
object=$cache/sha256-v1/${sha:0:2}/$sha
mkdir -p "$(dirname "$object")"
cp "$src" "$object"
chmod 444 "$object"

out=$WORK/out
fresh() {
    rm -rf "$out"
    mkdir -p "$out/deliver"
    cat "$object" >/dev/null
    sync
}
delivered_ok() { cmp -s "$src" "$out/deliver/big.bin" || die "the delivered file differs"; }

chitd_prepare() {
    fresh
    make_spool "$out/spool"
    write_chit "$out/spool/request/big" "$sha" "$bytes" big.bin
}
chitd_run() {
    "$CHITD" run --spool "$out/spool" --deliver "$out/deliver" --cache "$cache" \
        --exit-when-idle </dev/null >"$WORK/chitd.log" 2>&1 ||
        {
            tail -n 20 "$WORK/chitd.log" >&2
            return 1
        }
}
chitd_check() {
    [[ -e $out/spool/downloaded/big ]] || {
        tail -n 20 "$WORK/chitd.log" >&2
        die "chitd: chit not in downloaded/"
    }
    delivered_ok
}
have_chitd && measure chitd chitd_prepare chitd_run chitd_check

cp_sync() {
    cp "$object" "$out/deliver/big.bin"
    sync "$out/deliver/big.bin"
}
measure cp+sync fresh cp_sync delivered_ok

cp_sha_sync() {
    cp_sync
    file_ok "$out/deliver/big.bin" "$sha"
}
measure cp+sha+sync fresh cp_sha_sync delivered_ok

report "big-hit: a $(human_bytes "$bytes") cache hit" \
    --bytes "$bytes" --baseline cp+sync \
    --note "$(machine_note); object in page cache; each run into an empty delivery dir."
