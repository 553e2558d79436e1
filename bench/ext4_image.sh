# Sourced by the bench scripts: `ext4_image SCRATCH CORPUS` builds SCRATCH/disk.img once: an
# ext4 filesystem (mke2fs -d, no mount needed) holding real files (the Silesia corpus,
# /usr/include, /usr/bin) with 30 % free space, and prints its path. SCRATCH/tree is what it
# holds.
ext4_image() {
  local scratch=$1 corpus
  corpus=$(cd "$2" && pwd)
  local image=$scratch/disk.img tree=$scratch/tree
  if [[ ! -f $image ]]; then
    rm -rf "$tree"
    mkdir -p "$tree/silesia"
    for z in "$corpus"/*.zip; do unzip -oq "$z" -d "$tree/silesia"; done
    (cd "$tree/silesia" && sha256sum -c --quiet "$corpus/SHA256SUMS")
    cp -a /usr/include "$tree/include"
    cp -a /usr/bin "$tree/bin"
    local content
    content=$(du -sb "$tree" | cut -f1)
    mke2fs -q -t ext4 -d "$tree" "$image" "$(( content * 13 / 10 / 1048576 + 64 ))M" >&2
  fi
  echo "$image"
}
