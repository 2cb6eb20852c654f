#!/usr/bin/env bash
# The CPU check: what the CPU kernels and the host MoE exchange must reach on this machine, each
# figure against a limit measured in the same run, in one command:
#
#   launch/cpu_check.sh OUT_DIR [--threads N] [--levels "amx avx512_bf16 ..."]
#
# Installs what is missing and builds dsv4 and golden_test like launch/test.sh (build/), then, at
# every instruction-set level this CPU offers (DSV4_CPU_ISA; a level it lacks is skipped and says
# why), with builtin:v4-bench and --threads N (default 2, the shape the targets were set on):
#   - bench decode at batch 1: ratio_to_stream >= 0.8, no step slower than 1.5x the median;
#   - bench prefill --context 512: ratio_to_peak >= 0.5 of the arithmetic used, and at 2 threads
#     on the amx level >= 200 tokens/s;
#   - the golden cases (ctest golden_isa_<level>);
# at the best level bench decode at batch 8 and 32 (bytes per token, reported); and with mpirun,
# bench comm at 2 ranks and, where the machine has a core per rank, 4 (top-6 and top-16):
# dispatch+combine over raw MPI_Alltoallv of the same bytes >= 0.9; at 4 ranks also the max/mean
# rows per rank of a skewed router (half the tokens to one expert) with and without 4 redundant
# experts. Every command's output is kept in OUT_DIR; OUT_DIR/summary.json has the machine, each
# check (figure, bar, pass | fail | skip and why) and the JSON each command printed. Exits 1 when a
# check failed. docs/cpu_kernels.md and docs/parallelism.md say how the figures are measured.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=""
threads=2
levels="amx avx512_bf16 avx512 avx2"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --threads) threads=$2; shift 2 ;;
    --levels) levels=$2; shift 2 ;;
    -*) echo "cpu_check.sh: unknown argument $1 (see the header of launch/cpu_check.sh)" >&2; exit 2 ;;
    *) out=$1; shift ;;
  esac
done
[[ -n "$out" ]] || { echo "usage: launch/cpu_check.sh OUT_DIR [--threads N] [--levels LIST]" >&2; exit 2; }
mkdir -p "$out" || exit 2
out=$(cd "$out" && pwd)

source "$root/launch/setup.sh"
dsv4_setup || exit 1
cuda_flag=()
if ! command -v nvcc >/dev/null 2>&1 && [[ ! -x /usr/local/cuda/bin/nvcc ]]; then cuda_flag=(-DDSV4_CUDA=OFF); fi
DSV4_BUILD_TARGETS="dsv4 golden_test" dsv4_build build "${cuda_flag[@]}" >"$out/build.log" 2>&1 ||
  { echo "cpu_check: the build failed; see $out/build.log" >&2; exit 1; }
dsv4="$root/build/launch/dsv4"
if [[ $(id -u) -eq 0 ]]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi

checks=()
failed=0
rm -f "$out"/*.rc

# field JSON KEY: a number or string of a flat one-line JSON object.
field() { sed -n "s/.*\"$2\": \"\\{0,1\\}\\([^,\"}]*\\).*/\\1/p" <<<"$1"; }
# check NAME VALUE OP BAR [NOTE]: records a check; OP is >= or <=.
check() {
  local name=$1 value=$2 op=$3 bar=$4 note=${5:-} verdict
  if [[ -z "$value" ]]; then
    verdict=fail note="no figure (see the command's log)"
  elif awk -v v="$value" -v b="$bar" -v op="$op" 'BEGIN { exit !(op == ">=" ? v >= b : v <= b) }'; then
    verdict=pass
  else
    verdict=fail
  fi
  [[ $verdict == fail ]] && ((failed += 1))
  checks+=("{\"check\": \"$name\", \"value\": ${value:-null}, \"bar\": \"$op $bar\", \"verdict\": \"$verdict\"${note:+, \"note\": \"$note\"}}")
  printf '%-44s %-10s %-8s %s %s\n' "$name" "${value:-none}" "$op $bar" "$verdict" "$note"
}
skip() {
  checks+=("{\"check\": \"$1\", \"verdict\": \"skip\", \"note\": \"$2\"}")
  printf '%-44s skip: %s\n' "$1" "$2"
}
# run NAME CMD...: runs CMD, keeps its output in OUT/NAME.log and its exit code in OUT/NAME.rc,
# prints its last JSON line (called in $(...): the summary collects the files afterwards).
run() {
  local name=$1
  shift
  "$@" >"$out/$name.log" 2>&1
  echo $? >"$out/$name.rc"
  grep -E '^\{.*\}$' "$out/$name.log" | tail -1
}

best=""
for level in $levels; do
  # A level the CPU (or the kernel) does not offer runs the best one it does, and says so.
  probe=$(DSV4_CPU_ISA=$level "$dsv4" bench decode --model builtin:v4-tiny --threads 1 --steps 1 --json true 2>&1 |
    grep -E '^\{.*\}$' | tail -1)
  ran=$(field "$probe" isa)
  if [[ "$ran" != "$level" ]]; then
    why=$(field "$probe" amx_unavailable)
    skip "$level" "not offered here (ran ${ran:-nothing})${why:+: $why}"
    continue
  fi
  [[ -z "$best" ]] && best=$level
  d=$(DSV4_CPU_ISA=$level run "decode_b1_$level" "$dsv4" bench decode --threads "$threads" --json true)
  check "$level: decode batch 1 ratio_to_stream" "$(field "$d" ratio_to_stream)" ">=" 0.8
  check "$level: decode slowest step / median" "$(field "$d" max_step_over_median)" "<=" 1.5
  p=$(DSV4_CPU_ISA=$level run "prefill_$level" "$dsv4" bench prefill --threads "$threads" --context 512 --json true)
  check "$level: prefill ratio_to_peak" "$(field "$p" ratio_to_peak)" ">=" 0.5 "of $(field "$p" peak_kind)"
  if [[ $level == amx && $threads == 2 ]]; then
    check "amx: prefill tokens/s at 2 threads" "$(field "$p" tokens_per_s)" ">=" 200
  fi
  (cd "$root/build" && ctest -R "^golden_isa_${level}\$" --output-on-failure >"$out/golden_$level.log" 2>&1)
  if grep -q -E "\*\*\*Skipped|Not Run" "$out/golden_$level.log"; then
    skip "$level: golden cases" "ctest skipped them (see golden_$level.log)"
  elif grep -q "100% tests passed" "$out/golden_$level.log"; then
    checks+=("{\"check\": \"$level: golden cases\", \"verdict\": \"pass\"}")
    printf '%-44s pass\n' "$level: golden cases"
  else
    ((failed += 1))
    checks+=("{\"check\": \"$level: golden cases\", \"verdict\": \"fail\", \"note\": \"see golden_$level.log\"}")
    printf '%-44s fail (see %s)\n' "$level: golden cases" "$out/golden_$level.log"
  fi
done
if [[ -n "$best" ]]; then
  for b in 8 32; do
    d=$(DSV4_CPU_ISA=$best run "decode_b${b}_$best" "$dsv4" bench decode --threads "$threads" --batch "$b" --json true)
    echo "$best: decode batch $b: $(field "$d" tokens_per_s) tokens/s, $(field "$d" bytes_per_token) bytes/token"
  done
fi

cores=$(nproc)
if ! command -v mpirun >/dev/null 2>&1; then
  skip "bench comm" "mpirun not found"
else
  for np in 2 4; do
    if ((cores < np)); then
      skip "bench comm, $np ranks" "$np ranks need a core each; this machine has $cores"
      continue
    fi
    for k in 6 16; do
      c=$(run "comm_np${np}_top$k" mpirun --oversubscribe -np "$np" "$dsv4" bench comm --experts-per-token "$k" \
        --json true)
      check "bench comm, $np ranks, top-$k: raw / ours" "$(field "$c" ratio)" ">=" 0.9
    done
  done
  if ((cores >= 4)); then
    c=$(run comm_np4_skewed mpirun --oversubscribe -np 4 "$dsv4" bench comm --hot-fraction 0.5 \
      --redundant-experts 4 --json true)
    echo "skewed router, 4 ranks: max/mean rows per rank $(field "$c" rows_imbalance) contiguous," \
      "$(field "$c" rows_imbalance_redundant) with 4 redundant experts"
  fi
fi

cpu=$("$dsv4" bench comm --tokens 1 --iters 1 --hidden 16 --experts 8 --json true 2>/dev/null | tail -1)
flags=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|avx512f|avx512_bf16|amx_tile|amx_bf16)$' |
  paste -sd' ')
outputs=()
for rc in "$out"/*.rc; do
  [[ -e "$rc" ]] || continue
  name=$(basename "$rc" .rc)
  json=$(grep -E '^\{.*\}$' "$out/$name.log" | tail -1)
  outputs+=("{\"step\": \"$name\", \"rc\": $(cat "$rc"), \"json\": ${json:-null}}")
done
{
  echo "{\"cpu\": \"$(field "$cpu" cpu)\", \"cores\": $cores, \"flags\": \"$flags\", \"threads\": $threads,"
  echo " \"checks\": ["
  (IFS=,; echo "${checks[*]}")
  echo "], \"outputs\": ["
  (IFS=,; echo "${outputs[*]}")
  echo "]}"
} >"$out/summary.json"
echo "cpu_check: $failed failed; $out/summary.json"
((failed == 0))
