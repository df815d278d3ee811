#!/usr/bin/env bash
# remote.sh — one big file for a second host: from the remote tier (an S3
# store that another host filled) against from nginx directly.
#
#   BIG_SIZE=1G        file size (IEC suffixes); made once, cached in $BENCH_DIR/data
#   RUNS=5             timed runs per command
#   REMOTE_STORE=s3s-fs the store: s3s-fs or garage
#   GARAGE_COMPRESSION Garage's compression_level (see scripts/garage.sh);
#                      unset: Garage's default, zstd level 1
#   GARAGE_PORT_BASE=23900    Garage's ports: this + 10 (S3), + 11, + 13
#   BENCH_DIR, CHITD, CHITD_BUILT, KEEP, NO_INSTALL: see lib.sh
#
# The store holds the object as another host's upload would have left it
# (PUT there untimed, with curl). s3s-fs (`cargo install s3s-fs --version
# 0.14.1 --features binary --locked`, the store of the integration tests)
# serves a directory on the same disk; garage (2.5.0, `cargo install
# garage --version 2.5.0 --locked`, a long build) is one node with
# replication 1, set up by scripts/garage.sh. Target (issue 19):
# the remote tier at no less than 0.8x the speed of nginx.
#
# The commands run in rounds (each once per round, RUNS rounds), so load
# from elsewhere falls on all of them alike; the table's note gives each
# one's CPU time and the store's meanwhile. Commands:
#   chitd-nginx    the chit's file from nginx (`--mirror`), no remote tier
#   chitd-remote   the same chit, [remote] configured and no source at all:
#                  every byte comes from the store
#   chitd-remote-one-get
#                  chitd-remote reading the object in one GET instead of
#                  ranges several at once (CHITD_REMOTE_RANGES_AT_ONCE=1)
#   curl-store     curl of the object from the store into a file: the
#                  store's own speed for one GET, the ceiling of
#                  chitd-remote-one-get (ranges several at once may pass it)
#   chitd-remote-nginx-store
#                  chitd-remote with nginx playing the store (it serves the
#                  object at its S3 path and ignores the signature): chitd's
#                  read path from the remote tier with a store that costs
#                  no CPU, to tell chitd's part from the store's
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

: "${BIG_SIZE:=1G}"

bench_init remote
need_tools nginx:nginx
: "${REMOTE_STORE:=s3s-fs}"
case $REMOTE_STORE in
s3s-fs | garage) ;;
*) die "REMOTE_STORE=$REMOTE_STORE: give s3s-fs or garage" ;;
esac
PATH=$PATH:$HOME/.cargo/bin
command -v "$REMOTE_STORE" >/dev/null || case $REMOTE_STORE in
s3s-fs) die "s3s-fs is needed: cargo install s3s-fs --version 0.14.1 --features binary --locked" ;;
garage) die "garage is needed: cargo install garage --version 2.5.0 --locked (a long build)" ;;
esac
build_chitd

src=$(random_file "$BIG_SIZE")
sha=$(cat "$src.sha256")
bytes=$(stat -c %s "$src")
mkdir -p "$WORK/www"
ln -s "$src" "$WORK/www/big.bin"
mkdir -p "$WORK/www/distfiles/chitd/sha256"
ln -s "$src" "$WORK/www/distfiles/chitd/sha256/$sha"
nginx_start "$WORK/www"

# The store, with the object where an upload puts it (untimed).
key=chitd/sha256/$sha
s3s_fs_start() {
    local port
    mkdir -p "$WORK/s3/distfiles"
    port=$(python3 "$BENCHTOOL" free-port)
    export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret
    s3s-fs --host 127.0.0.1 --port "$port" --access-key "$AWS_ACCESS_KEY_ID" \
        --secret-key "$AWS_SECRET_ACCESS_KEY" "$WORK/s3" >"$WORK/s3s-fs.log" 2>&1 &
    store_pid=$!
    on_exit "kill $store_pid"
    store_endpoint=http://127.0.0.1:$port region=us-east-1
    wait_for "curl -s -o /dev/null $store_endpoint/" 10 "s3s-fs to listen"
}
garage_start() {
    : "${GARAGE_PORT_BASE:=23900}"
    export GARAGE_PORT_BASE
    source "$REPO_ROOT/scripts/garage.sh"
    garage_node "$WORK/garage" 1 1 "$(garage_secret)"
    store_pid=$GARAGE_PID
    on_exit "kill $store_pid; wait $store_pid"
    garage_cluster distfiles bench "$WORK/garage" || die "garage did not start"
    store_endpoint=$(garage_s3_url 1) region=$GARAGE_REGION
    log "garage $(garage --version | cut -d' ' -f2) at $store_endpoint, compression_level ${GARAGE_COMPRESSION:-default}"
}
# store_curl ARGS...: curl signed for the store.
store_curl() {
    curl -sS --fail --aws-sigv4 "aws:amz:$region:s3" \
        --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
        -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "$@"
}
if [[ $REMOTE_STORE == garage ]]; then garage_start; else s3s_fs_start; fi
# PUT, as an upload leaves it: s3s-fs keeps a PUT object's ETag, but
# computes the MD5 of the whole file for every GET of a file put into its
# directory by hand (a 1 GiB MD5 for each ranged GET).
log "putting the object into $REMOTE_STORE"
store_curl -T "$src" -o /dev/null "$store_endpoint/distfiles/$key" || die "cannot put the object"

out=$WORK/out
fresh() {
    rm -rf "$out"
    mkdir -p "$out/cache" "$out/deliver"
    make_spool "$out/spool"
    write_chit "$out/spool/request/big" "$sha" "$bytes" big.bin
    sync
}
# with_remote [ENDPOINT]: a fresh run with [remote] at ENDPOINT (the store).
with_remote() {
    local endpoint=${1:-$store_endpoint}
    fresh
    cat >"$out/chitd.toml" <<CONF
cache = "cache"

[[consumer]]
name = "bench"
spool = "spool"
deliver = "deliver"

[remote]
endpoint = "$endpoint"
bucket = "distfiles"
prefix = "chitd/"
region = "$region"
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

# Each command: its untimed preparation, its timed run, its untimed check.
declare -A prepare run check
labels=(chitd-nginx chitd-remote chitd-remote-one-get curl-store chitd-remote-nginx-store)
prepare[chitd-nginx]=fresh
run[chitd-nginx]='chitd_run --spool "$out/spool" --deliver "$out/deliver" --cache "$out/cache" --mirror "$NGINX_URL"'
check[chitd-nginx]=delivered_ok
prepare[chitd-remote]=with_remote
run[chitd-remote]='chitd_run --config "$out/chitd.toml"'
check[chitd-remote]=from_remote_ok
prepare[chitd-remote-one-get]=with_remote
run[chitd-remote-one-get]="CHITD_REMOTE_RANGES_AT_ONCE=1 CHITD_REMOTE_RANGE_SIZE=$bytes ${run[chitd-remote]}"
check[chitd-remote-one-get]=from_remote_ok
prepare[curl-store]=fresh
run[curl-store]='store_curl -o "$out/deliver/big.bin" "$store_endpoint/distfiles/$key"'
check[curl-store]='cmp -s "$src" "$out/deliver/big.bin"'
prepare[chitd-remote-nginx-store]='with_remote "$NGINX_URL"'
run[chitd-remote-nginx-store]=${run[chitd-remote]}
check[chitd-remote-nginx-store]=from_remote_ok

# ticks PID [children]: the CPU time (user + system, clock ticks) of PID,
# or of its reaped children.
ticks() { awk -v children="${2:-}" '{ print children ? $16 + $17 : $14 + $15 }' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

# RUNS rounds of every command in turn (not RUNS of one, then the next):
# the other work on the machine then weighs on every command alike. The
# CPU time of each run (the command's, and the store's meanwhile) is
# kept too: on two cores the sum bounds the speed.
declare -A times cpu store_cpu
for ((round = 1; round <= RUNS; round++)); do
    for label in "${labels[@]}"; do
        eval "${prepare[$label]}" || die "$label: prepare failed"
        c0=$(ticks $$ children) s0=$(ticks "$store_pid")
        t0=${EPOCHREALTIME/./}
        eval "${run[$label]}" || die "$label: run $round failed"
        t1=${EPOCHREALTIME/./}
        c1=$(ticks $$ children) s1=$(ticks "$store_pid")
        eval "${check[$label]}" || die "$label: check after run $round failed"
        times[$label]+=" $(us_to_s $((t1 - t0)))"
        cpu[$label]+=" $((c1 - c0))" store_cpu[$label]+=" $((s1 - s0))"
        log "$label: round $round/$RUNS $(us_to_s $((t1 - t0))) s, CPU $((c1 - c0)) + store $((s1 - s0)) ticks"
    done
done
# median_s TICKS...: the median, in seconds.
median_s() { printf '%s\n' "$@" | sort -n | awk -v hz="$hz" '{ v[NR] = $1 } END { printf "%.2f", v[int((NR + 1) / 2)] / hz }'; }
cpu_note="CPU-s per run (median; the command + the $REMOTE_STORE process):"
for label in "${labels[@]}"; do
    # shellcheck disable=SC2086 # the lists are words
    record "$label" ${times[$label]}
    # shellcheck disable=SC2086
    cpu_note+=" $label $(median_s ${cpu[$label]}) + $(median_s ${store_cpu[$label]});"
done

report "remote: one $(human_bytes "$bytes") file for a second host" \
    --bytes "$bytes" --baseline chitd-nginx --baseline curl-store \
    --note "$(machine_note); $REMOTE_STORE and nginx on the same machine; target: chitd-remote >= 0.8x chitd-nginx." \
    --note "${cpu_note%;}."
