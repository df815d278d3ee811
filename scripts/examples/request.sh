#!/bin/sh
# request.sh — a chitd consumer in plain POSIX sh.
#
# Usage: request.sh SPOOL SHA256 SIZE PATH [URL]...
#
# Drops one chit into SPOOL/request/ and waits until chitd has dealt with it:
#   - written as SPOOL/request/.NAME, then renamed to SPOOL/request/NAME, so the
#     daemon never sees a partial chit under its final name;
#   - done when SPOOL/downloaded/NAME appears: prints PATH (or DELIVER/PATH when
#     DELIVER is set) on stdout and exits 0;
#   - failed when SPOOL/fail/NAME appears: prints the chit's last
#     "# error: ..." reason on stderr and exits 1.
#
# Environment:
#   TIMEOUT=SECONDS   give up waiting after this long (decimals allowed) and
#                     exit 124; the chit stays where it is (chitd goes on).
#   DELIVER=DIR       the consumer's delivery directory, only used to print the
#                     full path of the delivered file.
#   REQUEST_POLL=1    do not use inotifywait even when it is installed.
#
# Waiting uses inotifywait (inotify-tools) when it is installed and
# SPOOL/downloaded/ and SPOOL/fail/ exist; otherwise it polls every 0.1 s.
# The watch is in place before the chit is dropped, so no event is missed.
#
# Exit status: 0 downloaded, 1 failed, 124 timed out, 2 usage or other error.
# It creates nothing outside SPOOL: only SPOOL/request/ (if missing), the
# temporary SPOOL/request/.NAME and the chit itself.

set -u

prog=${0##*/}

usage() {
    cat >&2 <<EOF
usage: $prog SPOOL SHA256 SIZE PATH [URL]...

Drop a chit for PATH (sha256 SHA256, SIZE bytes) into SPOOL/request/ and wait
until chitd has delivered it (exit 0, prints the path) or failed it (exit 1,
prints the reason). TIMEOUT=SECONDS in the environment: exit 124 after that.
EOF
    exit 2
}

die() {
    printf '%s: %s\n' "$prog" "$*" >&2
    exit 2
}

case ${1:-} in
-h | --help) usage ;;
esac
[ $# -ge 4 ] || usage

spool=$1
sha=$2
size=$3
path=$4
shift 4

nl='
'
cr=$(printf '\r')
for arg in "$sha" "$size" "$path" "$@"; do
    case $arg in
    *"$nl"* | *"$cr"*) die "arguments may not contain line breaks" ;;
    esac
done
case $sha in
*[!0-9a-fA-F]* | '') die "SHA256 must be 64 hex digits: $sha" ;;
esac
[ ${#sha} -eq 64 ] || die "SHA256 must be 64 hex digits: $sha"
case $size in
*[!0-9]* | '') die "SIZE must be a decimal byte count: $size" ;;
esac
[ -n "$path" ] || die "PATH may not be empty"

timeout_ms=
if [ -n "${TIMEOUT:-}" ]; then
    case $TIMEOUT in
    *[!0-9.]* | *.*.* | . | '') die "TIMEOUT must be a number of seconds: $TIMEOUT" ;;
    esac
    timeout_ms=$(awk -v t="$TIMEOUT" 'BEGIN { printf "%d", t * 1000 }')
fi

[ -d "$spool" ] || die "spool directory not found: $spool"
request_dir=$spool/request
downloaded_dir=$spool/downloaded
fail_dir=$spool/fail
if [ ! -d "$request_dir" ]; then
    mkdir "$request_dir" 2>/dev/null || [ -d "$request_dir" ] ||
        die "cannot create $request_dir"
fi

# Milliseconds since the epoch (GNU date has %N; elsewhere whole seconds).
now_ms() {
    ns=$(date +%s%N)
    case $ns in
    *[!0-9]*) echo $(($(date +%s) * 1000)) ;;
    *) echo $((ns / 1000000)) ;;
    esac
}
start_ms=$(now_ms)

# A unique chit name: basename of PATH, our pid and the time, with anything
# outside [A-Za-z0-9._-] replaced and no leading dot.
base=$(printf '%s' "${path##*/}" | tr -c 'A-Za-z0-9._-' '_' | cut -c1-100)
base=${base#"${base%%[!.]*}"}
[ -n "$base" ] || base=chit
stamp=$(date +%s%N)
case $stamp in *[!0-9]*) stamp=$(date +%s) ;; esac
name=$base-$$-$stamp
n=0
while [ -e "$request_dir/$name" ] || [ -e "$request_dir/.$name" ] ||
    [ -e "$spool/fetch/$name" ] || [ -e "$downloaded_dir/$name" ] ||
    [ -e "$fail_dir/$name" ]; do
    n=$((n + 1))
    name=$base-$$-$stamp-$n
done

tmp=$request_dir/.$name
final=$request_dir/$name

cleanup() {
    rm -f "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Write the chit under its dot name; noclobber: never reuse someone's file.
(
    set -C
    {
        printf '%s\n%s\n%s\n' "$sha" "$size" "$path"
        for url in "$@"; do
            printf '%s\n' "$url"
        done
    } >"$tmp"
) || die "cannot write $tmp"

drop() {
    mv -f "$tmp" "$final"
}

# If the chit is terminal, print the outcome and return 0 (the caller exits
# with $status); otherwise return 1.
finished() {
    if [ -e "$downloaded_dir/$name" ]; then
        if [ -n "${DELIVER:-}" ]; then
            printf '%s\n' "${DELIVER%/}/$path"
        else
            printf '%s\n' "$path"
        fi
        status=0
        return 0
    fi
    if [ -e "$fail_dir/$name" ]; then
        reason=$(sed -n 's/^#[[:space:]]*error:[[:space:]]*//p' "$fail_dir/$name" | tail -n 1)
        printf '%s: %s failed: %s\n' "$prog" "$path" "${reason:-no reason given}" >&2
        status=1
        return 0
    fi
    return 1
}

timed_out() {
    [ -n "$timeout_ms" ] && [ $(($(now_ms) - start_ms)) -ge "$timeout_ms" ]
}

report_timeout() {
    printf '%s: timed out after %s s waiting for chit %s\n' "$prog" "$TIMEOUT" "$name" >&2
    exit 124
}

# Wait with inotify. Exit status: the outcome, or 3 when the watch could not
# be set up or died early (the caller then polls; it drops the chit itself if
# this did not).
wait_inotify() {
    {
        inotifywait -m -e moved_to -e create --format '%f' \
            "$downloaded_dir" "$fail_dir" 2>&1 </dev/null &
        echo "pid $!"
        wait
    } | {
        iw='' timer='' established='' status=3
        while IFS= read -r line; do
            case $line in
            "pid "*)
                iw=${line#pid }
                if [ -n "$timeout_ms" ]; then
                    (
                        trap 'kill "$sp" 2>/dev/null; exit 0' TERM
                        sleep "$TIMEOUT" &
                        sp=$!
                        wait "$sp"
                        kill "$iw" 2>/dev/null
                    ) </dev/null >/dev/null 2>&1 &
                    timer=$!
                fi
                ;;
            "Watches established.")
                drop || break
                established=1
                finished && break
                ;;
            "$name")
                [ -n "$established" ] && finished && break
                ;;
            esac
        done
        # The watcher's pid line may in theory come late: read up to it, so
        # the watcher can always be stopped (the pipeline waits for it).
        while [ -z "$iw" ] && IFS= read -r line; do
            case $line in "pid "*) iw=${line#pid } ;; esac
        done
        [ -n "$timer" ] && kill "$timer" 2>/dev/null
        [ -n "$iw" ] && kill "$iw" 2>/dev/null
        if [ "$status" = 3 ] && [ -n "$established" ]; then
            if finished; then
                :
            elif timed_out; then
                status=124
            fi
        fi
        exit "$status"
    }
}

if [ -z "${REQUEST_POLL:-}" ] && command -v inotifywait >/dev/null 2>&1 &&
    [ -d "$downloaded_dir" ] && [ -d "$fail_dir" ]; then
    wait_inotify
    status=$?
    case $status in
    0 | 1) exit "$status" ;;
    124) report_timeout ;;
    esac
fi

# Polling: also the fallback when the inotify watch could not be used.
if [ -e "$tmp" ]; then
    drop || die "cannot rename $tmp to $final"
fi
while :; do
    if finished; then
        exit "$status"
    fi
    timed_out && report_timeout
    sleep 0.1
done
