#!/usr/bin/env bash
# Installs what is missing, builds dsv4 and runs the test suite (every ctest label but `gpu`,
# which runs only where a GPU is present). Then builds the safetensors and model-loading tests
# and the fuzz targets' corpus replays under AddressSanitizer + UBSan and runs them (malformed
# checkpoints, configs, tokenizers, chats and flags must never crash). Last, every libFuzzer target
# runs for DSV4_FUZZ_SECONDS (default 30) from its corpus (launch/fuzz.sh; a clang build of its own).
#
#   launch/test.sh            # everything
#   DSV4_TEST_LABELS=unit launch/test.sh   # one label (ctest -L regex)
#   DSV4_FUZZ_SECONDS=600 launch/test.sh   # everything, each fuzzer for 10 minutes
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/launch/setup.sh"
dsv4_setup

# With nvcc present the CUDA backend is required (a broken toolkit fails the build, never silently
# drops the CUDA path); it compiles without a GPU, and the `gpu` tests skip then.
cuda_flag=(-DDSV4_CUDA=ON)
if ! command -v nvcc >/dev/null 2>&1 && [[ ! -x /usr/local/cuda/bin/nvcc ]]; then cuda_flag=(-DDSV4_CUDA=OFF); fi

echo "== build (build/)"
dsv4_build build "${cuda_flag[@]}"

labels=${DSV4_TEST_LABELS:-}
exclude="gpu"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then exclude="^$"; fi
echo "== tests"
(cd "$root/build" && ctest --output-on-failure -j 2 ${labels:+-L "$labels"} -LE "$exclude")

if [[ -z "$labels" ]]; then
  echo "== loader tests and fuzz corpora under AddressSanitizer + UBSan (build-asan/)"
  # Every fuzz target but convert (which would pull gRPC and protobuf into this build).
  fuzzers=(safetensors safetensors_index config tokenizer_json tokenizer chat flags)
  replays=$(IFS='|'; echo "${fuzzers[*]}")
  DSV4_BUILD_TARGETS="safetensors_test config_test ${fuzzers[*]/#/fuzz_}" dsv4_build build-asan -DDSV4_CUDA=OFF \
    -DDSV4_SANITIZE_ADDRESS=ON -DDSV4_SANITIZE_UNDEFINED=ON -DCMAKE_BUILD_TYPE=Debug
  (cd "$root/build-asan" && UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --output-on-failure -j 2 -R "^(Safetensors[A-Za-z]*|Config|Weights)\\.|^fuzz_corpus_(${replays})\$")
  # Coverage-guided fuzzing, bounded in time: a clang build of its own (build-fuzz/).
  "$root/launch/fuzz.sh"
fi
