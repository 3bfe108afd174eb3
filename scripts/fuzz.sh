#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan, build-fuzz/) and runs each for a bounded
# time, one after another, printing libFuzzer's final stats line per target.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET=60] [TARGET...]     targets: protocol config safetensors
#
# Inputs that crash, leak, hit UB or break a checked promise land in fuzz/crashes/TARGET/
# (crash-*, leak-*, timeout-*, oom-*); docs/fuzzing.md says how to turn one into a
# regression test. New interesting inputs go to build-fuzz/corpus/TARGET/ (kept between
# runs); the seeds in fuzz/corpus/TARGET/ and the saved regressions are read, never written.
# fuzz/TARGET.dict, where present, is the libFuzzer dictionary (keys, edge numbers).
# Environment: FUZZ_BUILD_DIR (build-fuzz), FUZZ_JOBS (2), FUZZ_MAX_LEN (8192), FUZZ_ARGS (extra
# libFuzzer flags). Exit status 1 when any target found something.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${1:-60}
[ $# -gt 0 ] && shift
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(protocol config safetensors)
BUILD_DIR=${FUZZ_BUILD_DIR:-build-fuzz}

if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
  GEN=()
  command -v ninja >/dev/null && GEN=(-G Ninja)
  CC=clang CXX=clang++ cmake -S . -B "$BUILD_DIR" "${GEN[@]}" -DINFER_CUDA=OFF -DINFER_FUZZ=ON \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo
fi
cmake --build "$BUILD_DIR" -j"${FUZZ_JOBS:-2}" --target "${TARGETS[@]/#/fuzz_}"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
found=0
summary=()
for t in "${TARGETS[@]}"; do
  work="$BUILD_DIR/corpus/$t"
  crashes="fuzz/crashes/$t"
  log="$BUILD_DIR/fuzz-$t.log"
  mkdir -p "$work" "$crashes" "fuzz/regressions/$t"
  before=$(ls "$crashes" | wc -l)
  echo "== fuzz_$t: ${SECS}s (log: $log)"
  dict=()
  [ -f "fuzz/$t.dict" ] && dict=(-dict="fuzz/$t.dict")
  rc=0
  # shellcheck disable=SC2086
  "$BUILD_DIR/fuzz/fuzz_$t" -max_total_time="$SECS" -max_len="${FUZZ_MAX_LEN:-8192}" -timeout=10 \
    -print_final_stats=1 -artifact_prefix="$crashes/" "${dict[@]}" ${FUZZ_ARGS:-} \
    "$work" "fuzz/corpus/$t" "fuzz/regressions/$t" >"$log" 2>&1 || rc=$?
  # The last stats line ("#N DONE cov: ... corp: ... exec/s: ...", or the last pulse before a crash).
  stats=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  corpus=$(ls "$work" | wc -l)
  new=$(( $(ls "$crashes" | wc -l) - before ))
  echo "$stats"
  line="fuzz_$t: ${SECS}s, executions ${execs:-?}, exec/s ${eps:-?}, corpus $corpus (+$(ls "fuzz/corpus/$t" | wc -l) seeds), exit $rc, new findings $new"
  if [ "$rc" -ne 0 ] || [ "$new" -gt 0 ]; then
    found=1
    grep -E 'ERROR: |runtime error:|broken promise|SUMMARY:|Test unit written' "$log" | head -n 8 || true
  fi
  echo "$line"
  summary+=("$line")
done
echo "== summary"
printf '%s\n' "${summary[@]}"
exit $found
