# Sourced by the bench scripts: start and stop `aetherflow serve` on a free loopback port.
# Needs $bin (the aetherflow binary) and $top (the checkout). The caller stops what it started (an EXIT trap).
#
#   serve_start LOG ARGS...   starts `$bin serve --listen 127.0.0.1:0 ARGS...` (stderr to LOG),
#                             waits until it says where it listens and answers /healthz, and
#                             sets serve_pid and serve_url; exits the script if it does not come up
#                             within SERVE_WAIT seconds (10; a server opening a large bucket needs more)
#   serve_stop PID            SIGTERM, up to 35 s to close the store, then SIGKILL
#   api PATH CURL_ARGS...     a request to the running server ($serve_url)
#   store_requests            its object store requests so far (/metrics): "GET PUT LIST HEAD DELETE"
#   create NAME SIZE          creates a volume there; physical: the store's physical bytes
#   free_port                 a free loopback TCP port
#   nbdkit_start PLUGIN ARGS  starts `nbdkit PLUGIN ARGS` on a free port, waits until it answers,
#                             and sets kit_pid and kit (its URI); the caller kills kit_pid
#   fio_nbd URI RW BS SIZE ARGS...
#                             fio's nbd engine at queue depth 16; prints "IOPS BYTES_PER_SECOND"
#                             of the side that ran, exits the script if fio failed

serve_start() {
  local log=$1
  shift
  AF_LOG=${AF_LOG:-info} "$bin" serve --listen 127.0.0.1:0 "$@" 2> "$log" &
  serve_pid=$!
  serve_url=
  for _ in $(seq 1 $((${SERVE_WAIT:-10} * 10))); do
    serve_url=$(sed -n 's/.*listening on \(http:\/\/127\.0\.0\.1:[0-9]*\).*/\1/p' "$log" | head -n 1)
    [[ -n $serve_url ]] && break
    kill -0 "$serve_pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.1
  done
  [[ -n $serve_url ]] || { echo "the server did not say where it listens" >&2; exit 1; }
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "$serve_url/healthz" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$serve_url/healthz did not answer" >&2
  exit 1
}

serve_stop() {
  local pid=$1
  [[ -n $pid ]] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 350); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "server $pid did not stop on SIGTERM; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# load_bench                  builds the load generator (benches/load) and prints its path
load_bench() {
  local exe
  exe=$(cargo bench --quiet -p aetherflow-server --bench load --no-run --message-format=json |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
  [[ -x $exe ]] || { echo "could not find the load bench executable" >&2; exit 1; }
  echo "$exe"
}

# weed_start DIR PORT BUCKET  starts a SeaweedFS of the bench's own in DIR and exports its
#                             credentials, region, endpoint and bucket (AF_S3_*)
# weed_stop DIR               stops it (if one runs there: call it first too, as one left by an
#                             interrupted run would hold the port) and removes its data
weed_start() {
  local dir=$1 port=$2 bucket=$3 exports
  exports=$(AF_S3_PORT=$port AF_S3_BUCKET=$bucket bash "$top/scripts/seaweedfs.sh" start "$dir")
  eval "$exports"
}
weed_stop() {
  bash "$top/scripts/seaweedfs.sh" stop "$1" || true
  rm -rf "$1/data"
}

api() { curl -fsS "$serve_url$1" "${@:2}"; }
store_requests() {
  api /metrics | awk '/^aetherflow_store_requests_total\{/ {
      match($0, /op="[a-z]+"/); op = substr($0, RSTART + 4, RLENGTH - 5); n[op] = $NF }
    END { printf "%d %d %d %d %d\n", n["get"], n["put"], n["list"], n["head"], n["delete"] }'
}
create() { api /api/volumes -H 'Content-Type: application/json' -d "{\"name\": \"$1\", \"size\": \"$2\"}" > /dev/null; }
physical() { api /api/memory/stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["stats"]["bytes"]["physical"])'; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

nbdkit_start() {
  local port
  port=$(free_port)
  nbdkit -p "$port" -f --exit-with-parent "$@" &
  kit_pid=$!
  kit=nbd://127.0.0.1:$port
  for _ in $(seq 50); do nbdinfo --size "$kit" > /dev/null 2>&1 && return 0; sleep 0.1; done
  echo "nbdkit $* did not answer on $kit" >&2
  exit 1
}

fio_nbd() {
  local uri=$1 rw=$2 bs=$3 size=$4
  shift 4
  fio --name=b --ioengine=nbd --uri="$uri" --rw="$rw" --bs="$bs" --size="$size" --iodepth=16 \
    --output-format=json "$@" 2>/dev/null | sed -n '/^{/,$p' | python3 -c '
import json, sys
j = json.load(sys.stdin)["jobs"][0]
side = j["write"] if j["write"]["io_bytes"] > j["read"]["io_bytes"] else j["read"]
if j["error"]:
    sys.exit("fio failed: error %d" % j["error"])
print("%.0f %d" % (side["iops"], side["bw_bytes"]))'
}
