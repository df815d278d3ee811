#!/usr/bin/env bash
# big.sh — one big file from a local nginx: chitd against curl, wget, aria2c,
# the best shell pipeline and the physical floor.
#
#   BIG_SIZE=1G        file size (IEC suffixes: 64M, 1G); the random file is
#                      made once and cached in $BENCH_DIR/data
#   RUNS=5             timed runs per command
#   BENCH_DIR, CHITD, CHITD_BUILT, KEEP, NO_INSTALL, NO_CHITD: see lib.sh
#
# Every run starts from empty cache and delivery directories, after a `sync`
# (untimed) so no run pays for the previous one's writeback. The source file
# stays in the page cache (it is not dropped between runs), so the numbers
# measure the tools, not the disk's read speed; writes are made durable where
# the tool promises durability (chitd fsyncs; the pipeline and the floor run
# `sync` on their files; plain curl/wget/aria2c do not fsync at all).
#
# Commands:
#   chitd            chit already in request/, `chitd run ... --exit-when-idle`,
#                    timed until it exits; the delivered file is compared
#   curl             curl -o
#   curl+sha256sum   curl -o, then sha256sum and compare
#   pipeline         curl | tee cache-file | openssl dgst -sha256, compare,
#                    cp into the delivery dir, sync both files (the best
#                    verified and durable shell pipeline)
#   wget             wget -O
#   aria2c-x1        aria2c --checksum=sha-256=HEX, one connection
#   aria2c-x4        the same with -x4 -s4
#   floor            cat the (page-cached) file into a new file, cp it, sync
#                    both: the I/O a cache + delivery copy must do, done one
#                    step after the other (a tool that overlaps writeback with
#                    the transfer can beat it)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

: "${BIG_SIZE:=1G}"

bench_init big
need_tools nginx:nginx curl:curl wget:wget aria2c:aria2 openssl:openssl
build_chitd

src=$(random_file "$BIG_SIZE")
sha=$(cat "$src.sha256")
bytes=$(stat -c %s "$src")
mkdir -p "$WORK/www"
ln -s "$src" "$WORK/www/big.bin"
nginx_start "$WORK/www"
url=$NGINX_URL/big.bin

out=$WORK/out
# fresh: empty dirs, and no dirty pages left by the previous run (untimed).
fresh() {
    rm -rf "$out"
    mkdir -p "$out/cache" "$out/deliver"
    sync
}
same() { cmp -s "$src" "$1" || die "$1 differs from the source"; }
delivered_ok() { same "$out/deliver/big.bin"; }

# chitd
chitd_prepare() {
    fresh
    make_spool "$out/spool"
    write_chit "$out/spool/request/big" "$sha" "$bytes" big.bin
}
chitd_run() {
    "$CHITD" run --spool "$out/spool" --deliver "$out/deliver" --cache "$out/cache" \
        --mirror "$NGINX_URL" --exit-when-idle </dev/null >"$WORK/chitd.log" 2>&1 ||
        {
            tail -n 20 "$WORK/chitd.log" >&2
            return 1
        }
}
chitd_check() {
    [[ -e $out/spool/downloaded/big ]] || {
        tail -n 20 "$WORK/chitd.log" >&2
        cat "$out/spool/fail/big" >&2 2>/dev/null
        die "chitd: chit not in downloaded/"
    }
    same "$out/deliver/big.bin"
}
have_chitd && measure chitd chitd_prepare chitd_run chitd_check

curl_plain() { curl -sS -o "$out/deliver/big.bin" "$url"; }
measure curl fresh curl_plain delivered_ok

curl_sha() {
    curl -sS -o "$out/deliver/big.bin" "$url"
    [[ $(sha256sum "$out/deliver/big.bin" | cut -d' ' -f1) == "$sha" ]]
}
measure curl+sha256sum fresh curl_sha delivered_ok

pipeline() {
    local got
    got=$(curl -sS "$url" | tee "$out/cache/big.bin" | openssl dgst -sha256 -r | cut -d' ' -f1)
    [[ $got == "$sha" ]] || return 1
    cp "$out/cache/big.bin" "$out/deliver/big.bin"
    sync "$out/cache/big.bin" "$out/deliver/big.bin"
}
measure pipeline fresh pipeline delivered_ok

wget_plain() { wget -q -O "$out/deliver/big.bin" "$url"; }
measure wget fresh wget_plain delivered_ok

aria() {
    aria2c -q --console-log-level=error --summary-interval=0 --allow-overwrite=true \
        --auto-file-renaming=false --checksum="sha-256=$sha" -d "$out/deliver" -o big.bin "$@" "$url"
}
measure aria2c-x1 fresh 'aria -x1 -s1' delivered_ok
measure aria2c-x4 fresh 'aria -x4 -s4' delivered_ok

floor() {
    cat "$src" >"$out/cache/big.bin"
    cp "$out/cache/big.bin" "$out/deliver/big.bin"
    sync "$out/cache/big.bin" "$out/deliver/big.bin"
}
measure floor fresh floor delivered_ok

report "big: one $(human_bytes "$bytes") file from local nginx" \
    --bytes "$bytes" --baseline pipeline --baseline aria2c-x1 --baseline floor \
    --note "$(machine_note); source in page cache; each run from empty dirs."
