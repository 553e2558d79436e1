#!/usr/bin/env bash
# A bucket of many blocks, opened cold: how long a fresh `aetherflow serve --store s3://…` takes to
# open it, the memory it holds after (VmRSS, and VmHWM: the peak), the requests it makes during
# the open and while idle, the time of one `GET /api/memory/stats` (which lists every block), and
# the allocate/read latency under a short load (the load generator's `mixed` scenario, 16
# connections, without its stats requests: their cost grows with the bucket and is timed apart).
#
# The bucket lives in a SeaweedFS of the bench's own whose data is kept between runs
# ($scratch/s3-scale/weed, on S3_PORT): each size is filled once, in process through the store's
# own commit path (crates/vm/benches/s3_fill.rs: distinct 4 KiB blocks from 16 threads), and
# later runs reuse it. The load adds a few hundred blocks to the bucket on each run; the table
# gives the count the server found at open.
#
#   bash bench/s3_scale.sh
#   SIZES=10000 IDLE=10 LOAD_SECS=5 bash bench/s3_scale.sh      # a quick check
#   SIZES="10000 100000 1000000" bash bench/s3_scale.sh          # 10^6: a fill of about 15 min
#   FRESH=1 bash bench/s3_scale.sh                              # refill every size first
#   BIN=path/to/aetherflow bash bench/s3_scale.sh               # another build (before/after)
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
scratch=${SCRATCH:-$top/target/bench}
s3_port=${S3_PORT:-23333}
sizes=${SIZES:-10000 100000}
idle=${IDLE:-30}
load_secs=${LOAD_SECS:-10}
cd "$top"

source "$top/bench/serve_helpers.sh"
[[ -n ${BIN:-} ]] || cargo build --release --quiet -p aetherflow
load=$(load_bench)
fill=$(cargo bench --quiet -p aetherflow-vm --features s3 --bench s3_fill --no-run --message-format=json |
  sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
bin=${BIN:-$top/target/release/aetherflow}

work=$scratch/s3-scale
weed_dir=$work/weed
mkdir -p "$work"
serve_pid=
cleanup() {
  serve_stop "$serve_pid"
  bash "$top/scripts/seaweedfs.sh" stop "$weed_dir" || true # its data stays for the next run
}
bash "$top/scripts/seaweedfs.sh" stop "$weed_dir" || true
trap cleanup EXIT
trap 'exit 130' INT TERM
weed_start "$weed_dir" "$s3_port" aetherflow-scale

# status FIELD: a field of the server's /proc status, in MiB.
status_mib() { awk -v f="$1:" '$1 == f { printf "%.0f", $2 / 1024 }' "/proc/$serve_pid/status"; }
# diff_requests A B: B - A of two store_requests, as "N (G GET, P PUT, L LIST)".
diff_requests() {
  local g1 p1 l1 h1 d1 g2 p2 l2 h2 d2
  read -r g1 p1 l1 h1 d1 <<< "$1"
  read -r g2 p2 l2 h2 d2 <<< "$2"
  local g=$((g2 - g1)) p=$((p2 - p1)) l=$((l2 - l1)) h=$((h2 - h1)) d=$((d2 - d1))
  echo "$((g + p + l + h + d)) ($g GET, $p PUT, $l LIST)"
}
get() { awk -v k="$1" '$1 == k { printf "%.1f", $2 }' "$2" | tail -n 1; }

rows=()
for n in $sizes; do
  # Filled by a build of the store's version 3 (crates/s3/src/meta.rs): a bucket of another
  # version is refused, and is filled again.
  # The fill writes its records under a grace of GRACE_SECS (kept in the marker: a snapshot
  # must be written under the grace its records were), then a snapshot of the log, as a
  # server's housekeeper would once the log has grown; a bucket filled before snapshots
  # existed gets its snapshot here.
  marker=$work/filled-v3-$n
  if [[ -n ${FRESH:-} || ! -s $marker ]]; then
    prefix=scale-$n-$(date -u +%Y%m%dT%H%M%S)
    echo "filling $prefix with $n blocks of 4 KiB" >&2
    PREFIX=$prefix BLOCKS=$n THREADS=16 GRACE_SECS=${GRACE_SECS:-30} SNAPSHOT=1 "$fill" >&2
    printf '%s\n%s\n' "$prefix" "${GRACE_SECS:-30}" > "$marker"
    touch "$work/snapshot-v3-$n"
  fi
  prefix=$(sed -n 1p "$marker")
  fill_grace=$(sed -n 2p "$marker")
  if [[ ! -e $work/snapshot-v3-$n ]]; then
    echo "writing a snapshot of the log of $prefix" >&2
    # (Filled in an earlier run: its epochs have long settled.)
    PREFIX=$prefix BLOCKS=0 GRACE_SECS=${fill_grace:-900} SETTLE_SECS=0 SNAPSHOT=1 "$fill" >&2
    touch "$work/snapshot-v3-$n"
  fi
  store="s3://$AF_S3_BUCKET/$prefix?endpoint=$AF_S3_ENDPOINT"

  started=$(date +%s.%N)
  SERVE_WAIT=900 serve_start "$work/serve-$n.log" --cache-size 50MiB --gc-grace 15m --store "$store"
  open_s=$(python3 -c "import time; print(f'{time.time() - $started:.1f}')")
  found=$(api /api/memory/stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["stats"]["totalBlocks"])')
  rss_open=$(status_mib VmRSS)
  hwm_open=$(status_mib VmHWM)
  at_open=$(store_requests)
  open_requests=$(diff_requests "0 0 0 0 0" "$at_open")
  sleep "$idle"
  idle_requests=$(diff_requests "$at_open" "$(store_requests)")
  stats_s=$(curl -fsS -o /dev/null -w '%{time_total}' "$serve_url/api/memory/stats" | awk '{ printf "%.2f", $1 }')
  results=$work/load-$n.txt
  : > "$results"
  "$load" mixed --url "$serve_url" --conns 16 --secs "$load_secs" --stats-percent 0 \
    --results "$results" > "$work/load-$n.md"
  rss_load=$(status_mib VmRSS)
  hwm_load=$(status_mib VmHWM)
  serve_stop "$serve_pid"
  serve_pid=
  rows+=("| $found | $open_s | $rss_open | $hwm_open | $open_requests | $idle_requests | $stats_s | $(get mixed.allocate.p50_ms "$results") / $(get mixed.allocate.p99_ms "$results") | $(get mixed.read.p50_ms "$results") / $(get mixed.read.p99_ms "$results") | $rss_load | $hwm_load |")
done

echo "# A bucket opened cold (SeaweedFS $(weed version 2>/dev/null | awk '{ print $3 }'), $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores)"
echo
echo "| blocks at open | open s | VmRSS MiB | VmHWM MiB | requests during the open | requests in ${idle} s idle | stats s | allocate p50 / p99 ms | read p50 / p99 ms | VmRSS after load | VmHWM after load |"
echo "|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
