#!/usr/bin/env bash
# Installs what building and testing dsv4 needs, when missing (Debian packages). Sourced by
# run.sh and test.sh; safe to run again.
set -euo pipefail

DSV4_DEBS=(build-essential cmake ccache pkg-config libabsl-dev libspdlog-dev nlohmann-json3-dev libgtest-dev
           libgmock-dev libbenchmark-dev libopenmpi-dev openmpi-bin)

dsv4_missing_debs() {
  local missing=()
  for p in "${DSV4_DEBS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  echo "${missing[@]:-}"
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
}

# Configures and builds into $1 (default build/) with the remaining arguments passed to cmake.
dsv4_build() {
  local dir=${1:-build}
  shift || true
  local root
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  cmake -S "$root" -B "$root/$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
  cmake --build "$root/$dir" -j "$(nproc)"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  dsv4_setup
fi
