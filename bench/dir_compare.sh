#!/usr/bin/env bash
# Directory archives against the tar + zstd pipeline, in the same run, and the round trips
# checked. Prints the markdown table quoted in the README.
#
#   bash bench/dir_compare.sh          # about 5 minutes, ~3 GiB of scratch disk under target/
#   DATA=/dev/shm/af-corpus SCRATCH=/dev/shm/af-dirbench bash bench/dir_compare.sh
#                                      # the same in RAM: restoring 100,000 small files to a disk
#                                      # swings 5x from run to run with the filesystem's writeback,
#                                      # for tar as much as for aetherflow
#
# Scratch data (the unzipped corpus, the generated trees, archives, restores) goes to
# target/corpus and target/dirbench, never into the repository. Times are wall clock, best of
# $RUNS runs, with warm caches; removing the previous restore is not timed.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
corpus=${CORPUS:-$top/../shared/corpus/silesia}
data=${DATA:-$top/target/corpus}
scratch=${SCRATCH:-$top/target/dirbench}
runs=${RUNS:-3}
cd "$top"
for tool in tar zstd python3 unzip diff find; do
  command -v "$tool" >/dev/null || { echo "bench needs $tool" >&2; exit 1; }
done
cargo build --release --quiet -p aetherflow
af=$top/target/release/aetherflow
mkdir -p "$data" "$scratch"

# ---- inputs ---------------------------------------------------------------------------------------
if [[ ! -f $data/silesia/.done ]]; then
  mkdir -p "$data/silesia"
  for z in "$corpus"/*.zip; do unzip -oq "$z" -d "$data/silesia"; done
  (cd "$data/silesia" && sha256sum -c --quiet "$corpus/SHA256SUMS")
  touch "$data/silesia/.done"
fi
files=(dickens mr nci ooffice osdb reymont xml)
if [[ ! -d $data/dir-silesia ]]; then
  mkdir -p "$data/dir-silesia"
  for f in "${files[@]}"; do cp -p "$data/silesia/$f" "$data/dir-silesia/"; done
fi
if [[ ! -d $data/dir-double ]]; then
  mkdir -p "$data/dir-double"
  for f in "${files[@]}"; do
    cp -p "$data/silesia/$f" "$data/dir-double/$f"
    cp -p "$data/silesia/$f" "$data/dir-double/$f.copy"
  done
fi
if [[ ! -f $data/dir-small.done ]]; then
  rm -rf "$data/dir-small"
  # 100,000 files of 1-4 KiB in 100 folders: lines of English and XML from the corpus, log-like
  # lines with numbers and identifiers, and some binary-ish records, mixed per file.
  python3 - "$data/silesia" "$data/dir-small" <<'PY'
import os, random, sys
src, out = sys.argv[1], sys.argv[2]
rng = random.Random(42)
text = open(os.path.join(src, "dickens"), "rb").read().splitlines()
xml = open(os.path.join(src, "xml"), "rb").read().splitlines()
osdb = open(os.path.join(src, "osdb"), "rb").read()
words = [w for w in open(os.path.join(src, "dickens"), "rb").read().split()[:200000] if w.isalpha()]
levels = [b"INFO", b"WARN", b"DEBUG", b"ERROR"]
for d in range(100):
    folder = os.path.join(out, f"d{d:03}")
    os.makedirs(folder)
    for i in range(1000):
        size = rng.randint(1024, 4096)
        kind = rng.randrange(4)
        parts, n = [], 0
        while n < size:
            if kind == 0:
                line = rng.choice(text)
            elif kind == 1:
                line = rng.choice(xml)
            elif kind == 2:
                line = b"%d-%02d-%02dT%02d:%02d:%02d %s req=%08x user=%s took %dms" % (
                    2024, rng.randint(1, 12), rng.randint(1, 28), rng.randrange(24), rng.randrange(60),
                    rng.randrange(60), rng.choice(levels), rng.getrandbits(32), rng.choice(words),
                    rng.randint(1, 5000))
            else:
                at = rng.randrange(len(osdb) - 256)
                line = osdb[at:at + rng.randint(32, 256)]
            parts.append(line + b"\n")
            n += len(line) + 1
        with open(os.path.join(folder, f"f{i:04}.{['txt','xml','log','dat'][kind]}"), "wb") as f:
            f.write(b"".join(parts)[:size])
PY
  touch "$data/dir-small.done"
fi

# ---- measuring ----------------------------------------------------------------------------------
# best SETUP COMMAND: best wall time of $runs runs of COMMAND, SETUP run untimed before each.
best() {
  python3 - "$runs" "$1" "$2" <<'PY'
import subprocess, sys, time
runs, setup, cmd = int(sys.argv[1]), sys.argv[2], sys.argv[3]
best = None
for _ in range(runs):
    subprocess.run(setup, shell=True, check=True)
    t = time.perf_counter()
    subprocess.run(cmd, shell=True, check=True)
    dt = time.perf_counter() - t
    best = dt if best is None else min(best, dt)
print(f"{best:.2f}")
PY
}
size() { stat -c %s "$1"; }
bytes_in() { find "$1" -type f -printf '%s\n' | awk '{s+=$1} END {print s}'; }
ratio() { python3 -c "print(f'{$1/$2:.3f}')"; }
meta() { (cd "$1" && find . -mindepth 1 -printf '%P %y %m %s %T@ %l\n' | awk '$2=="d"{$4=0} {print}' | sort); }

check_round_trip() {
  local src=$1 dest=$2
  diff -r --no-dereference "$src" "$dest" >/dev/null || { echo "diff -r FAILED for $src" >&2; exit 1; }
  diff <(meta "$src") <(meta "$dest") >/dev/null || { echo "metadata differs for $src" >&2; exit 1; }
}

echo "# Directory archives, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, zstd $(zstd -V | grep -o 'v[0-9.]*'), best of $runs"
echo
echo "| folder | files | bytes | tar+zstd -3 ratio | aetherflow ratio | tar \\| zstd -3 -T2 s | compress-directory s | zstd -d \\| tar x s | decompress s |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
declare -A af_size
for name in dir-silesia dir-double dir-small; do
  dir=$data/$name
  n=$(bytes_in "$dir")
  count=$(find "$dir" -type f | wc -l)
  tz=$scratch/$name.tar.zst
  a=$scratch/$name.af
  t_tar=$(best "rm -f $tz" "tar cf - -C $data $name | zstd -q -3 -T2 -o $tz")
  t_af=$(best "rm -f $a" "$af compress-directory $dir $a")
  t_untar=$(best "rm -rf $scratch/untar && mkdir $scratch/untar" "zstd -q -d -c $tz | tar xf - -C $scratch/untar")
  t_unaf=$(best "rm -rf $scratch/unaf" "$af decompress $a $scratch/unaf")
  check_round_trip "$dir" "$scratch/unaf"
  # tar's default format keeps whole seconds only: its restore is checked by content.
  diff -r --no-dereference "$dir" "$scratch/untar/$name" >/dev/null
  af_size[$name]=$(size "$a")
  echo "| $name | $count | $n | $(ratio "$n" "$(size "$tz")") | $(ratio "$n" "$(size "$a")") | $t_tar | $t_af | $t_untar | $t_unaf |"
  eval "t_tar_$((${#af_size[@]}))=$t_tar"
  eval "t_af_$((${#af_size[@]}))=$t_af"
  eval "t_untar_$((${#af_size[@]}))=$t_untar"
  eval "t_unaf_$((${#af_size[@]}))=$t_unaf"
done
echo
echo "- doubled folder: archive $(ratio "${af_size[dir-double]}" "${af_size[dir-silesia]}")x the single copy's ($(( ${af_size[dir-double]} - ${af_size[dir-silesia]} )) bytes more)"
echo "- time aetherflow / tar+zstd: silesia archive $(ratio "$t_af_1" "$t_tar_1")x, restore $(ratio "$t_unaf_1" "$t_untar_1")x;" \
  "small files archive $(ratio "$t_af_3" "$t_tar_3")x, restore $(ratio "$t_unaf_3" "$t_untar_3")x"
echo "- round trips: diff -r and type/mode/size/mtime/link target of every entry identical (all folders)"
rm -rf "$scratch/untar" "$scratch/unaf"
