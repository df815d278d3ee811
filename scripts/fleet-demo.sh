#!/usr/bin/env bash
# The fleet tier, end to end: a three-node Garage cluster (a real
# distributed S3 store), three chitd "hosts" in separate directories
# sharing one bucket, and nginx as the upstream mirror. Each distfile must
# cross the upstream link once for the whole fleet: nginx's access log
# counts it.
#
# Needs: nginx, curl, sha256sum, a built chitd (cargo build --release), and
# garage 2.5.0. Garage is installed with cargo when missing: that is a LONG
# build (about 16 minutes on two cores), done once:
#     cargo install garage --version 2.5.0 --locked
#
# Usage: scripts/fleet-demo.sh [WORKDIR]   (default: a fresh temp dir)
# Ports: nginx on UPSTREAM_PORT (18080), Garage from GARAGE_PORT_BASE
# (3900; see scripts/garage.sh).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=${1:-$(mktemp -d /tmp/chitd-fleet.XXXXXX)}
mkdir -p "$work"
chitd=${CHITD:-$root/target/release/chitd}
export PATH="$HOME/.cargo/bin:$PATH"

say() { printf '\n== %s\n' "$*"; }
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

[[ -x $chitd ]] || { echo "build chitd first: cargo build --release (or set CHITD)" >&2; exit 2; }
command -v nginx >/dev/null || { echo "nginx is needed (apt-get install nginx-light)" >&2; exit 2; }
if ! command -v garage >/dev/null; then
    say "garage is missing: cargo install garage --version 2.5.0 --locked (a long build, ~16 min)"
    cargo install garage --version 2.5.0 --locked
fi

# ---- upstream: nginx over a directory of distfiles, logging every GET
say "upstream (nginx) in $work/upstream"
mkdir -p "$work/upstream/files" "$work/upstream/tmp"
for n in 1 2 3 4; do
    head -c $((n * 3 * 1024 * 1024)) /dev/urandom > "$work/upstream/files/dist-$n.tar.gz"
done
upstream_port=${UPSTREAM_PORT:-18080}
cat > "$work/upstream/nginx.conf" <<CONF
daemon off;
pid $work/upstream/nginx.pid;
error_log $work/upstream/error.log;
events {}
http {
    access_log $work/upstream/access.log;
    client_body_temp_path $work/upstream/tmp;
    proxy_temp_path $work/upstream/tmp;
    fastcgi_temp_path $work/upstream/tmp;
    uwsgi_temp_path $work/upstream/tmp;
    scgi_temp_path $work/upstream/tmp;
    server {
        listen 127.0.0.1:$upstream_port;
        root $work/upstream/files;
    }
}
CONF
nginx -c "$work/upstream/nginx.conf" -p "$work/upstream" &
pids+=($!)

# ---- a three-node Garage cluster on this machine (scripts/garage.sh)
say "garage: three nodes"
source "$root/scripts/garage.sh"
secret=$(garage_secret)
for n in 1 2 3; do
    garage_node "$work/garage$n" "$n" 3 "$secret"
    pids+=("$GARAGE_PID")
done
garage_cluster distfiles chitd-fleet "$work"/garage{1,2,3}

# ---- three chitd hosts, each talking to another Garage node
for h in 1 2 3; do
    dir=$work/host$h
    mkdir -p "$dir"
    cat > "$dir/chitd.toml" <<CONF
cache = "cache"
mirrors = ["http://127.0.0.1:$upstream_port"]

[[consumer]]
name = "builder"
spool = "spool"
deliver = "distfiles"

[remote]
endpoint = "$(garage_s3_url "$h")"
bucket = "distfiles"
prefix = "chitd/"
region = "$GARAGE_REGION"
CONF
    (cd "$dir" && exec "$chitd" run --config chitd.toml > chitd.log 2>&1) &
    pids+=($!)
done
for _ in $(seq 50); do [[ -d $work/host3/spool/request ]] && break; sleep 0.2; done

# Waits for its own requests only: a bare `wait` would wait for the
# servers and daemons started above too, forever.
request_all() {
    local h=$1 requests=()
    for f in "$work"/upstream/files/*; do
        local name; name=$(basename "$f")
        "$chitd" request --spool "$work/host$h/spool" --wait --timeout 300 \
            "$(sha256sum "$f" | cut -c1-64)" "$(stat -c %s "$f")" "$name" &
        requests+=($!)
    done
    wait "${requests[@]}"
}

say "host 1 asks for every distfile"
request_all 1
say "waiting for host 1's uploads to reach the bucket (its upload records go)"
for _ in $(seq 300); do
    compgen -G "$work/host1/cache/upload-v1/*.json" >/dev/null || break
    sleep 0.2
done
say "hosts 2 and 3 ask for the same files at once"
request_all 2 & second=$!
request_all 3 & third=$!
wait "$second" "$third"

say "upstream GETs per distfile (each must be 1)"
status=0
for f in "$work"/upstream/files/*; do
    name=$(basename "$f")
    count=$(grep -c "GET /$name " "$work/upstream/access.log" || true)
    printf '%-16s %s\n' "$name" "$count"
    [[ $count == 1 ]] || status=1
done
for h in 1 2 3; do
    for f in "$work"/upstream/files/*; do
        cmp -s "$f" "$work/host$h/distfiles/$(basename "$f")" || { echo "host $h: $(basename "$f") differs"; status=1; }
    done
done
(( status == 0 )) && say "ok: every distfile crossed the upstream link once for three hosts" \
    || say "FAILED (logs in $work)"
exit "$status"
