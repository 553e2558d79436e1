#!/usr/bin/env bash
# Measures aetherflow against zstd in the same run and prints the tables quoted in the README and
# in docs/design.md. Absolute speeds drift on shared machines; the ratios between tools in one run
# are what to compare.
#
#   bash bench/compare.sh            # everything (about 3 minutes, ~10 GiB of scratch disk)
#   QUICK=1 bash bench/compare.sh    # skip the 4 GiB memory run
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
scratch=${SCRATCH:-$top/target/bench}
corpus=${CORPUS:-$top/../shared/corpus/silesia}
runs=${RUNS:-5}
mkdir -p "$scratch"
cd "$top"
cargo build --release --quiet -p aetherflow
af=$top/target/release/aetherflow
for tool in zstd python3 /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "bench needs $tool" >&2; exit 1; }
done

# Best wall time of $runs runs of a shell command, in seconds.
best() {
  python3 - "$runs" "$1" <<'PY'
import subprocess, sys, time
runs, cmd = int(sys.argv[1]), sys.argv[2]
best = None
for _ in range(runs):
    t = time.perf_counter()
    subprocess.run(cmd, shell=True, check=True)
    dt = time.perf_counter() - t
    best = dt if best is None else min(best, dt)
print(f"{best:.3f}")
PY
}
size() { stat -c %s "$1"; }
ratio() { python3 -c "print(f'{$1/$2:.3f}')"; }
rate() { python3 -c "print(f'{$1/$2/1e6:.0f}')"; }

echo "# AetherFlow benchmark, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, zstd $(zstd -V | grep -o 'v[0-9.]*')"
echo

# ---- Silesia as one tar -------------------------------------------------------------------------
source "$top/bench/silesia_tar.sh"
tar_file=$(silesia_tar "$scratch" "$corpus")
n=$(size "$tar_file")
echo "## Silesia (7 files as one tar, $n bytes), default level, both cores"
echo
t_af_c=$(best "rm -f $scratch/s.af; $af compress $tar_file $scratch/s.af")
t_z_c=$(best "rm -f $scratch/s.zst; zstd -q -3 -T2 $tar_file -o $scratch/s.zst")
t_af_d=$(best "$af decompress $scratch/s.af - > /dev/null")
t_z_d=$(best "zstd -q -d -c $scratch/s.zst > /dev/null")
t_af_df=$(best "rm -f $scratch/s.out; $af decompress $scratch/s.af $scratch/s.out")
t_z_df=$(best "rm -f $scratch/s.zout; zstd -q -d $scratch/s.zst -o $scratch/s.zout")
cmp "$scratch/s.out" "$tar_file"
echo "| tool | ratio | compress s | decompress to /dev/null s | decompress to file s |"
echo "|---|---:|---:|---:|---:|"
echo "| aetherflow compress (level 3) | $(ratio "$n" "$(size "$scratch/s.af")") | $t_af_c | $t_af_d | $t_af_df |"
echo "| zstd -3 -T2 | $(ratio "$n" "$(size "$scratch/s.zst")") | $t_z_c | $t_z_d | $t_z_df |"
echo
echo "aetherflow / zstd: compress time $(ratio "$t_af_c" "$t_z_c")x, decompress time $(ratio "$t_af_d" "$t_z_d")x (to /dev/null), $(ratio "$t_af_df" "$t_z_df")x (to a file)"
echo

# ---- Zeros, holes, random ------------------------------------------------------------------------
echo "## Thin provisioning and incompressible data"
echo
head -c 1048576 /dev/zero > "$scratch/zeros-1m"
$af compress "$scratch/zeros-1m" "$scratch/zeros-1m.af"
echo "- 1 MiB of zeros (file): $(size "$scratch/zeros-1m.af") bytes"
t_z1g=$(best "head -c 1073741824 /dev/zero | $af compress - $scratch/zeros-1g.af")
echo "- 1 GiB of zeros from a pipe: $(size "$scratch/zeros-1g.af") bytes in $t_z1g s"
rm -f "$scratch/sparse-15t"
truncate -s 15T "$scratch/sparse-15t"
t_sparse=$(best "$af compress $scratch/sparse-15t $scratch/sparse.af")
echo "- 15 TiB sparse file (truncate -s 15T): $(size "$scratch/sparse.af") bytes in $t_sparse s"
rm -f "$scratch/sparse-15t"
head -c $((256 << 20)) /dev/urandom > "$scratch/random-256m"
t_rand=$(best "rm -f $scratch/random.af; $af compress $scratch/random-256m $scratch/random.af")
t_rand_z=$(best "rm -f $scratch/random.zst; zstd -q -3 -T2 $scratch/random-256m -o $scratch/random.zst")
rn=$(size "$scratch/random-256m"); ra=$(size "$scratch/random.af")
echo "- 256 MiB of random data: $ra bytes, $((ra - rn)) bytes over the input" \
  "($(python3 -c "print(f'{($ra-$rn)/$rn*100:.4f}')") %), compressed at $(rate "$rn" "$t_rand") MB/s" \
  "(zstd -3 -T2: $(rate "$rn" "$t_rand_z") MB/s)"
echo

# ---- The honest table ---------------------------------------------------------------------------
echo "## What each kind of data costs (aetherflow level 3 vs zstd -3 -T2, same run)"
echo
echo "| data | bytes | aetherflow ratio | aetherflow MB/s | zstd -3 ratio | zstd MB/s |"
echo "|---|---:|---:|---:|---:|---:|"
head -c $((64 << 20)) /dev/zero > "$scratch/zeros-64m"
cp "$corpus/mr.zip" "$scratch/mr.zip"
for entry in "zeros:$scratch/zeros-64m" "text (dickens):$scratch/silesia/dickens" \
  "binary (ooffice DLL):$scratch/silesia/ooffice" "database (osdb):$scratch/silesia/osdb" \
  "already compressed (mr.zip):$scratch/mr.zip" "random:$scratch/random-256m"; do
  label=${entry%%:*}; file=${entry#*:}; n=$(size "$file")
  ta=$(best "rm -f $scratch/k.af; $af compress $file $scratch/k.af")
  tz=$(best "rm -f $scratch/k.zst; zstd -q -3 -T2 $file -o $scratch/k.zst")
  echo "| $label | $n | $(ratio "$n" "$(size "$scratch/k.af")") | $(rate "$n" "$ta") | $(ratio "$n" "$(size "$scratch/k.zst")") | $(rate "$n" "$tz") |"
done
echo

# ---- Memory -------------------------------------------------------------------------------------
if [[ -z ${QUICK:-} ]]; then
  echo "## Peak memory on a 4 GiB stream (/usr/bin/time -v)"
  echo
  c=$( { /usr/bin/time -v bash -c "head -c $((4 << 30)) /dev/urandom | $af compress - $scratch/big.af" ; } 2>&1 | awk '/Maximum resident/ {print int($6/1024)}')
  d=$( { /usr/bin/time -v "$af" decompress "$scratch/big.af" - > /dev/null ; } 2>&1 | awk '/Maximum resident/ {print int($6/1024)}')
  echo "- compress 4 GiB from a pipe: peak RSS $c MiB"
  echo "- decompress it to a pipe: peak RSS $d MiB"
  rm -f "$scratch/big.af"
  echo
fi
rm -f "$scratch"/*.af "$scratch"/*.zst "$scratch/s.out" "$scratch/s.zout" "$scratch/zeros-1m" "$scratch/zeros-64m" "$scratch/random-256m"
