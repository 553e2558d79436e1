#!/usr/bin/env bash
# 4 KiB random writes over NBD against `nbdkit file`, the weak spot of volumes (README,
# "Volumes over NBD"): fio's nbd engine at queue depth 16, half-compressible data, on a 512 MiB
# volume first written whole with 1 MiB writes (as bench/nbd.sh does). ROUNDS interleaved pairs
# (default 3) of FIO_SECONDS each (default 20); prints each pair, the medians and their ratio,
# and the store's size on disk after each aetherflow round (dead chunks not yet compacted
# included), against the 512 MiB the volume holds.
#
#   bash bench/nbd_randwrite.sh          (SCRATCH=DIR to work elsewhere than target/bench/nbd-rw;
#                                         BIN=PATH to measure another build of aetherflow)
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
scratch=${SCRATCH:-$top/target/bench/nbd-rw}
bin=${BIN:-$top/target/release/aetherflow}
runtime=${FIO_SECONDS:-20}
rounds=${ROUNDS:-3}
cd "$top"
source "$top/bench/serve_helpers.sh"

for tool in nbdkit fio nbdinfo; do
  command -v "$tool" >/dev/null || { echo "needs $tool (bash scripts/deps.sh installs it)" >&2; exit 1; }
done
[[ -n ${BIN:-} ]] || cargo build --release --quiet -p aetherflow
rm -rf "$scratch"
mkdir -p "$scratch"
serve_pid=
kit_pid=
cleanup() {
  serve_stop "$serve_pid"
  [[ -n $kit_pid ]] && kill "$kit_pid" 2>/dev/null || true
}
trap cleanup EXIT
# 4 KiB random writes of half-compressible data for FIO_SECONDS; prints their IOPS. Each round
# draws new offsets and data (--randrepeat=0): fio's default seeds would repeat the round before,
# writing back what the volume already holds, which deduplicates and flatters every round but
# the first.
randwrite_iops() {
  fio_nbd "$1" randwrite 4k 512m --time_based --runtime="$runtime" --randrepeat=0 \
    --buffer_compress_percentage=50 --refill_buffers | cut -d' ' -f1
}
fill() { fio_nbd "$1" write 1m 512m --buffer_compress_percentage=50 --refill_buffers > /dev/null; }

nbd_port=$(free_port)
serve_start "$scratch/serve.log" --data-dir "$scratch/store" --cache-size 1GiB \
  --nbd "127.0.0.1:$nbd_port"
create rw 512MiB
af=nbd://127.0.0.1:$nbd_port/rw
fill "$af"

truncate -s 512M "$scratch/kit.raw"
nbdkit_start file "$scratch/kit.raw"
fill "$kit"

echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, nbdkit $(nbdkit --version | cut -d' ' -f2), fio $(fio --version), $rounds rounds of $runtime s"
echo "| round | aetherflow IOPS | nbdkit file IOPS | store on disk after the round |"
echo "|---:|---:|---:|---:|"
af_all=()
kit_all=()
for r in $(seq "$rounds"); do
  a=$(randwrite_iops "$af")
  on_disk=$(du -sb "$scratch/store" | cut -f1)
  k=$(randwrite_iops "$kit")
  af_all+=("$a")
  kit_all+=("$k")
  echo "| $r | $a | $k | $on_disk |"
done
python3 - "${af_all[*]}" "${kit_all[*]}" <<'EOF'
import statistics, sys
a = statistics.median(int(x) for x in sys.argv[1].split())
k = statistics.median(int(x) for x in sys.argv[2].split())
print(f"median: aetherflow {a:.0f} IOPS, nbdkit file {k:.0f} IOPS, ratio {a / k:.2f}")
EOF
