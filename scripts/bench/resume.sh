#!/usr/bin/env bash
# resume.sh — how many bytes a tool fetches twice when it is killed (-9)
# halfway through a big download and started again: chitd against
# `curl -C -` and `aria2c -c`.
#
#   RESUME_SIZE=$BIG_SIZE or 1G   file size (IEC suffixes); cached in $BENCH_DIR/data
#   RESUME_AT=50                  kill at this percentage of the file
#   RESUME_RATE=                  nginx limit_rate in bytes/s (default: the
#                                 size / 5, so a whole transfer takes ~5 s and
#                                 the kill, ~2.5 s in, is hit precisely; the
#                                 result depends on where the kill falls
#                                 between a tool's checkpoints: chitd's are
#                                 every 32 MiB or 2 s)
#   RUNS=5                        kill-and-resume rounds per tool (the table
#                                 shows min/median/max of the re-fetched bytes)
#   BENCH_DIR, CHITD, CHITD_BUILT, KEEP, NO_INSTALL, NO_CHITD: see lib.sh
#
# Kill point: when the client has received RESUME_AT% of the file, read off
# nginx's socket with `ss` (tcp bytes_acked) so it is the same for every tool
# whatever its on-disk layout; the bytes on disk at that moment are shown too
# (for chitd: the largest file under <cache> whose path matches
# CHITD_PARTIAL_GLOB, default '*/partial*').
# Re-fetched bytes = sum of nginx's $body_bytes_sent for the file over both
# attempts - the file size (bytes in flight when the client died count as
# re-fetched: they were sent and lost). The resumed file is verified.
#
#   chitd    chitd run --exit-when-idle, killed; again until it exits
#   curl     curl -o F URL, killed; curl -C - -o F URL
#   aria2c   aria2c -x1 --file-allocation=none, killed; aria2c -c (the same
#            options). Its control file (F.aria2) is written at the start and
#            then saved every 60 s by default, so after a kill -9 within the
#            first minute it records no progress and aria2c starts over.
#   aria2c-save1s  the same with --auto-save-interval=1.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

: "${RESUME_SIZE:=${BIG_SIZE:-1G}}"
: "${RESUME_AT:=50}"
: "${CHITD_PARTIAL_GLOB:=*/partial*}"

bench_init resume
need_tools nginx:nginx curl:curl aria2c:aria2 ss:iproute2
build_chitd

src=$(random_file "$RESUME_SIZE")
sha=$(cat "$src.sha256")
bytes=$(stat -c %s "$src")
: "${RESUME_RATE:=$((bytes / 5))}"
kill_at=$((bytes * RESUME_AT / 100))
mkdir -p "$WORK/www"
ln -s "$src" "$WORK/www/big.bin"
nginx_start "$WORK/www" "
        location / { limit_rate $RESUME_RATE; }
        location = /nginx-status { stub_status; access_log off; }"
# shellcheck disable=SC2034 # used in eval'd strings
url=$NGINX_URL/big.bin

# received: bytes nginx's sockets have had acknowledged by clients.
received() {
    ss -Htni state established "( sport = :$NGINX_PORT )" |
        awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^bytes_acked:/) { sub(/.*:/, "", $i); s += $i } }
             END { printf "%d\n", s }'
}
# nginx_idle: wait until no client connection is open (the aborted request's
# log line is written when nginx notices the close).
nginx_idle() {
    # shellcheck disable=SC2016
    wait_for '[[ $(curl -s "$NGINX_URL/nginx-status" | awk "/^Active/ { print \$3 }") == 1 ]]' 30 "nginx to close all connections"
}

# kill_halfway PID ON-DISK-COMMAND: SIGKILL PID once RESUME_AT% has arrived;
# sets `disk` to the bytes on disk at that moment.
kill_halfway() {
    local pid=$1 on_disk=$2 got
    while :; do
        got=$(received)
        ((got < kill_at)) || break
        kill -0 "$pid" 2>/dev/null || die "the download ended before ${RESUME_AT}% (lower RESUME_RATE)"
        sleep 0.005
    done
    kill -KILL "$pid"
    disk=$(eval "$on_disk")
    { wait "$pid"; } 2>/dev/null || true
}

out=$WORK/out
fresh() {
    rm -rf "$out"
    mkdir -p "$out/cache" "$out/deliver"
    nginx_idle
    : >"$NGINX_LOG"
}

# one_round LABEL START RESUME ON-DISK: the tool downloads into
# $out/deliver/big.bin; appends "refetched on_disk requests" to its rounds file.
one_round() {
    local label=$1 start=$2 resume=$3 on_disk=$4 pid disk sent_and_n
    fresh
    eval "$start" &
    pid=$!
    kill_halfway "$pid" "$on_disk"
    eval "$resume" || die "$label: the resumed download failed"
    cmp -s "$src" "$out/deliver/big.bin" || die "$label: the resumed file differs from the source"
    nginx_idle
    sent_and_n=$(nginx_bytes_sent /big.bin)
    log "$label: sent ${sent_and_n% *} bytes in ${sent_and_n#* } requests; on disk at the kill: ${disk:-?}"
    printf '%s %s %s\n' "$((${sent_and_n% *} - bytes))" "${disk:-0}" "${sent_and_n#* }" >>"$WORK/rounds-$label"
}

rounds() {
    local label=$1 i
    : >"$WORK/rounds-$label"
    for ((i = 1; i <= RUNS; i++)); do
        one_round "$@"
    done
}

largest_partial() {
    find "$out/cache" -type f -path "$CHITD_PARTIAL_GLOB" -printf '%s\n' 2>/dev/null | sort -n | tail -n 1
}

labels=()
if have_chitd; then
    chitd_args() {
        make_spool "$out/spool"
        [[ -e $out/spool/request/big || -e $out/spool/fetch/big ]] ||
            write_chit "$out/spool/request/big" "$sha" "$bytes" big.bin
        echo --spool "$out/spool" --deliver "$out/deliver" --cache "$out/cache" --mirror "$NGINX_URL" --exit-when-idle
    }
    # shellcheck disable=SC2016,SC2046 # eval'd later; the args have no spaces
    rounds chitd \
        'exec "$CHITD" run $(chitd_args) </dev/null >>"$WORK/chitd.log" 2>&1' \
        '"$CHITD" run $(chitd_args) </dev/null >>"$WORK/chitd.log" 2>&1 && [[ -e $out/spool/downloaded/big ]]' \
        largest_partial
    labels+=(chitd)
fi

# shellcheck disable=SC2016 # eval'd later
rounds curl \
    'exec curl -sS -o "$out/deliver/big.bin" "$url"' \
    'curl -sS -C - -o "$out/deliver/big.bin" "$url"' \
    'stat -c %s "$out/deliver/big.bin"'
labels+=(curl)

# shellcheck disable=SC2034 # used in eval'd strings
aria_opts=(-q --console-log-level=error --summary-interval=0 -x1 -s1 --file-allocation=none
    --auto-file-renaming=false --checksum="sha-256=$sha" -d "$WORK/out/deliver" -o big.bin)
# shellcheck disable=SC2016 # eval'd later
rounds aria2c \
    'exec aria2c "${aria_opts[@]}" "$url"' \
    'aria2c "${aria_opts[@]}" -c "$url"' \
    'stat -c %s "$out/deliver/big.bin"'
labels+=(aria2c)
# shellcheck disable=SC2016 # eval'd later
rounds aria2c-save1s \
    'exec aria2c "${aria_opts[@]}" --auto-save-interval=1 "$url"' \
    'aria2c "${aria_opts[@]}" --auto-save-interval=1 -c "$url"' \
    'stat -c %s "$out/deliver/big.bin"'
labels+=(aria2c-save1s)

# ---------------------------------------------------------------- report
rows=()
for label in "${labels[@]}"; do rows+=("$label=$WORK/rounds-$label"); done
python3 "$BENCHTOOL" resume-report "${rows[@]}" --size "$bytes" \
    --title "resume: killed (-9) at ${RESUME_AT}% of $(human_bytes "$bytes"), restarted; $RUNS rounds each" \
    --note "$(machine_note); nginx limit_rate $RESUME_RATE B/s." \
    --note "re-fetched = bytes nginx sent over both attempts - file size; on disk = bytes in the partial file when it was killed."
