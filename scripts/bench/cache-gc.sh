#!/usr/bin/env bash
# cache-gc.sh — `chitd cache gc --max-size` over a cache of many small
# objects: wall time and peak RSS (/usr/bin/time -v).
#
#   GC_COUNT=100000   objects in the cache
#   GC_SIZE=1K        size of each (IEC suffixes)
#   RUNS=3            measurements, each on a cache of its own
#   BENCH_DIR, CHITD, CHITD_BUILT, KEEP, NO_INSTALL: see lib.sh
#
# Each measurement gets a fresh ext4 image, loop-mounted (as root), so that
# no run inherits another's deleted inodes (see settle_deletes in lib.sh)
# or page cache: the objects are faked directly in sha256-v1/ab/<sha256>
# (correct names, no download), mode 0444, their mtimes (last uses) one
# second apart; the image is then unmounted and mounted again, so the gc
# walks a cold cache. gc removes the least recently used half
# (--max-size = half the bytes), with no consumer to read (--cache).
# Targets (issue 16): under 5 s, peak RSS at most 128 MiB.
set -euo pipefail
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"
# Each run makes and mounts an image of its own below (sized for its
# objects): no fresh disk from next_run_dir as well.
FRESH_DISK=0

: "${GC_COUNT:=100000}"
: "${GC_SIZE:=1K}"
: "${RUNS:=3}"

bench_init cache-gc
[[ $(id -u) -eq 0 ]] || die "cache-gc.sh loop-mounts an ext4 image per run: run it as root"
need_tools /usr/bin/time:time mkfs.ext4:e2fsprogs
build_chitd
[[ -n $CHITD ]] || die "NO_CHITD: there is nothing to measure without chitd"

size=$(size_bytes "$GC_SIZE")
half=$((GC_COUNT * size / 2))
mounted=
unmount() {
    if [[ -n $mounted ]]; then
        umount "$mounted" || true
        mounted=
    fi
}
on_exit unmount

# fake_cache DIR: GC_COUNT objects of `size` bytes under DIR/sha256-v1.
fake_cache() {
    python3 - "$1" "$GC_COUNT" "$size" <<'EOF'
import hashlib, os, sys, time
cache, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
objects = os.path.join(cache, "sha256-v1")
for byte in range(256):
    os.makedirs(os.path.join(objects, f"{byte:02x}"), exist_ok=True)
now = time.time()
for i in range(count):
    body = (i.to_bytes(8, "little") * (size // 8 + 1))[:size]
    name = hashlib.sha256(body).hexdigest()
    path = os.path.join(objects, name[:2], name)
    with open(path, "wb") as f:
        f.write(body)
    os.chmod(path, 0o444)
    last_use = now - 10 * 86400 + i
    os.utime(path, (last_use, last_use))
EOF
}

rows=()
for ((run = 1; run <= RUNS; run++)); do
    next_run_dir
    image=$out/cache.img
    mnt=$out/mnt
    mkdir -p "$mnt"
    # Room for the objects (a 4 KiB block and an inode each) and more.
    truncate -s $((GC_COUNT * (size + 8192) + (256 << 20))) "$image"
    mkfs.ext4 -q -F -N $((GC_COUNT * 2)) "$image"
    mount -o loop "$image" "$mnt"
    mounted=$mnt
    log "run $run/$RUNS: faking $GC_COUNT objects of $size bytes"
    fake_cache "$mnt/cache"
    unmount
    mount -o loop "$image" "$mnt"
    mounted=$mnt
    /usr/bin/time -v -o "$out/time.txt" "$CHITD" cache gc --cache "$mnt/cache" \
        --max-size "$half" </dev/null >"$out/gc.out" 2>"$out/gc.err" || {
        cat "$out/gc.err" >&2
        die "chitd cache gc failed"
    }
    removed=$(grep -c '^removed [0-9a-f]\{64\} ' "$out/gc.out" || true)
    left=$(find "$mnt/cache/sha256-v1" -type f | wc -l)
    [[ $removed -eq $((GC_COUNT - left)) ]] || die "printed $removed removals, but $left objects are left"
    [[ $((left * size)) -le $half ]] || die "$left objects of $size bytes are left: over $half bytes"
    rss=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$out/time.txt")
    elapsed=$(awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, p, ":"); s = 0
        for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s }' "$out/time.txt")
    log "run $run/$RUNS: removed $removed of $GC_COUNT in $elapsed s, peak RSS $((rss / 1024)) MiB"
    rows+=("| $run | $GC_COUNT | $removed | $elapsed | $((rss / 1024)) |")
    unmount
    rm -f "$image"
done

echo
echo "### cache-gc: \`chitd cache gc --max-size\` to half of $GC_COUNT objects of $(human_bytes "$size")"
echo
echo "| run | objects | removed | wall s | peak RSS MiB |"
echo "|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
echo "$(machine_note); a fresh loop-mounted ext4 image per run, mounted again before gc (cold)."
