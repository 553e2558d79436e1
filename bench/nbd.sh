#!/usr/bin/env bash
# Volumes over NBD against the reference tools, every figure of one run (docs: README "Volumes
# over NBD"):
#   space  an ext4 image of real files (Silesia, /usr/include, /usr/bin) written through NBD,
#          against `qemu-img convert -c -O qcow2 -o compression_type=zstd` of the same image; a
#          second copy in another volume; an empty 100 TiB volume
#   speed  nbdcopy of the image in and out against `aetherflow compress` / `decompress` of it;
#          fio (nbd engine, queue depth 16) against `nbdkit file`: 4 KiB random reads of a
#          working set the cache holds, 4 KiB random writes, 1 MiB sequential writes of
#          half-compressible data
#   maps   `nbdinfo --map` and `qemu-img map` of an empty 100 TiB volume against nbdkit's
#          memory plugin of the same size
#   memory the server's peak resident memory over the run
#
#   bash bench/nbd.sh            (SCRATCH=DIR to work elsewhere than target/bench/nbd;
#                                 SEQ_ROUNDS=N interleaved pairs of the sequential figures,
#                                 default 3, medians in the table)
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
scratch=${SCRATCH:-$top/target/bench/nbd}
corpus=${CORPUS:-$top/../shared/corpus/silesia}
bin=$top/target/release/aetherflow
runtime=${FIO_SECONDS:-20}
seq_rounds=${SEQ_ROUNDS:-7}
store_dir=$scratch/store
cache=1GiB
cd "$top"
source "$top/bench/serve_helpers.sh"

for tool in qemu-img nbdcopy nbdinfo nbdkit fio mke2fs; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: run scripts/deps.sh" >&2; exit 1; }
done
cargo build --release --quiet -p aetherflow
mkdir -p "$scratch"
rm -rf "$scratch/store"
serve_pid=
kit_pid=
cleanup() {
  serve_stop "$serve_pid"
  [[ -z $kit_pid ]] || { kill "$kit_pid" 2>/dev/null || true; wait "$kit_pid" 2>/dev/null || true; }
}
trap cleanup EXIT

now() { date +%s.%N; }
seconds() { python3 -c "print(f'{$2 - $1:.3f}')"; }
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
median() { python3 -c "import statistics, sys; print(f'{statistics.median(map(float, sys.argv[1:])):.3f}')" "$@"; }
mb_s() { python3 -c "print(f'{$1 / ($2) / 1e6:.0f}')"; }
volume_field() { api "/api/volumes/$1" | python3 -c "import json,sys; v=json.load(sys.stdin)['volume']; print(v$2)"; }

start_server() {
  nbd_port=$(free_port)
  serve_start "$scratch/serve.log" --data-dir "$store_dir" --cache-size "$cache" \
    --nbd "127.0.0.1:$nbd_port" "$@"
  nbd=nbd://127.0.0.1:$nbd_port
}
peak_rss_kib=0
note_rss() {
  local hwm
  hwm=$(awk '$1 == "VmHWM:" { print $2 }' "/proc/$serve_pid/status")
  (( hwm > peak_rss_kib )) && peak_rss_kib=$hwm
  return 0
}
stop_server() { note_rss; serve_stop "$serve_pid"; serve_pid=; }


echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(qemu-img --version | head -n 1), nbdkit $(nbdkit --version | cut -d' ' -f2), fio $(fio --version)"

# ---- the image: real files in a real filesystem ----
source "$top/bench/ext4_image.sh"
image=$(ext4_image "$scratch" "$corpus")
tree=$scratch/tree
content=$(du -sb "$tree" | cut -f1)
files=$(find "$tree" -type f | wc -l)
image_size=$(stat -c %s "$image")
image_alloc=$(( $(stat -c %b "$image") * 512 ))
echo
echo "Image: $files files, $content bytes of content, in an ext4 image of $image_size bytes ($image_alloc allocated)"

# ---- space ----
qemu-img convert -c -f raw -O qcow2 -o compression_type=zstd "$image" "$scratch/disk.qcow2"
qcow2=$(stat -c %s "$scratch/disk.qcow2")
"$bin" compress "$image" "$scratch/disk.af" > /dev/null
t0=$(now); "$bin" compress "$image" "$scratch/disk.af" > /dev/null; t1=$(now)
compress_s=$(seconds "$t0" "$t1")
t0=$(now); "$bin" decompress "$scratch/disk.af" - > /dev/null; t1=$(now)
decompress_s=$(seconds "$t0" "$t1")

start_server
base=$(physical)
create empty 100TiB
empty=$(( $(physical) - base ))
create v1 64GiB
create v2 64GiB
before=$(physical)
t0=$(now); nbdcopy --flush "$image" "$nbd/v1"; t1=$(now)
write_s=$(seconds "$t0" "$t1")
first=$(( $(physical) - before ))
qemu-img compare -q -f raw -F raw "$image" "$nbd/v1" || { echo "v1 differs from the image" >&2; exit 1; }
before=$(physical)
nbdcopy --flush "$image" "$nbd/v2"
second=$(( $(physical) - before ))
note_rss
stop_server

# Uncached: a new server process reads the image back.
start_server
t0=$(now); nbdcopy "$nbd/v1" null:; t1=$(now)
read_s=$(seconds "$t0" "$t1")
stop_server

# More interleaved pairs of the sequential figures (the times move between runs more than the
# other figures do). Each round's volume lives in a fresh store, as a second copy of the image
# in the same store would only deduplicate; the table gives the medians.
compress_all=("$compress_s") decompress_all=("$decompress_s") write_all=("$write_s") read_all=("$read_s")
for _ in $(seq 2 "$seq_rounds"); do
  t0=$(now); "$bin" compress "$image" "$scratch/disk.af" > /dev/null; t1=$(now)
  compress_all+=("$(seconds "$t0" "$t1")")
  t0=$(now); "$bin" decompress "$scratch/disk.af" - > /dev/null; t1=$(now)
  decompress_all+=("$(seconds "$t0" "$t1")")
  store_dir=$scratch/store-round
  rm -rf "$store_dir"
  start_server
  create v 64GiB
  t0=$(now); nbdcopy --flush "$image" "$nbd/v"; t1=$(now)
  write_all+=("$(seconds "$t0" "$t1")")
  stop_server
  start_server
  t0=$(now); nbdcopy "$nbd/v" null:; t1=$(now)
  read_all+=("$(seconds "$t0" "$t1")")
  stop_server
done
rm -rf "$scratch/store-round"
store_dir=$scratch/store
compress_s=$(median "${compress_all[@]}")
decompress_s=$(median "${decompress_all[@]}")
write_s=$(median "${write_all[@]}")
read_s=$(median "${read_all[@]}")
start_server

echo
echo "| space | bytes | against qcow2 (zstd) |"
echo "|---|---:|---:|"
echo "| \`qemu-img convert -c -O qcow2 -o compression_type=zstd\` | $qcow2 | 1.00 |"
echo "| volume, store growth for the first copy (chunks, map, index) | $first | $(ratio "$first" "$qcow2") |"
echo "| a second copy in another volume | $second ($(python3 -c "print(f'{100 * $second / $first:.2f}')") % of the first) | |"
echo "| an empty 100 TiB volume | $empty | |"

# ---- speed: the image in and out ----
echo
echo "Sequential, median of $seq_rounds interleaved pairs (seconds per pair: nbdcopy in ${write_all[*]}," \
  "compress ${compress_all[*]}; nbdcopy out ${read_all[*]}, decompress ${decompress_all[*]})"
echo
echo "| sequential | aetherflow | MB/s | reference | MB/s | ratio |"
echo "|---|---:|---:|---|---:|---:|"
echo "| write: nbdcopy --flush of the image into a volume | ${write_s} s | $(mb_s "$image_alloc" "$write_s") | \`aetherflow compress\` of it | $(mb_s "$image_alloc" "$compress_s") | $(ratio "$compress_s" "$write_s") |"
echo "| read: nbdcopy of the volume, new server (cold cache) | ${read_s} s | $(mb_s "$image_alloc" "$read_s") | \`aetherflow decompress\` of it | $(mb_s "$image_alloc" "$decompress_s") | $(ratio "$decompress_s" "$read_s") |"

# ---- speed: fio against nbdkit file ----
create fio 512MiB
fio_nbd "$nbd/fio" write 1m 512m --buffer_compress_percentage=50 --refill_buffers > /dev/null
af_rr=$(fio_nbd "$nbd/fio" randread 4k 512m --time_based --runtime="$runtime")
af_rw=$(fio_nbd "$nbd/fio" randwrite 4k 512m --time_based --runtime="$runtime" --buffer_compress_percentage=50 --refill_buffers)
create seq 4GiB
af_sw=$(fio_nbd "$nbd/seq" write 1m 2g --buffer_compress_percentage=50 --refill_buffers)
stop_server

truncate -s 4G "$scratch/kit.raw"
nbdkit_start file "$scratch/kit.raw"
fio_nbd "$kit" write 1m 512m --buffer_compress_percentage=50 --refill_buffers > /dev/null
kit_rr=$(fio_nbd "$kit" randread 4k 512m --time_based --runtime="$runtime")
kit_rw=$(fio_nbd "$kit" randwrite 4k 512m --time_based --runtime="$runtime" --buffer_compress_percentage=50 --refill_buffers)
kit_sw=$(fio_nbd "$kit" write 1m 2g --buffer_compress_percentage=50 --refill_buffers)
kill "$kit_pid"; wait "$kit_pid" 2>/dev/null || true; kit_pid=

row() {
  local what=$1 unit=$2 af=$3 kit=$4 field=$5
  local a k
  a=$(cut -d' ' -f"$field" <<<"$af")
  k=$(cut -d' ' -f"$field" <<<"$kit")
  if [[ $unit == MB/s ]]; then a=$(( a / 1000000 )); k=$(( k / 1000000 )); fi
  echo "| $what | $a $unit | $k $unit | $(ratio "$a" "$k") |"
}
echo
echo "| fio, queue depth 16, ${runtime} s | aetherflow | nbdkit file | ratio |"
echo "|---|---:|---:|---:|"
row "4 KiB random reads, 512 MiB working set (cache $cache)" IOPS "$af_rr" "$kit_rr" 1
row "4 KiB random writes" IOPS "$af_rw" "$kit_rw" 1
row "1 MiB sequential writes, 2 GiB, half compressible" MB/s "$af_sw" "$kit_sw" 2

# ---- maps of an empty 100 TiB volume ----
start_server
create huge 100TiB
t0=$(now); nbdinfo --map "$nbd/huge" > "$scratch/af.map"; t1=$(now)
af_map=$(seconds "$t0" "$t1")
t0=$(now); qemu-img map -f raw --output=json "$nbd/huge" > "$scratch/af.qmap"; t1=$(now)
af_qmap=$(seconds "$t0" "$t1")
stop_server
nbdkit_start memory 100T
t0=$(now); nbdinfo --map "$kit" > "$scratch/kit.map"; t1=$(now)
kit_map=$(seconds "$t0" "$t1")
t0=$(now); qemu-img map -f raw --output=json "$kit" > "$scratch/kit.qmap"; t1=$(now)
kit_qmap=$(seconds "$t0" "$t1")
echo
echo "| map of an empty 100 TiB export | aetherflow | nbdkit memory | ratio |"
echo "|---|---:|---:|---:|"
echo "| \`nbdinfo --map\` (libnbd $(nbdinfo --version | sed -n 's/^libnbd //p'), 32-bit requests) | ${af_map} s | ${kit_map} s | $(ratio "$af_map" "$kit_map") |"
echo "| \`qemu-img map\` (extended headers with aetherflow) | ${af_qmap} s | ${kit_qmap} s | $(ratio "$af_qmap" "$kit_qmap") |"
echo "answers: aetherflow $(head -c 80 "$scratch/af.map" | tr -s ' '); nbdkit $(head -c 80 "$scratch/kit.map" | tr -s ' ')"

echo
echo "Server peak resident memory over the run: $(( peak_rss_kib / 1024 )) MiB (cache $cache)"
