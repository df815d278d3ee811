# shellcheck shell=bash
# lib.sh — shared helpers of the chitd benchmarks. Source it; do not run it.
#
# Environment knobs understood by every benchmark:
#   BENCH_DIR=/tmp/chitd-bench   where data and work dirs live; must be a real
#                                disk filesystem (not tmpfs), ideally the one
#                                /work is on. Generated data is cached in
#                                $BENCH_DIR/data between runs.
#   RUNS=5                       timed runs per command (min/median/max shown)
#   CHITD=path                   use this chitd binary instead of building
#                                target/release/chitd
#   CHITD_BUILT=1                skip `cargo build --release` (run.sh sets it)
#   KEEP=1                       keep the per-run work dir for inspection
#   NO_INSTALL=1                 never apt-get install; fail if a tool is missing
#   NO_CHITD=1                   measure only the peers (no chitd build or runs)
#
# Helpers: bench_init, need_tools, build_chitd, nginx_start/nginx_stop,
# measure/record (timing with $EPOCHREALTIME, no forks), report (table with
# min/median/max and ratios, plus the same as markdown), size parsing,
# file generation and waiting helpers.

export LC_ALL=C

BENCH_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$BENCH_LIB_DIR/../.." && pwd)
BENCHTOOL=$BENCH_LIB_DIR/benchtool.py
: "${BENCH_DIR:=/tmp/chitd-bench}"
: "${RUNS:=5}"

log() { printf '[%s %(%H:%M:%S)T] %s\n' "${BENCH_NAME:-bench}" -1 "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# ---------------------------------------------------------------- cleanup
_cleanups=()
# on_exit CMD...: run CMD (eval'd) at exit, last registered first.
on_exit() { _cleanups+=("$*"); }
_run_cleanups() {
    local i
    for ((i = ${#_cleanups[@]} - 1; i >= 0; i--)); do
        eval "${_cleanups[i]}" || true
    done
    _cleanups=()
}

# ---------------------------------------------------------------- setup
# bench_init NAME: trap, work dir $WORK (fresh), data dir $DATA (cached),
# results file $RESULTS; refuses tmpfs.
bench_init() {
    BENCH_NAME=$1
    trap _run_cleanups EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    [[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer: $RUNS"
    mkdir -p "$BENCH_DIR"
    chmod 755 "$BENCH_DIR"
    local fstype
    fstype=$(stat -f -c %T "$BENCH_DIR")
    case $fstype in
    tmpfs | ramfs) die "BENCH_DIR=$BENCH_DIR is on $fstype; use a disk filesystem (e.g. BENCH_DIR=/work/chitd-bench)" ;;
    esac
    if [[ -d /work ]] && [[ $(stat -c %d /work) != $(stat -c %d "$BENCH_DIR") ]]; then
        log "note: BENCH_DIR=$BENCH_DIR is not on the filesystem of /work ($fstype)"
    fi
    DATA=$BENCH_DIR/data
    WORK=$BENCH_DIR/$BENCH_NAME.$$
    mkdir -p "$DATA"
    trash "$WORK"
    mkdir -p "$WORK"
    RESULTS=$WORK/results.tsv
    : >"$RESULTS"
    if [[ -z ${KEEP:-} ]]; then
        on_exit "trash '$WORK'"
    else
        log "KEEP=1: work dir $WORK is kept"
    fi
}

# ---------------------------------------------------------------- deletions
# On ext4 without a journal (this machine's), creating a file skips every
# free inode of its block group that was deleted less than 60 s ago (360 s
# once its inode-table block is dirty again, as it is while files are being
# created): ext4's `recently_deleted` check reads each candidate's
# inode-table entry, under the directory's lock. Deleting thousands of files
# in the minutes before a timed run thus slows every file creation in it
# (perf: a third of chitd's CPU time in `small`, and the 3x spread of its
# earlier results) and penalises whoever creates more files. So benchmarks
# that create many files give each run a new directory (next_run_dir); a
# work dir is moved to $BENCH_DIR/trash at exit (files over 1 MiB deleted at
# once: few inodes), and only run.sh empties the trash, after the last
# benchmark; settle_deletes waits out a recent emptying before timing.
TRASH=$BENCH_DIR/trash
DELETED_STAMP=$BENCH_DIR/.deleted-at
trash() {
    local path
    mkdir -p "$TRASH"
    for path in "$@"; do
        [[ -e $path ]] || continue
        find "$path" -type f -size +1M -delete
        mv "$path" "$(mktemp -d "$TRASH/XXXXXX")/"
    done
}
empty_trash() {
    [[ -d $TRASH ]] || return 0
    rm -rf "$TRASH"
    touch "$DELETED_STAMP"
}
settle_deletes() {
    local age
    fresh_disk_ok && return 0 # each run has a filesystem of its own
    [[ -f $DELETED_STAMP ]] || return 0
    age=$(($(date +%s) - $(stat -c %Y "$DELETED_STAMP")))
    if ((age < 361)); then
        log "waiting $((361 - age)) s for the files deleted at $(date -r "$DELETED_STAMP" +%T) to age out (see settle_deletes)"
        sleep $((361 - age))
    fi
}
# next_run_dir: sets $out to a new, empty directory for the next run: a
# fresh ext4 filesystem of its own (a sparse image of RUN_DISK, default 8G,
# made by mkfs.ext4, mounted through a loop device with direct I/O), so
# every run and every program starts from the same disk state (no
# inherited deleted inodes, no other run's dirty pages or fragmentation).
# The previous run's filesystem is unmounted and its image removed first.
# FRESH_DISK=0, or without root, losetup or mkfs.ext4: a new directory on
# $BENCH_DIR instead (see settle_deletes).
: "${RUN_DISK:=8G}"
_run_dirs=0
_run_mount=
fresh_disk_ok() {
    [[ ${FRESH_DISK:-1} != 0 && $(id -u) -eq 0 ]] &&
        command -v mkfs.ext4 >/dev/null && command -v losetup >/dev/null
}
_run_loop=
_run_unmount() {
    [[ -n $_run_mount ]] || return 0
    umount "$_run_mount" && losetup -d "$_run_loop" && rm -f "$_run_mount.img"
    _run_mount=
}
next_run_dir() {
    _run_dirs=$((_run_dirs + 1))
    out=$WORK/run.$_run_dirs
    mkdir -p "$out"
    fresh_disk_ok || return 0
    if ((_run_dirs == 1)); then
        on_exit _run_unmount
    fi
    _run_unmount
    truncate -s "$RUN_DISK" "$out.img"
    mkfs.ext4 -q -F "$out.img" >&2
    # Direct I/O: the image's blocks reach the disk without passing
    # through the page cache of the file system below a second time.
    _run_loop=$(losetup -f --show --direct-io=on "$out.img")
    mount "$_run_loop" "$out"
    _run_mount=$out
    rmdir "$out/lost+found"
}

# need_tools CMD[:PACKAGE]...: apt-get install the packages of missing commands.
need_tools() {
    local spec cmd pkg missing=()
    for spec in "$@"; do
        cmd=${spec%%:*}
        pkg=${spec#*:}
        command -v "$cmd" >/dev/null 2>&1 || [[ -x $cmd ]] || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    [[ -z ${NO_INSTALL:-} ]] || die "missing: ${missing[*]} (NO_INSTALL is set)"
    command -v apt-get >/dev/null 2>&1 || die "missing: ${missing[*]}; install them"
    local sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq >&2
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# build_chitd: sets CHITD (release build unless CHITD or CHITD_BUILT is set).
# NO_CHITD=1 skips chitd entirely (CHITD empty), to try the peers alone.
build_chitd() {
    if [[ -n ${NO_CHITD:-} ]]; then
        log "NO_CHITD is set: chitd is not measured"
        CHITD=
        return
    fi
    if [[ -n ${CHITD:-} ]]; then
        [[ -x $CHITD ]] || die "CHITD=$CHITD is not executable"
        return
    fi
    CHITD=${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/chitd
    if [[ ${CHITD_BUILT:-} != 1 ]]; then
        log "cargo build --release"
        (cd "$REPO_ROOT" && cargo build --release --locked --bin chitd) >&2
    fi
    [[ -x $CHITD ]] || die "no chitd binary at $CHITD"
    export CHITD
}

# have_chitd: whether chitd is measured in this run.
have_chitd() { [[ -n ${CHITD:-} ]]; }

# size_bytes 64M|1G|1024 -> bytes (IEC suffixes).
size_bytes() { numfmt --from=iec "$1"; }

# human_bytes N -> e.g. 1.0GiB
human_bytes() { numfmt --to=iec-i --suffix=B --format=%.1f "$1"; }

# random_file SIZE: path of a cached random file of SIZE bytes in $DATA
# (made once; its sha256 in the .sha256 file beside it).
random_file() {
    local bytes file
    bytes=$(size_bytes "$1")
    file=$DATA/random-$bytes.bin
    if [[ ! -f $file.sha256 || ! -f $file ]] || [[ $(stat -c %s "$file") != "$bytes" ]]; then
        log "generating $(human_bytes "$bytes") of random data in $file"
        head -c "$bytes" /dev/urandom >"$file.tmp"
        mv "$file.tmp" "$file"
        sha256sum "$file" | cut -d' ' -f1 >"$file.sha256"
    fi
    printf '%s\n' "$file"
}

# write_chit FILE SHA SIZE PATH [URL]...
write_chit() {
    local file=$1
    shift
    printf '%s\n' "$@" >"$file"
}

# make_spool DIR: the four state directories.
make_spool() { mkdir -p "$1"/{request,fetch,downloaded,fail}; }

# wait_for CONDITION-COMMAND TIMEOUT-S WHAT: poll every 10 ms.
wait_for() {
    local cond=$1 limit=$2 what=$3 start=${EPOCHREALTIME/./}
    until eval "$cond"; do
        if (((${EPOCHREALTIME/./} - start) > limit * 1000000)); then
            die "timed out after ${limit}s waiting for $what"
        fi
        sleep 0.01
    done
}

# count_files DIR: number of entries not starting with a dot.
count_files() {
    local n
    n=$(find "$1" -mindepth 1 -maxdepth 1 ! -name '.*' -printf . 2>/dev/null | wc -c)
    echo "$n"
}

# ---------------------------------------------------------------- nginx
# nginx_start DOCROOT [EXTRA-SERVER-CONF]: nginx on 127.0.0.1, a free port,
# in the foreground ("daemon off") as a background job of this script.
# Sets NGINX_URL, NGINX_PORT, NGINX_LOG (access log: "uri status
# body_bytes_sent range"), NGINX_PID.
nginx_start() {
    local docroot=$1 extra=${2:-} dir=$WORK/nginx user_line=
    mkdir -p "$dir"
    NGINX_PORT=$(python3 "$BENCHTOOL" free-port)
    NGINX_LOG=$dir/access.log
    [[ $(id -u) -ne 0 ]] || user_line="user root;"
    cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
$user_line
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
http {
    log_format bench '\$request_uri \$status \$body_bytes_sent "\$http_range"';
    access_log $NGINX_LOG bench;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $docroot;
        $extra
    }
}
EOF
    nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" </dev/null >"$dir/stdout.log" 2>&1 &
    NGINX_PID=$!
    on_exit nginx_stop
    NGINX_URL=http://127.0.0.1:$NGINX_PORT
    local i
    for ((i = 0; i < 500; i++)); do
        if curl -s -o /dev/null "$NGINX_URL/"; then
            log "nginx $NGINX_PID serving $docroot at $NGINX_URL"
            return 0
        fi
        kill -0 "$NGINX_PID" 2>/dev/null || break
        sleep 0.01
    done
    cat "$dir/error.log" "$dir/stdout.log" >&2 || true
    die "nginx did not start"
}

nginx_stop() {
    if [[ -n ${NGINX_PID:-} ]]; then
        kill -TERM "$NGINX_PID" 2>/dev/null || true
        wait "$NGINX_PID" 2>/dev/null || true
        NGINX_PID=
    fi
}

# nginx_bytes_sent URI-SUBSTRING: total $body_bytes_sent and request count
# for matching lines of the access log: "BYTES REQUESTS".
nginx_bytes_sent() {
    awk -v pat="$1" 'index($1, pat) { b += $3; n++ } END { printf "%d %d\n", b, n }' "$NGINX_LOG"
}

# ---------------------------------------------------------------- chitd
# chitd_start LOG ARGS...: `chitd run ARGS` in the background; sets CHITD_PID.
chitd_start() {
    local logf=$1
    shift
    "$CHITD" run "$@" </dev/null >"$logf" 2>&1 &
    CHITD_PID=$!
    on_exit chitd_stop
}

# chitd_stop: SIGTERM and wait (it must exit 0 on SIGTERM).
chitd_stop() {
    if [[ -n ${CHITD_PID:-} ]]; then
        kill -TERM "$CHITD_PID" 2>/dev/null || true
        local rc=0
        wait "$CHITD_PID" 2>/dev/null || rc=$?
        [[ $rc -eq 0 ]] || log "note: chitd exited $rc after SIGTERM"
        CHITD_PID=
    fi
}

# ---------------------------------------------------------------- timing
# now_us: microseconds since the epoch, without a fork.
now_us() { echo "${EPOCHREALTIME/./}"; }

# us_to_s MICROSECONDS -> seconds with 6 decimals
us_to_s() { printf '%d.%06d' $(($1 / 1000000)) $(($1 % 1000000)); }

# record LABEL SECONDS...: add timings to $RESULTS.
record() {
    local label=$1
    shift
    printf '%s\t%s\n' "$label" "$*" >>"$RESULTS"
}

# measure LABEL PREPARE RUN [CHECK]: RUNS times: PREPARE (untimed), RUN
# (timed), CHECK (untimed, must succeed). Each is a command string (eval'd).
measure() {
    local label=$1 prepare=$2 run=$3 check=${4:-true} i t0 t1 times=()
    for ((i = 1; i <= RUNS; i++)); do
        eval "$prepare" || die "$label: prepare failed"
        t0=${EPOCHREALTIME/./}
        eval "$run" || die "$label: run $i failed"
        t1=${EPOCHREALTIME/./}
        eval "$check" || die "$label: check after run $i failed"
        times+=("$(us_to_s $((t1 - t0)))")
        log "$label: run $i/$RUNS ${times[-1]} s"
    done
    record "$label" "${times[@]}"
}

# report TITLE [benchtool report options]: the table of $RESULTS.
report() {
    local title=$1
    shift
    python3 "$BENCHTOOL" report "$RESULTS" --title "$title" "$@"
}

# machine_note: one line about where the numbers come from.
machine_note() {
    local rev
    rev=$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')
    printf '%s' "$(nproc) cores, $(free -g | awk '/^Mem:/ { print $2 }') GiB RAM, $(if fresh_disk_ok; then echo "a fresh loop-mounted ext4 per run"; else stat -f -c %T "$BENCH_DIR"; fi) at $BENCH_DIR, $(uname -r), chitd $rev, $(date -u +%Y-%m-%d)"
}

# file_ok FILE SHA256: the file has that digest (openssl: faster than sha256sum).
file_ok() {
    local got
    got=$(openssl dgst -sha256 -r "$1" 2>/dev/null | cut -d' ' -f1)
    [[ $got == "$2" ]] || {
        log "$1: sha256 ${got:-missing}, expected $2"
        return 1
    }
}
