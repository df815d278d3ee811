#!/usr/bin/env bash
# small.sh — many small distinct files, all cache misses, from a local nginx:
# chitd against curl -K (one keep-alive connection), aria2c -i -j8, wget -i.
#
#   SMALL_COUNT=2000   number of files
#   SMALL_SIZE=4K      size of each file (IEC suffixes)
#   CHITD_JOBS=        passed as --jobs N when set (default: chitd's own)
#   RUNS=5             timed runs per command
#   BENCH_DIR, CHITD, CHITD_BUILT, KEEP, NO_INSTALL, NO_CHITD: see lib.sh
#
# chitd: all chits are in request/ before `chitd run --exit-when-idle` starts
# (one --mirror, empty cache); timed until it exits, which includes verifying
# and fsyncing every file. "chitd, no fsync (shim)" is an experiment: the
# same, with fsync/fdatasync turned into no-ops by an LD_PRELOAD shim
# (nofsync.c), to separate the cost of durability from the rest. The peers
# write the files and fsync nothing;
# aria2c checks each file's sha256 (given per file in its input list), curl
# and wget check nothing. "durable floor" is the disk work alone (see below).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

: "${SMALL_COUNT:=2000}"
: "${SMALL_SIZE:=4K}"

bench_init small
need_tools nginx:nginx curl:curl wget:wget aria2c:aria2 /usr/bin/time:time
build_chitd

size=$(size_bytes "$SMALL_SIZE")
files=$DATA/small-$SMALL_COUNT-$size
log "making $SMALL_COUNT files of $size bytes in $files (cached)"
python3 "$BENCHTOOL" gen-files "$files" "$SMALL_COUNT" "$size" --prefix s
mkdir -p "$WORK/www"
ln -s "$files" "$WORK/www/small"
nginx_start "$WORK/www"
base=$NGINX_URL/small

out= # set by next_run_dir
# fresh: new empty dirs (nothing deleted: see settle_deletes in lib.sh),
# and no dirty pages left by the previous run (untimed).
fresh() {
    next_run_dir
    mkdir -p "$out/cache" "$out/deliver"
    sync
}
# all_ok: every file delivered with the right bytes (cmp against the source).
all_ok() {
    local n
    n=$(count_files "$out/deliver")
    [[ $n -eq $SMALL_COUNT ]] || die "$n of $SMALL_COUNT files delivered"
    diff -rq "$files" "$out/deliver" -x manifest.tsv >/dev/null || die "delivered files differ from the source"
}

# Input lists for the peers.
lists=$WORK/lists
mkdir -p "$lists"
# Output names are relative to the run's delivery dir (see fresh).
awk -v base="$base" '!/^#/ {
    printf "url = \"%s/%s\"\noutput = \"%s\"\n", base, $3, $3 > "'"$lists"'/curl.cfg"
    printf "%s/%s\n  out=%s\n  checksum=sha-256=%s\n", base, $3, $3, $1 > "'"$lists"'/aria2.txt"
    printf "%s/%s\n", base, $3 > "'"$lists"'/wget.txt"
}' "$files/manifest.tsv"

# The floor's program (see below), built before anything is timed.
floor=${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/examples/durablefloor
log "cargo build --release --example durablefloor"
(cd "$REPO_ROOT" && cargo build --release --locked --example durablefloor) >&2

settle_deletes
if have_chitd; then
    jobs=()
    [[ -z ${CHITD_JOBS:-} ]] || jobs=(--jobs "$CHITD_JOBS")
    python3 "$BENCHTOOL" chits "$files/manifest.tsv" "$WORK/chits" --name-prefix c
    chitd_prepare() {
        fresh
        make_spool "$out/spool"
        cp -r "$WORK/chits/." "$out/spool/request/"
    }
    # Each run's CPU time (user + system, from wait4's rusage via
    # /usr/bin/time): reported per chit below the table.
    cpu_log=$WORK/chitd-cpu
    : >"$cpu_log"
    chitd_run() {
        /usr/bin/time -a -o "$cpu_log" -f "${CPU_TAG:-chitd} %U %S" \
            "$CHITD" run --spool "$out/spool" --deliver "$out/deliver" --cache "$out/cache" \
            --mirror "$base" "${jobs[@]}" --exit-when-idle </dev/null >"$WORK/chitd.log" 2>&1 ||
            {
                tail -n 20 "$WORK/chitd.log" >&2
                return 1
            }
    }
    chitd_check() {
        local n
        n=$(count_files "$out/spool/downloaded")
        [[ $n -eq $SMALL_COUNT ]] || {
            tail -n 20 "$WORK/chitd.log" >&2
            die "chitd: $n of $SMALL_COUNT chits in downloaded/ ($(count_files "$out/spool/fail") failed)"
        }
        all_ok
    }
    measure chitd chitd_prepare chitd_run chitd_check
    # An experiment, not an option: the same runs with every fsync and
    # fdatasync made a no-op by an LD_PRELOAD shim (nofsync.c), to show
    # how much of chitd's time is the durability it promises.
    if command -v cc >/dev/null; then
        shim=$WORK/nofsync.so
        cc -O2 -shared -fPIC -o "$shim" "$BENCH_LIB_DIR/nofsync.c"
        chitd_nofsync() { CPU_TAG=shim LD_PRELOAD=$shim chitd_run; }
        measure "chitd, no fsync (shim)" chitd_prepare chitd_nofsync chitd_check
    else
        log "no C compiler: skipping the no-fsync experiment"
    fi
fi

curl_k() { (cd "$out/deliver" && curl -sS --fail -K "$lists/curl.cfg"); }
measure "curl -K" fresh curl_k all_ok

aria_i() {
    aria2c -q --console-log-level=error --summary-interval=0 --allow-overwrite=true \
        --auto-file-renaming=false -j8 -d "$out/deliver" -i "$lists/aria2.txt"
}
measure "aria2c -j8" fresh aria_i all_ok

wget_i() { wget -q -P "$out/deliver" -i "$lists/wget.txt"; }
measure "wget -i" fresh wget_i all_ok

# The floor: only the disk work chitd's promises require (each file written
# twice, cache object and delivered copy, each fdatasync'd and renamed, on
# 128 threads like chitd's local pool, the count that is fastest here; both
# directories fsync'd at the end), no network, no hashing, no spool:
# examples/durablefloor.rs.
# Its CPU time is logged like chitd's (below the table: the kernel's share
# of a small file's durability, which chitd pays too).
cpu_log=${cpu_log:-$WORK/chitd-cpu}
floor_run() {
    /usr/bin/time -a -o "$cpu_log" -f "${CPU_TAG:-floor} %U %S" \
        "$floor" "$files" "$out/cache" "$out/deliver" "${FLOOR_THREADS:-128}" "$@" >/dev/null
}
floor_ok() {
    rm -f "$out/deliver/manifest.tsv"
    all_ok
}
measure "durable floor" fresh floor_run floor_ok
# The same promises kept with fewer flushes, for reference: batches of 256
# files (chitd's group commit) written without a flush, one syncfs, renamed,
# one syncfs. chitd does not work this way (see BENCHMARKS.md).
floor_batched() { CPU_TAG=batched floor_run --batch 256; }
measure "durable floor, syncfs per 256" fresh floor_batched floor_ok
# chitd's own way (its local batches: 32 at once, of 4 chits): 32 threads,
# each writing 4 files (8 copies) at a time with their writeback started,
# then fdatasyncing and renaming each, so a group's flushes share a commit.
floor_writeback() { CPU_TAG=writeback FLOOR_THREADS=32 floor_run --writeback 4; }
measure "durable floor, writeback groups" fresh floor_writeback floor_ok

baselines=(--baseline "curl -K" --baseline "durable floor" --baseline "durable floor, writeback groups")
report "small: $SMALL_COUNT distinct files of $(human_bytes "$size"), all cache misses" \
    --count "$SMALL_COUNT" --unit files "${baselines[@]}" \
    --note "$(machine_note); chitd verifies and fsyncs every file, curl/wget verify nothing, aria2c verifies sha256; none of the peers fsyncs."

if [[ -s $cpu_log ]]; then
    # CPU per file (user + system) of chitd (a chit each), the shim runs and
    # the floors, median over their timed runs.
    for tag in chitd shim floor batched writeback; do
        awk -v tag="$tag" -v n="$SMALL_COUNT" '$1 == tag { print ($2 + $3) * 1e6 / n }' "$cpu_log" |
            sort -n | awk -v tag="$tag" '{ v[NR] = $1 } END {
                if (NR) printf "%s CPU per file (user + system), median of %d runs: %.0f us (min %.0f, max %.0f)\n",
                    tag, NR, v[int((NR + 1) / 2)], v[1], v[NR] }'
    done
fi
