#!/usr/bin/env bash
# Group commit on S3, in one run against a SeaweedFS of its own (scripts/seaweedfs.sh on
# S3_PORT): BYTES of the Silesia tar (copies stamped apart, so nothing deduplicates) allocated
# as raw 1 MiB blocks by 1, 4 and 16 concurrent clients, each on a fresh prefix and a fresh
# server, once with `--commit-uploads 0` (no limit: every commit uploads its own pack, as
# before group commit) and once with each UPLOADS value (LIMITS replaces that list). Printed:
# PUTs per allocated block (from the server's /metrics) and the allocation latency p50/p99 the
# clients saw.                                                        -> benches/load/blocks.rs
# With BEFORE (another build's aetherflow binary), every row is run with it too, just before
# this build's, on its own prefix: a same-run comparison of two versions.
#
#   bash bench/s3_commits.sh
#   BYTES=64MiB CLIENTS="1 16" UPLOADS="2" bash bench/s3_commits.sh     # a quick check
#   BEFORE=target/before/release/aetherflow LIMITS=2 bash bench/s3_commits.sh
# ROUNDS=N runs every row N times (interleaved) and ends with each row's median.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
scratch=${SCRATCH:-$top/target/bench}
corpus=${CORPUS:-$top/../shared/corpus/silesia}
s3_port=${S3_PORT:-21433}
bytes=${BYTES:-256MiB}
clients=${CLIENTS:-1 4 16}
uploads=${UPLOADS:-1 2 4}
limits=${LIMITS:-0 $uploads}
before=${BEFORE:-}
rounds=${ROUNDS:-1}
[[ -z $before || -x $before ]] || { echo "BEFORE=$before is not an executable" >&2; exit 2; }
cd "$top"

source "$top/bench/silesia_tar.sh"
source "$top/bench/serve_helpers.sh"
tar_file=$(silesia_tar "$scratch" "$corpus")
cargo build --release --quiet -p aetherflow
load=$(load_bench)
this_build=$top/target/release/aetherflow
bin=$this_build

work=$scratch/s3-commits
weed_dir=$work/weed
results=$work/results.txt
serve_pid=
cleanup() {
  serve_stop "$serve_pid"
  weed_stop "$weed_dir"
}
weed_stop "$weed_dir"
rm -rf "$work"
mkdir -p "$work"
: > "$results"
trap cleanup EXIT
trap 'exit 130' INT TERM

weed_start "$weed_dir" "$s3_port" aetherflow-commits
run=run-$(date -u +%Y%m%dT%H%M%S)
get() { awk -v k="$1" '$1 == k { print $2 }' "$results" | tail -n 1; }

echo "# Group commit on S3 (SeaweedFS $(weed version 2>/dev/null | awk '{ print $3 }')), $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores; $bytes in raw 1 MiB blocks"
echo
echo "| build | clients | --commit-uploads | PUTs per block | allocate p50 ms | allocate p99 ms | MB/s |"
echo "|---|---:|---|---:|---:|---:|---:|"
rows=$work/rows.txt
: > "$rows"
for round in $(seq "$rounds"); do
 for n in $clients; do
  for u in $limits; do
   for build in ${before:+before} this; do
    bin=$this_build
    [[ $build == before ]] && bin=$before
    label=c$n-u$u-$build-r$round
    serve_start "$work/server-$label.log" --cache-size 50MiB --gc-grace 15m --commit-uploads "$u" \
      --store "s3://$AF_S3_BUCKET/$run/$label?endpoint=$AF_S3_ENDPOINT"
    "$load" blocks --url "$serve_url" --source "$tar_file" --bytes "$bytes" --conns "$n" \
      --label "$label" --results "$results" > "$work/load-$label.md"
    serve_stop "$serve_pid"
    serve_pid=
    [[ $(get "$label.errors") == 0 ]] || { echo "$label: errors, see $work/load-$label.md" >&2; exit 1; }
    [[ $(get "$label.verified") == "$(get "$label.blocks")" ]] ||
      { echo "$label: blocks read back differ" >&2; exit 1; }
    puts=$(awk -v p="$(get "$label.alloc.put")" -v b="$(get "$label.blocks")" 'BEGIN { printf "%.2f", p / b }')
    row="$puts $(get "$label-alloc.allocate.p50_ms") $(get "$label-alloc.allocate.p99_ms") $(get "$label.alloc_mbps")"
    echo "$build $n $u $row" >> "$rows"
    echo "| $build | $n | $u | ${row// / | } |"
   done
  done
 done
done
if (( rounds > 1 )); then
  echo
  echo "Medians of $rounds rounds:"
  echo
  echo "| build | clients | --commit-uploads | PUTs per block | allocate p50 ms | allocate p99 ms | MB/s |"
  echo "|---|---:|---|---:|---:|---:|---:|"
  for n in $clients; do
    for u in $limits; do
      for build in ${before:+before} this; do
        medians=""
        for col in 4 5 6 7; do
          m=$(awk -v b="$build" -v n="$n" -v u="$u" -v c="$col" '$1 == b && $2 == n && $3 == u { print $c }' "$rows" |
            sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
          medians="$medians | $m"
        done
        echo "| $build | $n | $u$medians |"
      done
    done
  done
fi
