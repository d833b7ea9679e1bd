#!/usr/bin/env bash
# Builds the libFuzzer targets with clang + ASan + UBSan (--config=fuzz) and
# runs each for SECONDS (default 300), one after another on one core, from a
# scratch copy of its seed corpus. Prints each target's executions; any
# finding stops the script with libFuzzer's report and the crashing input.
#   fuzz/run_fuzzers.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-300}
shift || true
targets=("$@")
((${#targets[@]})) || targets=(pickle_fuzzer zip_fuzzer dcp_metadata_fuzzer torch_file_fuzzer cli_fuzzer)
# A separate output base: the clang toolchain would otherwise replace the gcc
# one in the main output base's analysis cache.
bz=(bazel --output_base="${FABRIC_FUZZ_OUTPUT_BASE:-$HOME/.cache/fabric_cpp/fuzz_output_base}")
"${bz[@]}" build --config=fuzz "${targets[@]/#/\/\/fuzz:}"
bin=$("${bz[@]}" info --config=fuzz bazel-bin)
work=${FABRIC_FUZZ_WORK:-/tmp/fabric_fuzz_work}
export ASAN_OPTIONS=detect_leaks=1:protect_shadow_gap=0:allocator_may_return_null=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
for t in "${targets[@]}"; do
  corpus=fuzz/corpus/${t%_fuzzer}
  mkdir -p "$work/$t/corpus" "$work/$t/artifacts"
  log="$work/$t/log.txt"
  "$bin/fuzz/$t" -max_total_time="$secs" -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$work/$t/artifacts/" "$work/$t/corpus" "$corpus" >"$log" 2>&1 || {
    tail -50 "$log"
    echo "FINDING in $t (log: $log)"
    exit 1
  }
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')
  echo "$t: $runs executions in ${secs} s, no finding (corpus $(ls "$work/$t/corpus" | wc -l) inputs)"
done
