#!/usr/bin/env bash
# hits.sh (also cache-hits.sh) — chits for files already in the cache: how
# fast a running chitd turns them around, against a naive shell worker.
#
#   HITS_COUNT=2000     chits per burst (one distinct cached file each)
#   HITS_SIZE=4K        size of each file
#   SERIAL_COUNT=500    chits dropped one at a time for the latency figures
#   RUNS=5              bursts per command
#   BENCH_DIR, CHITD, CHITD_BUILT, KEEP, NO_INSTALL, NO_CHITD: see lib.sh
#
# Setup: chitd fills its cache from a local nginx (a first run with
# --exit-when-idle), then nginx is stopped, so every measured chit is a pure
# cache hit (chits carry no URL and chitd gets no --mirror).
#
# Burst: a running daemon (fresh spool and delivery dir per run, warmed up by
# a few chits first); all HITS_COUNT chits are renamed into request/ at once
# by benchtool.py, which times from the first rename until the last chit is in
# downloaded/ (watched with inotify). Reported as chits/s.
#
# One at a time: rename one chit into request/, wait for it in downloaded/
# (inotify), next; the drop->downloaded latency of each, p50/p90/p99/max.
#
# chitd+metrics: the same daemon with --metrics, its /metrics scraped every
# second throughout (15 times Prometheus's default rate).
#
# Baselines: a naive shell worker, `inotifywait -m request/ -e moved_to |
# while read; do cp cache/SHA deliver/PATH; mv request/X downloaded/X; done`,
# and its durable variant (cp to a temp name, sync it, mv into place, sync
# the dir, mv the chit, sync downloaded/), which does what chitd promises.
set -euo pipefail
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"

: "${HITS_COUNT:=2000}"
: "${HITS_SIZE:=4K}"
: "${SERIAL_COUNT:=500}"

bench_init hits
need_tools nginx:nginx curl:curl inotifywait:inotify-tools
build_chitd

size=$(size_bytes "$HITS_SIZE")
files=$DATA/hits-$HITS_COUNT-$size
log "making $HITS_COUNT files of $size bytes in $files (cached)"
python3 "$BENCHTOOL" gen-files "$files" "$HITS_COUNT" "$size" --prefix h
manifest=$files/manifest.tsv

# Prepared chits: burst (one per file), one-at-a-time and warm-up.
python3 "$BENCHTOOL" chits "$manifest" "$WORK/chits-burst" --name-prefix b
python3 "$BENCHTOOL" chits "$manifest" "$WORK/chits-serial" --name-prefix s \
    --count "$SERIAL_COUNT" --path-format 'one/{i:06d}.bin'
python3 "$BENCHTOOL" chits "$manifest" "$WORK/chits-warm" --name-prefix w \
    --count 3 --path-format 'warm/{i}.bin'

out= # set by next_run_dir
# stage KIND: fresh spool + delivery dir; the KIND chits ready in
# $out/staging (a new directory each time: see settle_deletes in lib.sh).
stage() {
    next_run_dir
    make_spool "$out/spool"
    mkdir -p "$out/deliver" "$out/staging" "$out/warm"
    cp -r "$WORK/chits-$1/." "$out/staging/"
    cp -r "$WORK/chits-warm/." "$out/warm/"
}
burst_ok() {
    local n
    n=$(count_files "$out/spool/downloaded")
    [[ $n -eq $((HITS_COUNT + 3)) ]] || die "$1: $n chits in downloaded/, expected $((HITS_COUNT + 3))"
    diff -rq -x manifest.tsv "$files" "$out/deliver" -x warm >/dev/null ||
        die "$1: delivered files differ from the source"
}
drive() {
    python3 "$BENCHTOOL" drive "$1" --spool "$out/spool" --staging "$out/staging" \
        --warmup-staging "$out/warm" --timeout 300 "${@:2}"
}

# run_worker LABEL START STOP: the burst runs and the one-at-a-time series
# for one implementation. START begins serving $out/spool -> $out/deliver.
run_worker() {
    local label=$1 start=$2 stop=$3 i secs times=()
    for ((i = 1; i <= RUNS; i++)); do
        stage burst
        $start
        secs=$(drive burst) || die "$label: burst failed"
        $stop
        burst_ok "$label"
        times+=("$secs")
        log "$label: burst $i/$RUNS: $HITS_COUNT chits in $secs s"
    done
    record "$label" "${times[@]}"
    stage serial
    $start
    drive serial --out "$WORK/latency-$label.txt" || die "$label: one-at-a-time failed"
    $stop
    [[ $(count_files "$out/spool/downloaded") -eq $((SERIAL_COUNT + 3)) ]] ||
        die "$label: one-at-a-time: not every chit in downloaded/"
    latencies+=("$label=$WORK/latency-$label.txt")
}
latencies=()

# ---------------------------------------------------------------- chitd
if have_chitd; then
    mkdir -p "$WORK/www"
    ln -s "$files" "$WORK/www/hits"
    nginx_start "$WORK/www"
    log "filling chitd's cache from nginx"
    make_spool "$WORK/fill/spool"
    cp -r "$WORK/chits-burst/." "$WORK/fill/spool/request/"
    "$CHITD" run --spool "$WORK/fill/spool" --deliver "$WORK/fill/deliver" \
        --cache "$WORK/cache" --mirror "$NGINX_URL/hits" --exit-when-idle \
        </dev/null >"$WORK/chitd-fill.log" 2>&1 || {
        tail -n 20 "$WORK/chitd-fill.log" >&2
        die "chitd failed to fill its cache"
    }
    n=$(count_files "$WORK/fill/spool/downloaded")
    [[ $n -eq $HITS_COUNT ]] || die "cache fill: $n of $HITS_COUNT chits downloaded"
    nginx_stop
    log "nginx stopped: from now on chitd can only serve from its cache"

    chitd_up() { chitd_start "$WORK/chitd.log" --spool "$out/spool" --deliver "$out/deliver" --cache "$WORK/cache"; }
    settle_deletes
    run_worker chitd chitd_up chitd_stop

    # The same daemon serving /metrics, scraped every second (a Prometheus
    # server scrapes every 15 s or so): what metrics cost the hot path.
    # Progress (the status file) is published in both.
    scraper_pid=
    chitd_metrics_up() {
        local port
        port=$(python3 "$BENCHTOOL" free-port)
        chitd_start "$WORK/chitd-metrics.log" --spool "$out/spool" --deliver "$out/deliver" \
            --cache "$WORK/cache" --metrics "127.0.0.1:$port"
        wait_for "curl -fsS -o /dev/null http://127.0.0.1:$port/metrics" 10 "chitd's /metrics"
        # One curl process, one kept-alive connection, a scrape a second
        # (as a Prometheus server does): not a process started per scrape,
        # whose own start-up on these 2 cores cost the burst more than the
        # scrape itself.
        setsid curl -fsS --rate 1/s -o /dev/null "http://127.0.0.1:$port/metrics?[1-100000]" \
            </dev/null >/dev/null 2>&1 &
        scraper_pid=$!
    }
    chitd_metrics_stop() {
        [[ -n $scraper_pid ]] && kill -TERM -- "-$scraper_pid" 2>/dev/null || true
        scraper_pid=
        chitd_stop
    }
    settle_deletes
    run_worker chitd+metrics chitd_metrics_up chitd_metrics_stop
fi

# ---------------------------------------------------------------- naive
# The naive worker's cache: plain files named by digest.
mkdir -p "$WORK/naive-cache"
while IFS=$'\t' read -r sha _ name; do
    [[ $sha == \#* ]] && continue
    ln "$files/$name" "$WORK/naive-cache/$sha" 2>/dev/null || cp "$files/$name" "$WORK/naive-cache/$sha"
done <"$manifest"

# shellcheck disable=SC2016 # expanded by the worker's own bash
naive_body='
    cd "$1"
    deliver=$2 cache=$3 durable=$4
    inotifywait -m -e moved_to --format %f request 2>"$5" |
        while IFS= read -r name; do
            case $name in .*) continue ;; esac
            { IFS= read -r sha; IFS= read -r size; IFS= read -r path; } <"request/$name"
            final=$deliver/$path
            dir=${final%/*}
            [ -d "$dir" ] || mkdir -p "$dir"
            if [ "$durable" = 1 ]; then
                cp "$cache/$sha" "$dir/.naive.$name"
                sync "$dir/.naive.$name"
                mv "$dir/.naive.$name" "$final"
                sync "$dir"
                mv "request/$name" "downloaded/$name"
                sync downloaded
            else
                cp "$cache/$sha" "$final"
                mv "request/$name" "downloaded/$name"
            fi
        done'
naive_pid=
naive_start() {
    : >"$WORK/naive.err"
    setsid bash -c "$naive_body" naive "$out/spool" "$out/deliver" "$WORK/naive-cache" "$1" "$WORK/naive.err" \
        </dev/null >>"$WORK/naive.log" 2>&1 &
    naive_pid=$!
    # shellcheck disable=SC2016 # wait_for evals it
    wait_for 'grep -q "Watches established" "$WORK/naive.err"' 10 "the naive worker's inotify watch"
}
naive_stop() {
    if [[ -n $naive_pid ]]; then
        kill -TERM -- "-$naive_pid" 2>/dev/null || true
        wait "$naive_pid" 2>/dev/null || true
        naive_pid=
    fi
}
on_exit naive_stop
naive_up() { naive_start 0; }
naive_durable_up() { naive_start 1; }
run_worker naive naive_up naive_stop
run_worker naive-durable naive_durable_up naive_stop

# ---------------------------------------------------------------- report
note="$(machine_note); all cache hits of $(human_bytes "$size") files, no network."
report "hits: burst of $HITS_COUNT cache-hit chits into a running daemon" \
    --count "$HITS_COUNT" --unit chits --baseline naive --baseline naive-durable \
    --note "$note" --note "Time from the first rename into request/ to the last chit in downloaded/."
python3 "$BENCHTOOL" latency-report "${latencies[@]}" \
    --title "hits: one chit at a time, drop -> downloaded latency ($SERIAL_COUNT chits)" \
    --baseline naive --baseline naive-durable --note "$note"
