#!/usr/bin/env bash
# Every test the project has: formatting, lints, unit, property and integration tests.
# Needs root for one test that mounts a 2 MiB tmpfs to fill a disk for real.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --workspace --locked --all-features
