# Sourced by the bench scripts: start and stop `aetherflow serve` on a free loopback port.
# Needs $bin (the aetherflow binary) and $top (the checkout). The caller stops what it started (an EXIT trap).
#
#   serve_start LOG ARGS...   starts `$bin serve --listen 127.0.0.1:0 ARGS...` (stderr to LOG),
#                             waits until it says where it listens and answers /healthz, and
#                             sets serve_pid and serve_url; exits the script if it does not come up
#   serve_stop PID            SIGTERM, up to 35 s to close the store, then SIGKILL

serve_start() {
  local log=$1
  shift
  AF_LOG=${AF_LOG:-info} "$bin" serve --listen 127.0.0.1:0 "$@" 2> "$log" &
  serve_pid=$!
  serve_url=
  for _ in $(seq 1 100); do
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
