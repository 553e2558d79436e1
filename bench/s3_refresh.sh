#!/usr/bin/env bash
# Allocation latency on S3 while the server's view of the bucket refreshes in the background
# (crates/vm/benches/refresh_latency.rs), against a SeaweedFS of its own on S3_PORT.
#
#   bash bench/s3_refresh.sh
#   BLOCKS=5000 SECONDS=10 bash bench/s3_refresh.sh      # a quick check
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
scratch=${SCRATCH:-$top/target/bench}
s3_port=${S3_PORT:-22333}
mkdir -p "$scratch"
cd "$top"

s3_dir=$(mktemp -d "$scratch/s3-refresh.XXXXXX")
trap 'bash scripts/seaweedfs.sh stop "$s3_dir" || true; rm -rf "$s3_dir"' EXIT
eval "$(AF_S3_PORT=$s3_port bash scripts/seaweedfs.sh start "$s3_dir")"
cargo bench --quiet -p aetherflow-vm --features s3 --bench refresh_latency
