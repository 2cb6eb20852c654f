#!/usr/bin/env bash
# The main job: installs what is missing, builds dsv4, and generates greedily with the built-in
# model (random weights, real V4 architecture), printing the generated ids and timing.
#
#   launch/run.sh [dsv4 complete flags...]     e.g. --model /path/to/checkpoint --prompt-ids 0,1,2
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/launch/setup.sh"
dsv4_setup
cuda_flag=()
if ! command -v nvcc >/dev/null 2>&1 && [[ ! -x /usr/local/cuda/bin/nvcc ]]; then cuda_flag=(-DDSV4_CUDA=OFF); fi
dsv4_build build "${cuda_flag[@]}" --target dsv4
exec "$root/build/launch/dsv4" complete --model builtin:v4-tiny "$@"
