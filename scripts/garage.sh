# shellcheck shell=bash
# garage.sh — Garage (an S3-compatible distributed store) on this machine,
# for scripts/fleet-demo.sh and scripts/bench/remote.sh. Source it; do not
# run it. Needs garage 2.5.0 on PATH (`cargo install garage --version
# 2.5.0 --locked`: a long build, about 16 minutes on two cores).
#
#   garage_node DIR N NODES SECRET   write DIR/garage.toml for node N of a
#                                    NODES-node cluster (replication NODES),
#                                    ports B+10N (S3), B+1+10N (RPC),
#                                    B+3+10N (admin), B=GARAGE_PORT_BASE
#                                    (default 3900); start it in the
#                                    background, its pid in GARAGE_PID
#   garage_s3_url N                  the S3 endpoint of node N
#   garage_cluster BUCKET KEY DIR... connect the nodes in DIR... (the first
#                                    is asked), give each 1G in zone dc1,
#                                    apply the layout, create BUCKET and the
#                                    key KEY with read, write and owner on it;
#                                    export AWS_ACCESS_KEY_ID and
#                                    AWS_SECRET_ACCESS_KEY of the key
#
# GARAGE_COMPRESSION: the nodes' compression_level, "none" or a zstd level;
# unset: Garage's default (zstd level 1). Keep the default even for
# incompressible distfiles: a block stored as a zstd frame is checked on
# read by zstd's own checksum, one stored plain by its BLAKE2 hash, which
# (perf, Garage 2.5.0) costs about 1.5 CPU-s per GiB served, most of
# Garage's CPU for a read.
#
# The region is GARAGE_REGION ("garage"); requests are path-style.

GARAGE_REGION=garage
: "${GARAGE_PORT_BASE:=3900}"

# garage_secret: a fresh RPC secret (64 hex digits).
garage_secret() { head -c 32 /dev/urandom | sha256sum | cut -c1-64; }

garage_s3_url() { printf 'http://127.0.0.1:%d' $((GARAGE_PORT_BASE + 10 * $1)); }

garage_node() {
    local dir=$1 n=$2 nodes=$3 secret=$4 port=$((GARAGE_PORT_BASE + 10 * $2)) compression=
    case ${GARAGE_COMPRESSION:-} in
    '') ;;
    none) compression='compression_level = "none"' ;;
    *[!0-9-]*) echo "GARAGE_COMPRESSION=$GARAGE_COMPRESSION: give none or a zstd level" >&2; return 2 ;;
    *) compression="compression_level = $GARAGE_COMPRESSION" ;;
    esac
    mkdir -p "$dir"
    cat >"$dir/garage.toml" <<CONF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
$compression
replication_factor = $nodes
rpc_bind_addr = "127.0.0.1:$((port + 1))"
rpc_public_addr = "127.0.0.1:$((port + 1))"
rpc_secret = "$secret"

[s3_api]
s3_region = "$GARAGE_REGION"
api_bind_addr = "127.0.0.1:$port"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$((port + 3))"
CONF
    garage -c "$dir/garage.toml" server >"$dir/server.log" 2>&1 &
    GARAGE_PID=$!
}

garage_cluster() {
    local bucket=$1 key_name=$2
    shift 2
    local first=$1/garage.toml dir id key i
    for ((i = 0; i < 100; i++)); do
        garage -c "$first" status >/dev/null 2>&1 && break
        sleep 0.1
    done
    garage -c "$first" status >/dev/null || {
        echo "garage at $1 does not answer (see $1/server.log)" >&2
        return 1
    }
    for dir in "${@:2}"; do
        id=$(garage -c "$dir/garage.toml" node id -q)
        garage -c "$first" node connect "$id" >/dev/null
    done
    for dir in "$@"; do
        id=$(garage -c "$dir/garage.toml" node id -q | cut -d@ -f1)
        garage -c "$first" layout assign -z dc1 -c 1G "$id" >/dev/null
    done
    garage -c "$first" layout apply --version 1 >/dev/null
    garage -c "$first" bucket create "$bucket" >/dev/null
    key=$(garage -c "$first" key create "$key_name")
    AWS_ACCESS_KEY_ID=$(awk '/Key ID:/ {print $3}' <<<"$key")
    AWS_SECRET_ACCESS_KEY=$(awk '/Secret key:/ {print $3}' <<<"$key")
    export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
    garage -c "$first" bucket allow --read --write --owner "$bucket" --key "$key_name" >/dev/null
}
