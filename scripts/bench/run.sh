#!/usr/bin/env bash
# run.sh — run the chitd benchmarks: all of them, or the ones named.
#
#   scripts/bench/run.sh                      hash big big-hit small hits resume memory
#   scripts/bench/run.sh big small            just these
#   BIG_SIZE=64M RUNS=1 scripts/bench/run.sh  a quick smoke run
#   scripts/bench/run.sh cache-import         also named: cache-import (needs
#                                             root: it loop-mounts ext4 images)
#
# Builds chitd once (cargo build --release) and passes CHITD_BUILT=1 on. Every
# benchmark prints a plain table and a markdown table for BENCHMARKS.md; the
# environment knobs are at the top of each script and of lib.sh. Goes on after
# a failing benchmark and exits 1 at the end if any failed. Work dirs go to
# $BENCH_DIR/trash, emptied at the end (see settle_deletes in lib.sh).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
all=(hash big big-hit small hits resume memory)

usage() {
    echo "usage: $0 [${all[*]}]..." >&2
    exit 2
}

names=("$@")
((${#names[@]})) || names=("${all[@]}")
for name in "${names[@]}"; do
    case $name in
    cache-hits | cache-import) ;;
    hash | big | big-hit | small | hits | resume | memory) ;;
    *) usage ;;
    esac
done

if [[ -z ${NO_CHITD:-} && -z ${CHITD:-} && ${CHITD_BUILT:-} != 1 ]]; then
    echo "== cargo build --release" >&2
    (cd "$here/../.." && cargo build --release --locked --bin chitd) >&2
    if [[ -f $here/../../examples/hashbench.rs ]]; then
        (cd "$here/../.." && cargo build --release --locked --example hashbench) >&2
    fi
    export CHITD_BUILT=1
fi

failed=()
for name in "${names[@]}"; do
    echo "== $name ($(date -u +%H:%M:%S))" >&2
    start=$SECONDS
    if ! "$here/$name.sh"; then
        failed+=("$name")
    fi
    echo "== $name took $((SECONDS - start)) s" >&2
done
# Deleting the benchmarks' many small files waits until none is timed (see
# settle_deletes in lib.sh).
source "$here/lib.sh"
empty_trash
if ((${#failed[@]})); then
    echo "failed: ${failed[*]}" >&2
    exit 1
fi
