#!/usr/bin/env bash
# wan.sh — chitd against aria2c, curl -Z and wget over a shaped "WAN":
# examples/shape.rs (a latency- and bandwidth-shaping TCP proxy; this
# kernel has no netem) between the clients and nginx. Every peer in the
# same run, all writing to disk, cache misses only.
#
#   WAN_SET=latency | bandwidth  which set (default: latency)
#     latency    400 files of 10-500 KiB and 4 of 2-20 MiB, at WAN_RTT=80 ms
#                and WAN_MBIT=1000
#     bandwidth  ~1 GiB of mixed sizes (8 of 64 MiB, 16 of 16 MiB, 128 of
#                1 MiB), at WAN_RTT=40 ms and WAN_MBIT=200; the floor is
#                bytes / bandwidth
#   WAN_TLS=1        HTTPS with HTTP/2 (nginx `listen ... ssl http2`, a
#                    self-signed certificate every client is told to trust:
#                    chitd through `ca_file`); WAN_TLS=0: plain HTTP/1.1
#   WAN_RTT, WAN_MBIT  override the set's round trip (ms) and bandwidth
#   CHITD_JOBS=, CHITD_PER_HOST=  chitd's jobs / per_host (default: its own)
#   WAN_PEERS=0      measure chitd only
#   RUNS=3           timed runs per tool
#   BENCH_DIR, CHITD, CHITD_BUILT, KEEP, NO_INSTALL, NO_CHITD: see lib.sh
#
# Peers: aria2c -j16 -x4 (-x splits a file over up to 4 connections),
# curl -Z --parallel-max 16, wget -i (one at a time). In the latency set
# also the peers held to chitd's per_host connections to the host
# (CHITD_PER_HOST, else chitd's default 6): curl -Z --parallel-max
# $per_host and aria2c -j$per_host -x1. Over HTTP/1.1 (no pipelining) the
# connections decide a latency-bound set's time. The table gives each
# time against the best peer and against the best peer within per_host.
# chitd at its defaults (jobs 4, per_host 6).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

: "${WAN_SET:=latency}"
: "${WAN_TLS:=1}"
case $WAN_SET in
latency) : "${WAN_RTT:=80}" "${WAN_MBIT:=1000}" ;;
bandwidth) : "${WAN_RTT:=40}" "${WAN_MBIT:=200}" ;;
*) die "WAN_SET must be latency or bandwidth: $WAN_SET" ;;
esac

bench_init "wan-$WAN_SET"
need_tools nginx:nginx curl:curl wget:wget aria2c:aria2 openssl:openssl
build_chitd

# The file set: groups of COUNT files of SIZE, each made (and cached) by
# benchtool, linked into one directory with one manifest.
groups=()
case $WAN_SET in
latency) groups=("100 10K" "100 50K" "100 200K" "100 500K" "1 2M" "1 5M" "1 10M" "1 20M") ;;
bandwidth) groups=("8 64M" "16 16M" "128 1M") ;;
esac
files=$WORK/www/wan
mkdir -p "$files"
: >"$files/manifest.tsv"
group=0
for spec in "${groups[@]}"; do
    read -r count size <<<"$spec"
    bytes=$(size_bytes "$size")
    dir=$DATA/wan-$count-$bytes
    python3 "$BENCHTOOL" gen-files "$dir" "$count" "$bytes" --prefix "g${group}-" >&2
    grep -v '^#' "$dir/manifest.tsv" >>"$files/manifest.tsv"
    while read -r _ _ name; do ln -s "$dir/$name" "$files/$name"; done < <(grep -v '^#' "$dir/manifest.tsv")
    group=$((group + 1))
done
count=$(wc -l <"$files/manifest.tsv")
total=$(awk '{ s += $2 } END { print s }' "$files/manifest.tsv")
log "$count files, $(human_bytes "$total")"

# nginx, with TLS and HTTP/2 when asked, behind the shaping proxy.
scheme=http
tls_conf=
if [[ $WAN_TLS == 1 ]]; then
    scheme=https
    # A self-signed server certificate, not a CA's (openssl's default
    # CA:TRUE is refused as a server's own by webpki: CaUsedAsEndEntity).
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 \
        -addext subjectAltName=IP:127.0.0.1 -addext basicConstraints=critical,CA:FALSE \
        -addext extendedKeyUsage=serverAuth -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
    tls_conf="ssl_certificate $WORK/cert.pem; ssl_certificate_key $WORK/key.pem;"
fi
nginx_start "$WORK/www" "$tls_conf"
if [[ $WAN_TLS == 1 ]]; then
    # nginx_start listens without ssl: add it, and HTTP/2, on the same
    # port (`listen ... ssl http2` works from nginx 1.9.5 on; newer ones
    # warn and prefer `http2 on`).
    sed -i "s|listen 127.0.0.1:$NGINX_PORT;|listen 127.0.0.1:$NGINX_PORT ssl http2;|" "$WORK/nginx/nginx.conf"
    nginx_stop
    nginx -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf" </dev/null >/dev/null 2>&1 &
    NGINX_PID=$!
fi
shape=${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/examples/shape
log "cargo build --release --example shape"
(cd "$REPO_ROOT" && cargo build --release --locked --example shape) >&2
port=$(python3 "$BENCHTOOL" free-port)
"$shape" "127.0.0.1:$port" "127.0.0.1:$NGINX_PORT" "$WAN_RTT" "$WAN_MBIT" 2>"$WORK/shape.log" &
shape_pid=$!
on_exit "kill $shape_pid 2>/dev/null; wait $shape_pid 2>/dev/null"
base=$scheme://127.0.0.1:$port/wan
wait_for "curl -sk -o /dev/null $base/manifest.tsv" 10 "the shaped link"
tls=()
[[ $WAN_TLS == 1 ]] && tls=(--cacert "$WORK/cert.pem")

out=
fresh() {
    next_run_dir
    mkdir -p "$out/cache" "$out/deliver"
    sync
}
all_ok() {
    local n
    n=$(count_files "$out/deliver")
    [[ $n -eq $count ]] || die "$n of $count files delivered"
    (cd "$out/deliver" && sha256sum --quiet -c <(awk '{ print $1 "  " $3 }' "$files/manifest.tsv")) ||
        die "delivered files differ from the source"
}

lists=$WORK/lists
mkdir -p "$lists"
awk -v base="$base" '{
    printf "url = \"%s/%s\"\noutput = \"%s\"\n", base, $3, $3 > "'"$lists"'/curl.cfg"
    printf "%s/%s\n  out=%s\n", base, $3, $3 > "'"$lists"'/aria2.txt"
    printf "%s/%s\n", base, $3 > "'"$lists"'/wget.txt"
}' "$files/manifest.tsv"

if have_chitd; then
    python3 "$BENCHTOOL" chits "$files/manifest.tsv" "$WORK/chits" --name-prefix c
    config=$WORK/chitd.toml
    : >"$config"
    [[ $WAN_TLS == 1 ]] && printf 'ca_file = "%s"\n' "$WORK/cert.pem" >>"$config"
    [[ -z ${CHITD_JOBS:-} ]] || printf 'jobs = %s\n' "$CHITD_JOBS" >>"$config"
    [[ -z ${CHITD_PER_HOST:-} ]] || printf 'per_host = %s\n' "$CHITD_PER_HOST" >>"$config"
    chitd_prepare() {
        fresh
        make_spool "$out/spool"
        cp -r "$WORK/chits/." "$out/spool/request/"
    }
    chitd_run() {
        "$CHITD" run --config "$config" --spool "$out/spool" --deliver "$out/deliver" \
            --cache "$out/cache" --mirror "$base" --exit-when-idle </dev/null >"$WORK/chitd.log" 2>&1 ||
            {
                tail -n 20 "$WORK/chitd.log" >&2
                return 1
            }
    }
    measure chitd chitd_prepare chitd_run all_ok
fi

if [[ ${WAN_PEERS:-1} == 0 ]]; then
    report "wan ($WAN_SET): chitd only, jobs ${CHITD_JOBS:-default}, per_host ${CHITD_PER_HOST:-default}" --count "$count" --unit files
    exit 0
fi

curl_z() { (cd "$out/deliver" && curl -sS --fail "${tls[@]}" -Z --parallel-max 16 -K "$lists/curl.cfg"); }
measure "curl -Z --parallel-max 16" fresh curl_z all_ok

# aria2c -jJOBS -xCONNECTIONS
aria_j() {
    local ca=()
    [[ $WAN_TLS == 1 ]] && ca=(--ca-certificate="$WORK/cert.pem")
    aria2c -q --console-log-level=error --summary-interval=0 --allow-overwrite=true \
        --auto-file-renaming=false --file-allocation=none "${ca[@]}" "-j$1" "-x$2" \
        -d "$out/deliver" -i "$lists/aria2.txt"
}
measure "aria2c -j16 -x4" fresh "aria_j 16 4" all_ok

# The peers held to per_host connections (latency set).
per_host=${CHITD_PER_HOST:-6}
within=()
if [[ $WAN_SET == latency ]]; then
    curl_p() { (cd "$out/deliver" && curl -sS --fail "${tls[@]}" -Z --parallel-max "$per_host" -K "$lists/curl.cfg"); }
    measure "curl -Z --parallel-max $per_host" fresh curl_p all_ok
    measure "aria2c -j$per_host -x1" fresh "aria_j $per_host 1" all_ok
    within=("curl -Z --parallel-max $per_host" "aria2c -j$per_host -x1")
fi

wget_i() {
    local ca=()
    [[ $WAN_TLS == 1 ]] && ca=(--ca-certificate="$WORK/cert.pem")
    wget -q "${ca[@]}" -P "$out/deliver" -i "$lists/wget.txt"
}
measure "wget -i" fresh wget_i all_ok

best=(--best "best peer" "curl -Z --parallel-max 16" "aria2c -j16 -x4" "wget -i" "${within[@]}")
[[ ${#within[@]} -eq 0 ]] || best+=(--best "best peer within per_host ($per_host)" "${within[@]}")
floor=$(awk -v b="$total" -v m="$WAN_MBIT" 'BEGIN { printf "%.2f", b * 8 / (m * 1e6) }')
report "wan ($WAN_SET): $count files, $(human_bytes "$total"), ${WAN_RTT} ms RTT, ${WAN_MBIT} Mbit/s, $([[ $WAN_TLS == 1 ]] && echo 'HTTPS, HTTP/2' || echo 'HTTP/1.1')" \
    --count "$count" --unit files "${best[@]}" \
    --note "$(machine_note); link floor (bytes / bandwidth): $floor s; shaped by examples/shape.rs (loopback TCP to the proxy: no slow start)."
