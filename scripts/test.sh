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
cargo test --workspace --locked --all-features
