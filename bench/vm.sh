#!/usr/bin/env bash
# Figures of the virtual memory manager (issue: memory manager), in one run:
#   - throughput against `aetherflow compress` / `aetherflow decompress` on Silesia as one tar,
#     and the space figures (same data twice, zeros, everything freed)  -> benches/throughput.rs
#   - latency of a cache-hit read and of a lookup among 1,000,000 blocks -> benches/vm.rs
#
#   bash bench/vm.sh
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
scratch=${SCRATCH:-$top/target/bench}
corpus=${CORPUS:-$top/../shared/corpus/silesia}
mkdir -p "$scratch"
cd "$top"

source "$top/bench/silesia_tar.sh"
tar_file=$(silesia_tar "$scratch" "$corpus")

cargo build --release --quiet -p aetherflow
echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores"
cargo bench --quiet -p aetherflow-vm --bench throughput -- "$tar_file" "$scratch/vm"
echo
cargo bench --quiet -p aetherflow-vm --bench vm -- --noplot 2>&1 |
  grep -E '^(read|look up)|time:|resident memory'
