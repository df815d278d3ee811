#!/usr/bin/env bash
# memory.sh — peak RSS (/usr/bin/time -v "Maximum resident set size") of
# chitd for one big download and for a large backlog of cache hits; curl,
# wget and aria2c on the same big download for comparison.
#
#   MEM_SIZE=$BIG_SIZE or 1G   the big file (IEC suffixes); cached in $BENCH_DIR/data
#   BACKLOG_COUNT=100000       chits in the backlog, each its own delivery path
#   BACKLOG_DISTINCT=100       distinct (cached) files they ask for
#   BACKLOG_SIZE=4K            size of each of those files
#   BENCH_DIR, CHITD, CHITD_BUILT, KEEP, NO_INSTALL, NO_CHITD: see lib.sh
#
# Big: `chitd run --exit-when-idle` with the chit already in request/, from a
# local nginx, empty cache. Backlog: chitd first fills its cache with the
# BACKLOG_DISTINCT files (one run with --mirror), then all BACKLOG_COUNT chits
# (no URLs, delivery paths spread over subdirectories of 1000) are dropped
# before `chitd run --exit-when-idle` starts, without a mirror: every chit is
# a cache hit. One run each (peak RSS hardly varies); RUNS is not used.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

: "${MEM_SIZE:=${BIG_SIZE:-1G}}"
: "${BACKLOG_COUNT:=100000}"
: "${BACKLOG_DISTINCT:=100}"
: "${BACKLOG_SIZE:=4K}"

bench_init memory
need_tools nginx:nginx curl:curl wget:wget aria2c:aria2 /usr/bin/time:time
build_chitd

src=$(random_file "$MEM_SIZE")
sha=$(cat "$src.sha256")
bytes=$(stat -c %s "$src")
small=$(size_bytes "$BACKLOG_SIZE")
files=$DATA/backlog-$BACKLOG_DISTINCT-$small
python3 "$BENCHTOOL" gen-files "$files" "$BACKLOG_DISTINCT" "$small" --prefix m
mkdir -p "$WORK/www"
ln -s "$src" "$WORK/www/big.bin"
ln -s "$files" "$WORK/www/backlog"
nginx_start "$WORK/www"

rows=$WORK/rows.tsv
: >"$rows"
# timed LABEL SCENARIO CMD...: run CMD under /usr/bin/time -v, add a row.
timed() {
    local label=$1 scenario=$2 rc=0
    shift 2
    /usr/bin/time -v -o "$WORK/time.txt" "$@" </dev/null >>"$WORK/cmd.log" 2>&1 || rc=$?
    if ((rc != 0)); then
        tail -n 20 "$WORK/cmd.log" >&2
        die "$label ($scenario) exited $rc"
    fi
    local rss elapsed
    rss=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$WORK/time.txt")
    elapsed=$(awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, p, ":"); s = 0
        for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s }' "$WORK/time.txt")
    log "$label ($scenario): peak RSS $rss KiB, $elapsed s"
    printf '%s\t%s\t%s\t%s\n' "$label" "$scenario" "$rss" "$elapsed" >>"$rows"
}

out=$WORK/out
fresh() {
    rm -rf "$out"
    mkdir -p "$out/cache" "$out/deliver"
}
big_ok() { cmp -s "$src" "$out/deliver/big.bin" || die "$1: delivered file differs"; }
big="$(human_bytes "$bytes") download"

if have_chitd; then
    fresh
    make_spool "$out/spool"
    write_chit "$out/spool/request/big" "$sha" "$bytes" big.bin
    timed chitd "$big" "$CHITD" run --spool "$out/spool" --deliver "$out/deliver" \
        --cache "$out/cache" --mirror "$NGINX_URL" --exit-when-idle
    [[ -e $out/spool/downloaded/big ]] || die "chitd: the chit is not in downloaded/"
    big_ok chitd
fi
fresh
timed curl "$big" curl -sS -o "$out/deliver/big.bin" "$NGINX_URL/big.bin"
big_ok curl
fresh
timed wget "$big" wget -q -O "$out/deliver/big.bin" "$NGINX_URL/big.bin"
big_ok wget
fresh
timed aria2c "$big" aria2c -q -x1 -s1 --allow-overwrite=true --checksum="sha-256=$sha" \
    -d "$out/deliver" -o big.bin "$NGINX_URL/big.bin"
big_ok aria2c

if have_chitd; then
    log "filling chitd's cache with $BACKLOG_DISTINCT files"
    trash "$out"
    mkdir -p "$out/deliver" "$WORK/fill-deliver"
    make_spool "$WORK/fill"
    python3 "$BENCHTOOL" chits "$files/manifest.tsv" "$WORK/fill/request" --name-prefix f
    "$CHITD" run --spool "$WORK/fill" --deliver "$WORK/fill-deliver" --cache "$WORK/cache" \
        --mirror "$NGINX_URL/backlog" --exit-when-idle </dev/null >>"$WORK/cmd.log" 2>&1 ||
        die "chitd: filling the cache failed"
    [[ $(count_files "$WORK/fill/downloaded") -eq $BACKLOG_DISTINCT ]] || die "chitd: cache fill incomplete"
    trash "$WORK/fill" "$WORK/fill-deliver"
    log "writing $BACKLOG_COUNT chits"
    make_spool "$out/spool"
    python3 "$BENCHTOOL" chits "$files/manifest.tsv" "$out/spool/request" --name-prefix b \
        --count "$BACKLOG_COUNT" --path-format 'd{group:03d}/x{i:06d}.bin'
    timed chitd "backlog of $BACKLOG_COUNT cache hits" "$CHITD" run --spool "$out/spool" \
        --deliver "$out/deliver" --cache "$WORK/cache" --exit-when-idle
    n=$(count_files "$out/spool/downloaded")
    [[ $n -eq $BACKLOG_COUNT ]] || die "chitd: $n of $BACKLOG_COUNT backlog chits downloaded"
fi

notes=(--note "$(machine_note); peak RSS from /usr/bin/time -v, one run each.")
if have_chitd; then
    secs=$(awk -F'\t' '$2 ~ /^backlog/ { print $4 }' "$rows")
    notes+=(--note "backlog: $BACKLOG_COUNT chits for $BACKLOG_DISTINCT cached files of $(human_bytes "$small"), all dropped before start: $(awk -v n="$BACKLOG_COUNT" -v s="$secs" 'BEGIN { printf "%.0f", n / s }') chits/s.")
fi
python3 "$BENCHTOOL" rss-report "$rows" --title "memory: peak RSS" "${notes[@]}"
