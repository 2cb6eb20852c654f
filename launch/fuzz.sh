#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz with clang (AddressSanitizer + UBSan, build-fuzz/) and
# runs each for a bounded time, starting from its seed corpus in tests/fuzz/corpus/<name>/.
# Inputs that reach new code are kept in build-fuzz/corpus/<name>/ (the repo's corpus is not
# touched); a crash, leak, sanitizer report or timeout fails the run and leaves the input in
# build-fuzz/artifacts/<name>/ (reproduce: build-fuzz/tests/fuzz/fuzz_<name> <file>).
#
# The seed is fixed (-seed=1), so a run repeats its inputs: the suite's bounded run is the same run
# everywhere, and a crash it finds reproduces.
#
#   launch/fuzz.sh                         # every fuzzer, DSV4_FUZZ_SECONDS (default 30) each
#   DSV4_FUZZ_SECONDS=3600 launch/fuzz.sh config tokenizer   # longer, on demand
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/launch/setup.sh"
DSV4_DEBS+=(clang-14 libclang-rt-14-dev)  # libFuzzer: only this script needs them
dsv4_setup

seconds=${DSV4_FUZZ_SECONDS:-30}
all=(safetensors safetensors_index config tokenizer_json tokenizer chat convert flags)
targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=("${all[@]}")

build="$root/build-fuzz"
echo "== fuzzers: build (build-fuzz/, clang-14)"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang-14 \
  -DCMAKE_CXX_COMPILER=clang++-14 -DDSV4_CUDA=OFF -DDSV4_BUILD_TESTS=OFF -DDSV4_FUZZ=ON \
  -DDSV4_SANITIZE_ADDRESS=ON -DDSV4_SANITIZE_UNDEFINED=ON >/dev/null
cmake --build "$build" -j "$(nproc)" $(printf -- '--target fuzz_%s ' "${targets[@]}")

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
failed=()
for t in "${targets[@]}"; do
  corpus="$build/corpus/$t" artifacts="$build/artifacts/$t"
  mkdir -p "$corpus" "$artifacts"
  echo "== fuzz_$t: ${seconds}s from tests/fuzz/corpus/$t"
  # One process; -timeout catches inputs that make a parser hang (rows TK-03, RQ-10).
  if ! "$build/tests/fuzz/fuzz_$t" "$corpus" "$root/tests/fuzz/corpus/$t" -max_total_time="$seconds" -seed=1 \
      -timeout=10 -rss_limit_mb=4096 -max_len=65536 -print_final_stats=1 -artifact_prefix="$artifacts/" \
      >"$build/fuzz_$t.log" 2>&1; then
    tail -n 60 "$build/fuzz_$t.log"
    failed+=("$t")
  else
    grep -E "^stat::(number_of_executed_units|new_units_added)|Done [0-9]+ runs" "$build/fuzz_$t.log" || true
  fi
done
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "fuzzers that failed: ${failed[*]} (inputs in build-fuzz/artifacts/)"
  exit 1
fi
