#!/usr/bin/env bash
# remote.sh — one big file for a second host: from the remote tier (an S3
# store that another host filled) against from nginx directly.
#
#   BIG_SIZE=1G        file size (IEC suffixes); made once, cached in $BENCH_DIR/data
#   RUNS=5             timed runs per command
#   BENCH_DIR, CHITD, CHITD_BUILT, KEEP, NO_INSTALL: see lib.sh
#
# The store is s3s-fs over a directory on the same disk (`cargo install
# s3s-fs --version 0.14.1 --features binary --locked`), holding the object
# as another host's upload would have left it. Target (issue 19): the
# remote tier at no less than 0.8x the speed of nginx.
#
# Commands:
#   chitd-nginx    the chit's file from nginx (`--mirror`), no remote tier
#   chitd-remote   the same chit, [remote] configured and no source at all:
#                  every byte comes from the store
#   curl-store     curl of the object from the store: the store's own speed,
#                  the ceiling of chitd-remote
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

: "${BIG_SIZE:=1G}"

bench_init remote
need_tools nginx:nginx
command -v s3s-fs >/dev/null ||
    die "s3s-fs is needed: cargo install s3s-fs --version 0.14.1 --features binary --locked"
build_chitd

src=$(random_file "$BIG_SIZE")
sha=$(cat "$src.sha256")
bytes=$(stat -c %s "$src")
mkdir -p "$WORK/www"
ln -s "$src" "$WORK/www/big.bin"
nginx_start "$WORK/www"

# The store, with the object where an upload puts it (untimed copy).
s3=$WORK/s3
mkdir -p "$s3/distfiles/chitd/sha256"
cp "$src" "$s3/distfiles/chitd/sha256/$sha"
s3_port=$(python3 "$BENCHTOOL" free-port)
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret
s3s-fs --host 127.0.0.1 --port "$s3_port" --access-key "$AWS_ACCESS_KEY_ID" \
    --secret-key "$AWS_SECRET_ACCESS_KEY" "$s3" >"$WORK/s3s-fs.log" 2>&1 &
s3_pid=$!
on_exit "kill $s3_pid"
wait_for "curl -s -o /dev/null http://127.0.0.1:$s3_port/" 10 "s3s-fs to listen"

out=$WORK/out
fresh() {
    rm -rf "$out"
    mkdir -p "$out/cache" "$out/deliver"
    make_spool "$out/spool"
    write_chit "$out/spool/request/big" "$sha" "$bytes" big.bin
    sync
}
with_remote() {
    fresh
    cat >"$out/chitd.toml" <<CONF
cache = "cache"

[[consumer]]
name = "bench"
spool = "spool"
deliver = "deliver"

[remote]
endpoint = "http://127.0.0.1:$s3_port"
bucket = "distfiles"
prefix = "chitd/"
CONF
}
chitd_run() {
    "$CHITD" run --exit-when-idle "$@" </dev/null >"$WORK/chitd.log" 2>&1 ||
        {
            tail -n 20 "$WORK/chitd.log" >&2
            return 1
        }
}
delivered_ok() {
    [[ -e $out/spool/downloaded/big ]] || {
        tail -n 20 "$WORK/chitd.log" >&2
        die "chit not in downloaded/"
    }
    cmp -s "$src" "$out/deliver/big.bin" || die "the delivered file differs"
}
from_remote_ok() {
    delivered_ok
    grep -q "source=the remote tier" "$WORK/chitd.log" || die "not from the remote tier"
}

measure chitd-nginx fresh \
    'chitd_run --spool "$out/spool" --deliver "$out/deliver" --cache "$out/cache" --mirror "$NGINX_URL"' \
    delivered_ok
measure chitd-remote with_remote 'chitd_run --config "$out/chitd.toml"' from_remote_ok
store_url=http://127.0.0.1:$s3_port/distfiles/chitd/sha256/$sha
store_get() {
    curl -sS --fail --aws-sigv4 "aws:amz:us-east-1:s3" \
        --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
        -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -o "$out/deliver/big.bin" "$store_url"
}
measure curl-store fresh store_get \
    'cmp -s "$src" "$out/deliver/big.bin"'

report "remote: one $(human_bytes "$bytes") file for a second host" \
    --bytes "$bytes" --baseline chitd-nginx --baseline curl-store \
    --note "$(machine_note); s3s-fs and nginx on the same machine; target: chitd-remote >= 0.8x chitd-nginx."
