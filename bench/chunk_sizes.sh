#!/usr/bin/env bash
# How much ratio independent chunks lose against zstd over the whole stream, by chunk size and
# zstd parameters: the measurement behind the default chunk sizes (docs/design.md).
# zstd's own benchmark mode (-b, with -B cutting the input into independent blocks) does the work.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
tar_file=${1:-$top/target/bench/silesia.tar}
[[ -f $tar_file ]] || { echo "run bench/compare.sh first (it builds $tar_file)" >&2; exit 1; }
measure() { zstd -b3 "$@" -T1 -i3 "$tar_file" 2>&1 | tr '\r' '\n' | grep -o 'x[0-9.]*),  *[0-9.]* MB/s' | tail -1; }
echo "| blocks | zstd parameters | ratio, compress speed (one core) |"
echo "|---|---|---|"
echo "| whole stream | level 3 | $(measure) |"
for block in 256K 1M 2M 4M 8M; do
  echo "| $block | level 3 | $(measure -B$block) |"
done
for params in hlog=18 clog=17 wlog=23; do
  echo "| 2M | level 3, $params | $(measure -B2M --zstd=$params) |"
done
echo "| 2M | level 4 | $(zstd -b4 -B2M -T1 -i3 "$tar_file" 2>&1 | tr '\r' '\n' | grep -o 'x[0-9.]*),  *[0-9.]* MB/s' | tail -1) |"
