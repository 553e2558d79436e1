#!/usr/bin/env bash
# The measurement behind the volumes' chunk size (docs/design.md, "Volumes"): for each size,
# a fresh store takes the same ext4 image of real files through NBD (nbdcopy), then fio
# (nbd engine, queue depth 16) writes and reads 4 KiB at random over a 512 MiB volume.
# Printed: what the store grew by, the copy's speed, and the random IOPS.
#
#   bash bench/volume_chunks.sh [SIZES...]      (default 16KiB 32KiB 64KiB 128KiB)
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
scratch=${SCRATCH:-$top/target/bench/nbd}
corpus=${CORPUS:-$top/../shared/corpus/silesia}
bin=$top/target/release/aetherflow
runtime=${FIO_SECONDS:-15}
cd "$top"
source "$top/bench/serve_helpers.sh"
source "$top/bench/ext4_image.sh"
cargo build --release --quiet -p aetherflow
mkdir -p "$scratch"
image=$(ext4_image "$scratch" "$corpus")
alloc=$(( $(stat -c %b "$image") * 512 ))
serve_pid=
trap 'serve_stop "$serve_pid"' EXIT

iops() {
  fio_nbd "$1" "$2" 4k 512m --time_based --runtime="$runtime" --buffer_compress_percentage=50 \
    --refill_buffers | cut -d' ' -f1
}

echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores; image $(stat -c %s "$image") bytes, $alloc allocated"
echo
echo "| chunk | store growth for the image | nbdcopy in | 4 KiB random writes | 4 KiB random reads |"
echo "|---|---:|---:|---:|---:|"
for size in "${@:-16KiB 32KiB 64KiB 128KiB}"; do
  for cs in $size; do
    rm -rf "$scratch/chunks-store"
    port=$(free_port)
    serve_start "$scratch/chunks.log" --data-dir "$scratch/chunks-store" --volume-chunk-size "$cs" \
      --cache-size 1GiB --nbd "127.0.0.1:$port"
    nbd=nbd://127.0.0.1:$port
    create img 64GiB
    create rnd 512MiB
    before=$(physical)
    t0=$(date +%s.%N)
    nbdcopy --flush "$image" "$nbd/img"
    t1=$(date +%s.%N)
    grown=$(( $(physical) - before ))
    fio --name=fill --ioengine=nbd --uri="$nbd/rnd" --rw=write --bs=1m --size=512m --iodepth=16 \
      --buffer_compress_percentage=50 --refill_buffers > /dev/null 2>&1
    writes=$(iops "$nbd/rnd" randwrite)
    reads=$(iops "$nbd/rnd" randread)
    mbs=$(python3 -c "print(f'{$alloc / ($t1 - $t0) / 1e6:.0f}')")
    echo "| $cs | $grown | $mbs MB/s | $writes IOPS | $reads IOPS |"
    serve_stop "$serve_pid"
    serve_pid=
  done
done
