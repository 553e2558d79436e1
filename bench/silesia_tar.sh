# Sourced by the bench scripts: `silesia_tar SCRATCH CORPUS` makes SCRATCH/silesia.tar (the
# seven corpus files as one tar, checked against SHA256SUMS, reproducible bytes) once, and
# prints its path.
silesia_tar() {
  local scratch=$1 corpus
  corpus=$(cd "$2" && pwd)
  local tar_file=$scratch/silesia.tar
  if [[ ! -f $tar_file ]]; then
    mkdir -p "$scratch/silesia"
    for z in "$corpus"/*.zip; do unzip -oq "$z" -d "$scratch/silesia"; done
    (cd "$scratch/silesia" && sha256sum -c --quiet "$corpus/SHA256SUMS")
    tar -C "$scratch/silesia" --sort=name --mtime=@0 --owner=0 --group=0 -cf "$tar_file" \
      dickens mr nci ooffice osdb reymont xml
  fi
  echo "$tar_file"
}
