#!/usr/bin/env bash
# Figures of the REST server (issue: server under load), in one run, each scenario on a fresh
# server (`aetherflow serve --data-dir`, a scratch dir under target/bench) on a loopback port:
#   - 64 connections for 30 s mixing JSON allocate (64 KiB-1 MiB), read and stats: errors,
#     p50/p99 per route, peak RSS against cache size + 128 MiB          -> benches/load mixed
#   - raw allocate of a 2 GiB stream (Silesia, each copy stamped so copies do not dedup):
#     RSS growth, and throughput against `aetherflow compress - -` on the same bytes
#   - cache-hit read of a 64 KiB block under 64 connections: p99       -> benches/load hit
#   - JSON allocate of 1 MiB blocks against the raw route              -> benches/load json-vs-raw
#
#   bash bench/server.sh
#   CACHE=50MiB STREAM_MIB=2048 MIXED_SECS=30 HIT_SECS=10 JVR_MIB=192 BACKEND=disk|memory bash bench/server.sh
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
scratch=${SCRATCH:-$top/target/bench}
corpus=${CORPUS:-$top/../shared/corpus/silesia}
cache=${CACHE:-50MiB}
stream_bytes=$(( ${STREAM_MIB:-2048} << 20 ))
mixed_secs=${MIXED_SECS:-30}
hit_secs=${HIT_SECS:-10}
jvr_mib=${JVR_MIB:-192}
backend=${BACKEND:-disk}
mkdir -p "$scratch"
cd "$top"

source "$top/bench/silesia_tar.sh"
source "$top/bench/serve_helpers.sh"
tar_file=$(silesia_tar "$scratch" "$corpus")

cargo build --release --quiet -p aetherflow
load=$(load_bench)
bin=$top/target/release/aetherflow

work=$scratch/server
rm -rf "$work"
mkdir -p "$work"
results=$work/results.txt
: > "$results"

server_pid=
sampler_pid=
url=

stop_sampler() {
  if [[ -n $sampler_pid ]]; then
    kill "$sampler_pid" 2>/dev/null || true
    wait "$sampler_pid" 2>/dev/null || true
    sampler_pid=
  fi
}

stop_server() {
  stop_sampler
  serve_stop "$server_pid"
  server_pid=
}

cleanup() {
  stop_server
  rm -rf "$work/data"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# KiB of a /proc status field of the server (VmRSS, VmHWM).
proc_kib() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$server_pid/status"; }

# Starts a fresh server on a free loopback port (it binds port 0 and says which it got).
start_server() {
  local name=$1 store
  rm -rf "$work/data"
  if [[ $backend == memory ]]; then store=(--memory); else store=(--data-dir "$work/data"); fi
  serve_start "$work/server-$name.log" "${store[@]}" --cache-size "$cache" --max-body 4GiB
  server_pid=$serve_pid
  url=$serve_url
}

# Samples the server's VmRSS (KiB) every 100 ms into $1 until stopped.
start_sampler() {
  local out=$1 pid=$server_pid
  : > "$out"
  (
    while kill -0 "$pid" 2>/dev/null; do
      awk '$1 == "VmRSS:" { print $2 }' "/proc/$pid/status" 2>/dev/null >> "$out" || true
      sleep 0.1
    done
  ) &
  sampler_pid=$!
}

peak_kib() { sort -n "$1" | tail -n 1; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
get() { awk -v k="$1" '$1 == k { print $2 }' "$results" | tail -n 1; }
now() { date +%s.%N; }
# pass/fail of "$1 $2 $3" (e.g. 12 "<=" 20)
judge() { awk -v a="$1" -v b="$3" -v op="$2" 'BEGIN {
  ok = (op == "<=") ? (a <= b) : (op == ">=") ? (a >= b) : (a == b); print (ok ? "met" : "MISSED") }'; }
cache_bytes=$(numfmt --from=iec-i "${cache%B}") || { echo "CACHE=$cache: use 50MiB or plain bytes" >&2; exit 1; }
cache_kib=$(( cache_bytes / 1024 ))

echo "# REST server under load, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, backend $backend, cache $cache"
echo
echo "Client and server share the machine; every figure below is from this run."
echo

# --- 1. mixed -------------------------------------------------------------------------------
start_server mixed
mixed_base=$(proc_kib VmRSS)
start_sampler "$work/rss-mixed.txt"
"$load" mixed --url "$url" --conns 64 --secs "$mixed_secs" --results "$results"
stop_sampler
mixed_peak=$(peak_kib "$work/rss-mixed.txt")
mixed_hwm=$(proc_kib VmHWM)
mixed_end=$(proc_kib VmRSS)
stop_server
echo

# --- 2. 2 GiB raw stream --------------------------------------------------------------------
start_server stream
stream_base=$(proc_kib VmRSS)
start_sampler "$work/rss-stream.txt"
t0=$(now)
"$load" gen --bytes "$stream_bytes" --source "$tar_file" |
  curl -sS -X POST -T - -H 'Content-Type: application/octet-stream' -H 'Expect:' \
    "$url/api/memory/allocate" > "$work/stream-reply.json"
t1=$(now)
stop_sampler
stream_peak=$(peak_kib "$work/rss-stream.txt")
stream_hwm=$(proc_kib VmHWM)
grep -q '"success":true' "$work/stream-reply.json" ||
  { echo "raw stream allocate failed: $(cat "$work/stream-reply.json")" >&2; exit 1; }
stream_size=$(sed -n 's/.*"originalSize":\([0-9]*\).*/\1/p' "$work/stream-reply.json")
[[ $stream_size == "$stream_bytes" ]] ||
  { echo "the server stored $stream_size bytes of $stream_bytes" >&2; exit 1; }
stream_ratio=$(curl -fsS "$url/api/memory/stats" | sed -n 's/.*"ratios":{"overall":\([0-9.]*\).*/\1/p')
stop_server
t_stream=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')

t0=$(now)
"$load" gen --bytes "$stream_bytes" --source "$tar_file" | "$bin" compress - - > /dev/null
t1=$(now)
t_compress=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
t0=$(now)
"$load" gen --bytes "$stream_bytes" --source "$tar_file" > /dev/null
t1=$(now)
t_gen=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')

stream_growth=$(( (stream_hwm > stream_peak ? stream_hwm : stream_peak) - stream_base ))
stream_mbps=$(awk -v n="$stream_bytes" -v t="$t_stream" 'BEGIN { printf "%.1f", n / 1e6 / t }')
compress_mbps=$(awk -v n="$stream_bytes" -v t="$t_compress" 'BEGIN { printf "%.1f", n / 1e6 / t }')
gen_mbps=$(awk -v n="$stream_bytes" -v t="$t_gen" 'BEGIN { printf "%.0f", n / 1e6 / t }')
stream_vs=$(awk -v a="$t_compress" -v b="$t_stream" 'BEGIN { printf "%.2f", a / b }')

echo "## Raw allocate of one $(( stream_bytes >> 20 )) MiB stream (Silesia tar repeated, each copy stamped)"
echo
echo "| pipeline | seconds | MB/s | vs the CLI |"
echo "|---|---:|---:|---:|"
echo "| \`gen | aetherflow compress - -\` (reference) | $(printf %.2f "$t_compress") | $compress_mbps | 1.00 |"
echo "| \`gen | curl -T -\` to raw \`POST /api/memory/allocate\` | $(printf %.2f "$t_stream") | $stream_mbps | $stream_vs |"
echo
echo "The generator alone: $gen_mbps MB/s. Stored at ${stream_ratio}x overall (server stats)."
echo "Server RSS: $(mib "$stream_base") MiB before, peak sampled $(mib "$stream_peak") MiB, VmHWM $(mib "$stream_hwm") MiB: grew $(mib "$stream_growth") MiB."
echo

# --- 3. cache hit ---------------------------------------------------------------------------
# Closed loop (each connection sends its next request as soon as the last is answered): the
# target. Then paced at HIT_RATE requests/s over the same 64 connections, latency counted from
# each request's scheduled time, to show the latency without the queue of a saturated machine.
start_server hit
"$load" hit --url "$url" --conns 64 --secs "$hit_secs" --results "$results"
echo
"$load" hit --url "$url" --conns 64 --secs "$hit_secs" --rate "${HIT_RATE:-1000}" --results "$results"
stop_server
echo

# --- 4. JSON vs raw -------------------------------------------------------------------------
start_server jvr
"$load" json-vs-raw --url "$url" --conns 4 --mib "$jvr_mib" --results "$results"
stop_server
echo

# --- memory and summary ---------------------------------------------------------------------
mixed_max=$(( mixed_hwm > mixed_peak ? mixed_hwm : mixed_peak ))
limit_kib=$(( cache_kib + (128 << 10) ))
echo "## Server memory during the mixed load"
echo
echo "| RSS | MiB |"
echo "|---|---:|"
echo "| at start | $(mib "$mixed_base") |"
echo "| peak sampled (every 100 ms) | $(mib "$mixed_peak") |"
echo "| VmHWM at the end | $(mib "$mixed_hwm") |"
echo "| at the end | $(mib "$mixed_end") |"
echo "| limit: cache $cache + 128 MiB | $(mib "$limit_kib") |"
echo

mixed_errors=$(get mixed.errors)
hit_p99=$(get hit.read.p99_ms)
jvr_ratio=$(get jvr.ratio)
echo "## Targets"
echo
echo "| target | measured | limit | result |"
echo "|---|---:|---:|---|"
echo "| mixed: errors | $mixed_errors | 0 | $(judge "$mixed_errors" == 0) |"
for r in allocate read stats; do
  echo "| mixed: $r p50 / p99 ms | $(get "mixed.$r.p50_ms") / $(get "mixed.$r.p99_ms") | - | (figure) |"
done
echo "| mixed: server RSS, MiB (max of VmHWM and samples) | $(mib "$mixed_max") | $(mib "$limit_kib") | $(judge "$mixed_max" "<=" "$limit_kib") |"
echo "| $(( stream_bytes >> 20 )) MiB raw stream: RSS growth, MiB | $(mib "$stream_growth") | 64.0 | $(judge "$stream_growth" "<=" $((64 << 10))) |"
echo "| $(( stream_bytes >> 20 )) MiB raw stream: throughput vs \`aetherflow compress\` | $stream_vs | 0.80 | $(judge "$stream_vs" ">=" 0.8) |"
echo "| 64 KiB cache-hit read, 64 connections: p99 ms | $hit_p99 | 2.00 | $(judge "$hit_p99" "<=" 2) |"
echo "| 64 KiB cache-hit read, paced at ${HIT_RATE:-1000}/s: p50 / p99 ms | $(get hitpaced.paced.p50_ms) / $(get hitpaced.paced.p99_ms) | - | (figure) |"
echo "| 64 KiB cache-hit read: errors | $(get hit.errors) | 0 | $(judge "$(get hit.errors)" == 0) |"
echo "| JSON allocate 1 MiB vs raw: throughput ratio | $jvr_ratio | 0.50 | $(judge "$jvr_ratio" ">=" 0.5) |"
