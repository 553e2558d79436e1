#!/usr/bin/env bash
# A volume read cold: an ext4 image of real files (bench/ext4_image.sh) written into a volume
# through NBD, then read back whole with `nbdcopy … null:` by a new server process (nothing
# cached), on the embedded store and on S3 (a SeaweedFS of the bench's own on loopback, S3_PORT),
# in ROUNDS interleaved pairs, each volume in a fresh store. Prints the medians, the ratio
# S3 / embedded, the S3 requests of the cold read (the server's /metrics), and where the CPU
# went during each read: the server's, SeaweedFS's, and the bytes SeaweedFS read (its
# /proc/PID/stat and /proc/PID/io), all on the same cores.
#
#   bash bench/s3_volume_read.sh             (ROUNDS=5; SCRATCH=DIR to work elsewhere)
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
scratch=${SCRATCH:-$top/target/bench/s3-volume-read}
corpus=${CORPUS:-$top/../shared/corpus/silesia}
s3_port=${S3_PORT:-24333}
rounds=${ROUNDS:-5}
cd "$top"
source "$top/bench/serve_helpers.sh"
source "$top/bench/ext4_image.sh"

for tool in nbdcopy mke2fs; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: run scripts/deps.sh" >&2; exit 1; }
done
[[ -n ${BIN:-} ]] || cargo build --release --quiet -p aetherflow
bin=${BIN:-$top/target/release/aetherflow}
mkdir -p "$scratch"
weed_dir=$scratch/weed
serve_pid=
cleanup() {
  serve_stop "$serve_pid"
  weed_stop "$weed_dir"
}
weed_stop "$weed_dir"
trap cleanup EXIT
trap 'exit 130' INT TERM
weed_start "$weed_dir" "$s3_port" aetherflow-volume-read

now() { date +%s.%N; }
seconds() { python3 -c "print(f'{$2 - $1:.3f}')"; }
median() { python3 -c "import statistics, sys; print(f'{statistics.median(map(float, sys.argv[1:])):.3f}')" "$@"; }
# cpu PID: user + system CPU seconds of a process so far; read_mb PID: bytes it has read (MB).
cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f\n", ($14 + $15) / hz }' "/proc/$1/stat"; }
read_mb() { awk '/^rchar/ { printf "%.0f\n", $2 / 1e6 }' "/proc/$1/io"; }
delta() { python3 -c "print(f'{$2 - $1:.2f}'.rstrip('0').rstrip('.'))"; }
# requests: "G GET, P PUT, L LIST" so far, from the server's /metrics.
requests() { store_requests | awk '{ printf "%d GET, %d PUT, %d LIST\n", $1, $2, $3 }'; }

start_server() { # STORE_ARGS...
  nbd_port=$(free_port)
  serve_start "$scratch/serve.log" --cache-size 1GiB --nbd "127.0.0.1:$nbd_port" "$@"
  nbd=nbd://127.0.0.1:$nbd_port
}
stop_server() { serve_stop "$serve_pid"; serve_pid=; }

image=$(ext4_image "$scratch" "$corpus")
image_alloc=$(( $(stat -c %b "$image") * 512 ))
run=run-$(date -u +%Y%m%dT%H%M%S)
local_all=() s3_all=() s3_requests=
local_cpu=() s3_cpu=() weed_cpu=() weed_read=()
weed_pid=$(cat "$weed_dir/weed.pid")
for round in $(seq "$rounds"); do
  for kind in local s3; do
    if [[ $kind == local ]]; then
      rm -rf "$scratch/store"
      store=(--data-dir "$scratch/store")
    else
      store=(--gc-grace 15m --store "s3://$AF_S3_BUCKET/$run/$round?endpoint=$AF_S3_ENDPOINT")
    fi
    start_server "${store[@]}"
    create v 64GiB
    nbdcopy --flush "$image" "$nbd/v"
    stop_server
    start_server "${store[@]}"
    before=$(requests)
    c0=$(cpu "$serve_pid") w0=$(cpu "$weed_pid") r0=$(read_mb "$weed_pid")
    t0=$(now); nbdcopy "$nbd/v" null:; t1=$(now)
    c1=$(cpu "$serve_pid") w1=$(cpu "$weed_pid") r1=$(read_mb "$weed_pid")
    if [[ $kind == local ]]; then
      local_all+=("$(seconds "$t0" "$t1")")
      local_cpu+=("$(delta "$c0" "$c1")")
    else
      s3_all+=("$(seconds "$t0" "$t1")")
      s3_requests="$before at the start, $(requests) at the end"
      s3_cpu+=("$(delta "$c0" "$c1")") weed_cpu+=("$(delta "$w0" "$w1")")
      weed_read+=("$((r1 - r0))")
    fi
    stop_server
  done
done
rm -rf "$scratch/store"
local_s=$(median "${local_all[@]}")
s3_s=$(median "${s3_all[@]}")

echo "# Cold volume read, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, SeaweedFS $(weed version 2>/dev/null | awk '{ print $3 }')"
echo
echo "Image: $image_alloc bytes allocated; median of $rounds interleaved pairs (embedded: ${local_all[*]}; S3: ${s3_all[*]})"
echo
echo "| nbdcopy of the volume to null:, new server | seconds | MB/s |"
echo "|---|---:|---:|"
echo "| embedded store | $local_s | $(python3 -c "print(f'{$image_alloc / $local_s / 1e6:.0f}')") |"
echo "| S3 (SeaweedFS, loopback) | $s3_s | $(python3 -c "print(f'{$image_alloc / $s3_s / 1e6:.0f}')") |"
echo
echo "S3 / embedded: $(python3 -c "print(f'{$s3_s / $local_s:.2f}')")x. Requests of the last S3 read: $s3_requests."
echo
echo "CPU seconds of each read: the server on the embedded store ${local_cpu[*]}; on S3 ${s3_cpu[*]},"
echo "SeaweedFS ${weed_cpu[*]} (reading ${weed_read[*]} MB from its files and its own connections)."
