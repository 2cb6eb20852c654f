#!/usr/bin/env bash
# The main job: installs what is missing, builds dsv4, starts `mpirun -np 2 dsv4 serve` on the
# built-in model (the real V4 architecture with seeded random weights: its text is meaningless by
# design), waits for its health to be SERVING, sends a chat request with `dsv4 generate` and prints
# the stream, then drains the server and checks that every rank exited cleanly.
#
#   launch/run.sh [--model DIR|builtin:v4-tiny] [--prompt TEXT] [--max-tokens N] [--np RANKS]
#
# --model takes a checkpoint directory in the published layout (config.json, model*.safetensors,
# tokenizer.json) to serve a real model instead.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
model=builtin:v4-tiny
prompt="Write one sentence about the sea."
max_tokens=32
np=2
while [[ $# -gt 0 ]]; do
  case "$1" in
    --model) model=$2; shift 2 ;;
    --prompt) prompt=$2; shift 2 ;;
    --max-tokens) max_tokens=$2; shift 2 ;;
    --np) np=$2; shift 2 ;;
    *) echo "run.sh: unknown argument $1 (see the header of launch/run.sh)" >&2; exit 2 ;;
  esac
done

source "$root/launch/setup.sh"
dsv4_setup
cuda_flag=()
if ! command -v nvcc >/dev/null 2>&1 && [[ ! -x /usr/local/cuda/bin/nvcc ]]; then cuda_flag=(-DDSV4_CUDA=OFF); fi
DSV4_BUILD_TARGETS=dsv4 dsv4_build build "${cuda_flag[@]}"
dsv4="$root/build/launch/dsv4"

work=$(mktemp -d)
info="$work/serve.json"
log="$work/serve.log"
launcher=()
if [[ $np -gt 1 ]] && command -v mpirun >/dev/null 2>&1; then
  if [[ $(id -u) -eq 0 ]]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
  launcher=(mpirun --oversubscribe -np "$np")
else
  np=1
fi
cores=$(nproc)
threads=$(( cores / np > 0 ? cores / np : 1 ))

echo "== starting: ${launcher[*]} dsv4 serve --model $model (threads per rank: $threads)"
"${launcher[@]}" "$dsv4" serve --model "$model" --port 0 --info-file "$info" --threads "$threads" >"$log" 2>&1 &
job=$!
cleanup() {
  if kill -0 "$job" 2>/dev/null; then
    kill -TERM "$job" 2>/dev/null || true
    sleep 2
    kill -KILL "$job" 2>/dev/null || true
  fi
}
trap cleanup EXIT

for _ in $(seq 1 600); do
  [[ -s "$info" ]] && break
  kill -0 "$job" 2>/dev/null || { cat "$log"; echo "run.sh: dsv4 serve exited early" >&2; exit 1; }
  sleep 0.2
done
[[ -s "$info" ]] || { cat "$log"; echo "run.sh: dsv4 serve did not start listening" >&2; exit 1; }
field() { sed -n "s/.*\"$1\": \"\{0,1\}\([^\",}]*\)\"\{0,1\}.*/\1/p" "$info"; }
server="127.0.0.1:$(field port)"
control=$(field control)
echo "== listening on $server (control plane $control); waiting for health SERVING"

echo "== dsv4 generate --server $server --prompt \"$prompt\""
if [[ $model == builtin:* ]]; then
  echo "   ($model has seeded random weights: the text below is meaningless by design)"
fi
"$dsv4" generate --server "$server" --prompt "$prompt" --max-tokens "$max_tokens" --temperature 0.7 --seed 1 \
  --wait-ready-s 1800

echo "== draining the server"
"$dsv4" ctl drain --server "$control"
set +e
wait "$job"
status=$?
set -e
trap - EXIT
cat "$log"
if [[ $status -ne 0 ]]; then
  echo "run.sh: the server job exited with status $status" >&2
  exit 1
fi
echo "== done: the server drained and every rank exited 0"
