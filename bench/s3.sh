#!/usr/bin/env bash
# Figures of the S3 backend, in one run, against a SeaweedFS of its own (scripts/seaweedfs.sh on
# S3_PORT, data under target/bench) and servers on loopback ports:
#   - Silesia (the tar, COPIES times, each copy stamped apart as `load gen` does, so nothing
#     deduplicates) as raw 1 MiB blocks over CONNS connections, then every block read back raw
#     and compared byte for byte; MB/s of each phase on the embedded store (--data-dir) and
#     on S3 (--store s3://...), and the S3/embedded ratio          -> benches/load/blocks.rs
#   - S3 requests by operation (/metrics, scraped before and after each phase) per allocated GiB
#   - two servers on one bucket and prefix, allocating at once for SHARED_SECS: errors, then
#     every block read through both servers and compared          -> benches/load/shared.rs
#
#   bash bench/s3.sh
#   BLOCKS_BYTES=16777216 SHARED_SECS=5 bash bench/s3.sh     # a quick check
#   S3_PORT=21333 CONNS=4 COPIES=4 SHARED_SECS=60 SHARED_CONNS=4 SHARED_GRACE=1m CACHE=50MiB bash bench/s3.sh
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
scratch=${SCRATCH:-$top/target/bench}
corpus=${CORPUS:-$top/../shared/corpus/silesia}
s3_port=${S3_PORT:-21333}
conns=${CONNS:-4}
copies=${COPIES:-4}
shared_secs=${SHARED_SECS:-60}
shared_conns=${SHARED_CONNS:-4}
shared_grace=${SHARED_GRACE:-1m}
cache=${CACHE:-50MiB}
mkdir -p "$scratch"
cd "$top"

source "$top/bench/silesia_tar.sh"
source "$top/bench/serve_helpers.sh"
tar_file=$(silesia_tar "$scratch" "$corpus")
blocks_bytes=${BLOCKS_BYTES:-$((copies * $(stat -c %s "$tar_file")))}

cargo build --release --quiet -p aetherflow
load=$(load_bench)
bin=$top/target/release/aetherflow

work=$scratch/s3
weed_dir=$work/weed
results=$work/results.txt
servers=()

stop_servers() {
  local pid
  for pid in "${servers[@]}"; do serve_stop "$pid"; done
  servers=()
}

cleanup() {
  stop_servers
  weed_stop "$weed_dir"
  rm -rf "$work/data"
}

weed_stop "$weed_dir"
rm -rf "$work"
mkdir -p "$work"
: > "$results"
trap cleanup EXIT
trap 'exit 130' INT TERM

weed_start "$weed_dir" "$s3_port" aetherflow-bench
run=run-$(date -u +%Y%m%dT%H%M%S)
s3_url() { echo "s3://$AF_S3_BUCKET/$run/$1?endpoint=$AF_S3_ENDPOINT"; }

# Starts a server with ARGS..., logging to $work/server-NAME.log; sets serve_url.
start() {
  local name=$1
  shift
  serve_start "$work/server-$name.log" --cache-size "$cache" "$@"
  servers+=("$serve_pid")
}

get() { awk -v k="$1" '$1 == k { print $2 }' "$results" | tail -n 1; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0) ? a / b : 0 }'; }
# met / MISSED of "$1 == $2"
judge() { [[ $1 == "$2" ]] && echo met || echo MISSED; }
# Lines a server logged at WARN or ERROR.
complaints() { cat "$@" | grep -Ec '^\S+ +(WARN|ERROR) ' || true; }

echo "# S3 backend (SeaweedFS $(weed version 2>/dev/null | awk '{ print $3 }')) against the embedded store, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, cache $cache"
echo
echo "Client, servers and SeaweedFS share the machine; every figure below is from this run."
echo

# --- 1 and 2. the same blocks on both backends ------------------------------------------------
blocks() {
  "$load" blocks --url "$serve_url" --source "$tar_file" --bytes "$blocks_bytes" --conns "$conns" \
    --label "$1" --results "$results"
  echo
}
start embedded --data-dir "$work/data"
blocks embedded
stop_servers
start s3 --store "$(s3_url single)" --gc-grace 15m
blocks s3
stop_servers

# --- 3. two servers on one bucket and prefix ----------------------------------------------------
start shared-a --store "$(s3_url shared)" --gc-grace "$shared_grace"
url_a=$serve_url
start shared-b --store "$(s3_url shared)" --gc-grace "$shared_grace"
url_b=$serve_url
"$load" shared --url "$url_a" --url2 "$url_b" --source "$tar_file" --secs "$shared_secs" \
  --conns "$shared_conns" --results "$results"
stop_servers
shared_complaints=$(complaints "$work/server-shared-a.log" "$work/server-shared-b.log")
echo

# --- summary ------------------------------------------------------------------------------------
bytes=$(get s3.bytes)
echo "## Embedded store vs S3: $(get s3.blocks) blocks of 1 MiB ($(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }') MiB: the Silesia tar repeated, copies stamped apart), $conns connections"
echo
echo "| phase | embedded MB/s | S3 MB/s | S3 / embedded |"
echo "|---|---:|---:|---:|"
for phase in alloc read; do
  e=$(get "embedded.${phase}_mbps")
  s=$(get "s3.${phase}_mbps")
  name=$([[ $phase == alloc ]] && echo "allocate (raw)" || echo "read back (raw, compared)")
  echo "| $name | $e | $s | $(ratio "$s" "$e") |"
done
echo
echo "## S3 requests per GiB allocated (logical bytes; 1024 blocks of 1 MiB per GiB)"
echo
echo "| op | allocate phase | read phase |"
echo "|---|---:|---:|"
for op in put get head list delete; do
  echo "| ${op^^} | $(get "s3.alloc.${op}_per_gib") | $(get "s3.read.${op}_per_gib") |"
done
echo
echo "Two servers on one prefix (\`shared\`), per GiB allocated / per GiB read:"
echo
echo "| op | allocate phase | read phase (every block through both) |"
echo "|---|---:|---:|"
for op in put get head list delete; do
  echo "| ${op^^} | $(get "shared.alloc.${op}_per_gib") | $(get "shared.read.${op}_per_gib") |"
done
echo

blocks_n=$(get s3.blocks)
shared_n=$(get shared.blocks)
echo "## Targets"
echo
echo "| target | measured | limit | result |"
echo "|---|---:|---:|---|"
for b in embedded s3; do
  echo "| $b: allocate and read errors | $(get "$b.errors") | 0 | $(judge "$(get "$b.errors")" 0) |"
  echo "| $b: blocks read back identical | $(get "$b.verified") | $blocks_n | $(judge "$(get "$b.verified")" "$blocks_n") |"
done
echo "| two servers, $(get shared.secs) s: blocks allocated (A + B) | $shared_n ($(get shared.a.blocks) + $(get shared.b.blocks)) | - | (figure) |"
echo "| two servers: allocate errors | $(get shared.alloc_errors) | 0 | $(judge "$(get shared.alloc_errors)" 0) |"
echo "| two servers: read errors (of $((2 * shared_n)) reads) | $(get shared.read_errors) | 0 | $(judge "$(get shared.read_errors)" 0) |"
echo "| two servers: blocks identical through A / B | $(get shared.readable_a) / $(get shared.readable_b) | $shared_n | $(judge "$(get shared.readable_a)/$(get shared.readable_b)" "$shared_n/$shared_n") |"
echo "| two servers: blocks identical through both | $(get shared.readable_both) | $shared_n | $(judge "$(get shared.readable_both)" "$shared_n") |"
echo "| two servers: WARN/ERROR lines in the servers' logs | $shared_complaints | 0 | $(judge "$shared_complaints" 0) |"
