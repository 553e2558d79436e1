#!/usr/bin/env bash
# A fuzzing campaign: every target of crates/fuzz-targets run by libFuzzer (fuzz/, cargo fuzz)
# for RUNS executions or MAX_TIME seconds each, whichever comes first, then its corpus minimized in place (fuzz/corpus/TARGET, checked in:
# the test suite replays it on stable Rust). Prints executions, coverage and crashes per
# target; exits non-zero if any target crashed (the input is in fuzz/artifacts/TARGET).
#
#   bash scripts/fuzz.sh                        # 10 million runs (at most 20 minutes) of each target
#   RUNS=100000 TARGETS="manifest af_header" bash scripts/fuzz.sh
#   SANITIZER=none bash scripts/fuzz.sh         # no AddressSanitizer: several times the rate
#
# The decoders are safe Rust, where AddressSanitizer finds little that the bounds checks and the
# debug assertions (overflow checks included) do not; the C in zstd is not instrumented either
# way. Without it, the targets that run threads or a runtime per input go several times faster.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
runs=${RUNS:-10000000}
max_time=${MAX_TIME:-1200}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# cargo fuzz passes -Z flags (sanitizer, coverage passes); the machine's toolchain is stable.
export RUSTC_BOOTSTRAP=1
flags=(-O --debug-assertions -s "${SANITIZER:-address}")
cargo fuzz build "${flags[@]}"
targets=${TARGETS:-$(cargo fuzz list)}
# The targets run from the binaries built above, so that a change to the sources meanwhile
# (the campaign takes hours) cannot break or change them mid-run.
bin_dir=target/x86_64-unknown-linux-gnu/release
mkdir -p logs
printf '%-16s %12s %8s %8s %8s %6s\n' target executions cov features crashes slow
failed=0
for t in $targets; do
  mkdir -p "corpus/$t" "artifacts/$t"
  # Leak checks are off: a leak is no danger in these decoders, and the pipelines' threads make
  # libFuzzer's leak scan run after every input. Inputs are capped at 8 KiB: a decoder's cost
  # grows with its input, and every structure here is reached well within that.
  "$bin_dir/$t" -artifact_prefix="artifacts/$t/" -runs="$runs" -max_total_time="$max_time" \
    -detect_leaks=0 -max_len=8192 -print_final_stats=1 "corpus/$t" > "logs/$t.log" 2>&1 || true
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "logs/$t.log" | tail -n 1)
  done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "logs/$t.log" | tail -n 1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$done_line")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$done_line")
  # libFuzzer also writes slow-unit-* there: an input that took over 10 s of wall time. A
  # stopped or starved process makes those too, so they are counted apart (replay one with
  # `$bin_dir/$t FILE` to see whether it is really slow); crashes, timeouts, leaks and OOMs
  # fail the campaign.
  crashes=$(find "artifacts/$t" -type f ! -name 'slow-unit-*' | wc -l)
  slow=$(find "artifacts/$t" -type f -name 'slow-unit-*' | wc -l)
  (( crashes == 0 )) || failed=1
  printf '%-16s %12s %8s %8s %8s %6s\n' "$t" "${execs:-?}" "${cov:-?}" "${ft:-?}" "$crashes" "$slow"
  # Minimize: the smallest set of inputs with the same coverage replaces the corpus.
  rm -rf "corpus/$t.min"
  mkdir "corpus/$t.min"
  if "$bin_dir/$t" -merge=1 -detect_leaks=0 "corpus/$t.min" "corpus/$t" > "logs/$t.cmin.log" 2>&1; then
    rm -rf "corpus/$t"
    mv "corpus/$t.min" "corpus/$t"
  else
    rm -rf "corpus/$t.min"
  fi
done
exit $failed
