#!/usr/bin/env bash
# shellcheck disable=SC2016 # measure() evals its command strings
# cache-import.sh — `chitd cache import` of a distfiles tree, and `chitd
# cache verify` of the cache it makes, against hashing the same files with
# `sha256sum` and `openssl dgst` on two processes (issue 16's targets).
#
#   IMPORT_COUNT=10000     files in the tree
#   IMPORT_TOTAL=2G        their total size (IEC suffixes): each file is
#                          IMPORT_TOTAL / IMPORT_COUNT bytes
#   RUNS=5                 timed runs per command
#   BENCH_DIR, CHITD, CHITD_BUILT, KEEP, NO_INSTALL: see lib.sh
#
# Needs root: every chitd import (and the `cp -r` floor) writes into a fresh
# ext4 image, made and loop-mounted per run (untimed), so no run meets the
# previous one's deleted inodes or dirty pages (see settle_deletes in
# lib.sh). The image file lives in $WORK, on BENCH_DIR's disk; the loop
# device passes flushes on to it, so durability costs what it costs there.
#
# The source tree (random files, made once in $BENCH_DIR/data) is read from
# the page cache by every command. Peers:
#   find -type f -print0 | xargs -0 -P2 sha256sum       (the issue's baseline)
#   find -type f -print0 | xargs -0 -P2 openssl dgst -sha256
#   cp -r SRC IMAGE && sync IMAGE                        (writing the bytes
#                                                         durably, no hash)
# chitd import does both (hash and durable copy); it must beat sha256sum by
# 2x and match openssl. Verify re-hashes the cache made by the last import
# (page-cached) against `xargs -0 -P2 openssl dgst` over the same objects.
# Peak RSS of one import and one verify from /usr/bin/time -v.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

: "${IMPORT_COUNT:=10000}"
: "${IMPORT_TOTAL:=2G}"

bench_init cache-import
[[ $(id -u) -eq 0 ]] || die "needs root (loop-mounts a fresh ext4 image per run)"
need_tools openssl:openssl sha256sum:coreutils mkfs.ext4:e2fsprogs losetup:mount /usr/bin/time:time
build_chitd
have_chitd || die "chitd is the point of this benchmark (NO_CHITD is set)"

total=$(size_bytes "$IMPORT_TOTAL")
size=$((total / IMPORT_COUNT))
files=$DATA/import-$IMPORT_COUNT-$size
log "making $IMPORT_COUNT files of $size bytes in $files (cached)"
python3 "$BENCHTOOL" gen-files "$files" "$IMPORT_COUNT" "$size" --prefix i
# Every regular file of the tree is imported and hashed (manifest.tsv too).
count=$(find "$files" -type f | wc -l)
bytes=$(find "$files" -type f -printf '%s\n' | awk '{ s += $1 } END { printf "%d\n", s }')
find "$files" -type f -print0 | xargs -0 cat >/dev/null # into the page cache
# Newly made data is still being written back: no run should share the
# disk with that.
sync -f "$files"

image=$WORK/image.ext4
mnt=$WORK/mnt
mkdir -p "$mnt"
# fresh_image: a new, empty ext4 file system mounted at $mnt (the old one
# unmounted, its image deleted: a new file each time).
fresh_image() {
    unmount_image
    rm -f "$image"
    truncate -s $((bytes * 2 + (512 << 20))) "$image"
    mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$image"
    mount -o loop "$image" "$mnt"
}
unmount_image() {
    if mountpoint -q "$mnt"; then
        umount "$mnt"
    fi
}
on_exit unmount_image

# imported_ok: one object per distinct file, and a file's digest checked.
imported_ok() {
    local n sha name
    n=$(find "$mnt/cache/sha256-v1" -type f ! -name '.*' | wc -l)
    [[ $n -eq $count ]] || {
        log "$n objects in the cache, expected $count"
        return 1
    }
    read -r sha _ name < <(sed -n '2p' "$files/manifest.tsv")
    file_ok "$mnt/cache/sha256-v1/${sha:0:2}/$sha" "$sha"
}

cd "$files"
measure "chitd cache import" fresh_image \
    '"$CHITD" cache import --cache "$mnt/cache" . >"$WORK/import.out"' imported_ok
measure "cp -r + sync" fresh_image 'cp -r . "$mnt/copy" && sync "$mnt/copy"' true
measure "xargs -P2 openssl dgst" true \
    'find . -type f -print0 | xargs -0 -P2 openssl dgst -sha256 -r >/dev/null'
measure "xargs -P2 sha256sum" true \
    'find . -type f -print0 | xargs -0 -P2 sha256sum >/dev/null'
cat "$WORK/import.out" >&2
report "import: $count files, $(human_bytes "$bytes"), into a fresh cache" \
    --bytes "$bytes" --count "$count" \
    --baseline "xargs -P2 sha256sum" --baseline "xargs -P2 openssl dgst" \
    --note "$(machine_note)."

# ---------------------------------------------------------------- verify
RESULTS=$WORK/results-verify.tsv
: >"$RESULTS"
fresh_image
"$CHITD" cache import --cache "$mnt/cache" . >/dev/null
cd "$mnt/cache/sha256-v1"
find . -type f -print0 | xargs -0 cat >/dev/null
measure "chitd cache verify" true '"$CHITD" cache verify --cache "$mnt/cache" >/dev/null'
measure "xargs -P2 openssl dgst" true \
    'find . -type f -print0 | xargs -0 -P2 openssl dgst -sha256 -r >/dev/null'
report "verify: $count objects, $(human_bytes "$bytes"), page-cached" \
    --bytes "$bytes" --count "$count" --baseline "xargs -P2 openssl dgst" \
    --note "$(machine_note)."

# ---------------------------------------------------------------- memory
cd "$files"
rss() {
    /usr/bin/time -v -o "$WORK/time.txt" "$@" >/dev/null
    awk -F': ' '/Maximum resident set size/ { printf "%.1f MiB\n", $2 / 1024 }' "$WORK/time.txt"
}
fresh_image
echo "peak RSS: chitd cache import $(rss "$CHITD" cache import --cache "$mnt/cache" .)"
echo "peak RSS: chitd cache verify $(rss "$CHITD" cache verify --cache "$mnt/cache")"
cd /
unmount_image
