#!/usr/bin/env bash
# The GPU check, run on the GPU machine from inside the folder bundle.sh made:
#   ./run.sh OUT_DIR [SECONDS]
# Runs, each with a share of the time budget (default 420 s) and its log kept in OUT_DIR:
#   1. the gpu tests (CUDA kernels against the CPU kernels, every backend operation; the MoE
#      exchange on the GPU over a one-rank NCCL communicator against the MPI path's dispatcher);
#   2. the same under compute-sanitizer memcheck;
#   3. every v4-tiny golden case through `dsv4 logits --device cuda` (qdq off: 1e-3; on: coarse);
#   4. `dsv4 bench kernels --device cuda` (every kernel against copy bandwidth and cuBLASLt) and
#      `dsv4 bench decode --device cuda` at batch 1, 8 and 64 on builtin:v4-bench;
# and writes OUT_DIR/summary.json: each step's exit code, seconds and the JSON lines it printed.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: run.sh OUT_DIR [SECONDS]}
budget=${2:-420}
mkdir -p "$out"
# NCCL and cuBLASLt (which bench kernels loads when it runs) from the machine's Python packages.
libs=$(find / \( -name libnccl.so.2 -o -name 'libcublasLt.so.1[23]' \) -path '*nvidia*' 2>/dev/null)
nccl=$(grep -m1 libnccl <<<"$libs")
cublaslt=$(grep -m1 libcublasLt <<<"$libs")
export LD_LIBRARY_PATH="$here/lib${nccl:+:$(dirname "$nccl")}${cublaslt:+:$(dirname "$cublaslt")}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export DSV4_SHARED_DIR_OVERRIDE="$here" DSV4_GOLDEN_BINARY="$here/bin/dsv4"
start=$(date +%s)
steps=()

# step NAME SECONDS CMD...: runs CMD with a timeout, logs to OUT/NAME.log, records the result.
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((budget - ($(date +%s) - start)))
  ((left < 10)) && { steps+=("{\"step\": \"$name\", \"skipped\": \"time budget spent\"}"); return; }
  ((limit > left)) && limit=$left
  local t0 rc
  t0=$(date +%s.%N)
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  local secs json
  secs=$(echo "$(date +%s.%N) - $t0" | bc)
  json=$(grep -E '^\{.*\}$' "$out/$name.log" | paste -sd, -)
  steps+=("{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $secs, \"json\": [${json}]}")
  echo "$name: rc $rc, ${secs}s"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/gpu.txt" 2>&1
step cuda_kernels_test 120 "$here/bin/cuda_kernels_test"
step backend_cuda_test 60 "$here/bin/backend_cuda_test"
step device_parallel 60 "$here/bin/device_parallel_test" --gtest_filter='ExpertExchange.*:StagedCommunicator.*'
if command -v compute-sanitizer >/dev/null; then
  step memcheck_kernels 150 compute-sanitizer --tool memcheck --error-exitcode 9 "$here/bin/cuda_kernels_test"
  step memcheck_backend 60 compute-sanitizer --tool memcheck --error-exitcode 9 "$here/bin/backend_cuda_test"
fi
step bench_kernels 120 "$here/bin/dsv4" bench kernels --device cuda --json true --iters 10
DSV4_GOLDEN_ARGS="--device cuda" step golden_cuda 180 "$here/bin/golden_test"
for b in 1 8 64; do
  step "bench_decode_b$b" 120 "$here/bin/dsv4" bench decode --device cuda --batch "$b" --steps 8 --json
done

{
  echo "{\"gpu\": \"$(tr -d '\n' < "$out/gpu.txt")\", \"version\": \"$(cat "$here/VERSION")\","
  echo " \"arch\": \"$(cat "$here/ARCH")\", \"seconds\": $(( $(date +%s) - start )), \"steps\": ["
  (IFS=,; echo "${steps[*]}")
  echo "]}"
} > "$out/summary.json"
cat "$out/summary.json"
