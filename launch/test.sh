#!/usr/bin/env bash
# Installs what is missing, builds dsv4 and runs the test suite (every ctest label but `gpu`,
# which runs only where a GPU is present). Then builds the safetensors and model-loading tests
# under AddressSanitizer + UBSan and runs them (malformed checkpoints must never crash).
#
#   launch/test.sh            # everything
#   DSV4_TEST_LABELS=unit launch/test.sh   # one label (ctest -L regex)
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
  echo "== loader tests under AddressSanitizer + UBSan (build-asan/)"
  DSV4_BUILD_TARGETS="safetensors_test config_test" dsv4_build build-asan -DDSV4_CUDA=OFF \
    -DDSV4_SANITIZE_ADDRESS=ON -DDSV4_SANITIZE_UNDEFINED=ON -DCMAKE_BUILD_TYPE=Debug
  (cd "$root/build-asan" && ctest --output-on-failure -R "^(Safetensors[A-Za-z]*|Config|Weights)\\.")
fi
