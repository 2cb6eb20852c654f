#!/usr/bin/env bash
# Builds dsv4 for one GPU architecture and gathers what a GPU machine needs to check it into one
# folder: the binaries (stripped), the shared libraries they load beyond the C/C++ runtime (NCCL and
# the driver come from the GPU machine), the v4-tiny golden data and launch/gpu_check/run.sh. The
# GPU machine needs the NVIDIA driver, a CUDA runtime and Python, none of our build dependencies.
#
#   launch/gpu_check/bundle.sh [ARCH] [DIR]     # ARCH: 90 (H100/H200, default), 89 (RTX 4090), 80
#   (on the GPU machine)  DIR/run.sh OUT_DIR     # tests, memcheck, golden on the GPU, benchmarks
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
arch=${1:-90}
dir=${2:-$root/gpu-bundle}
source "$root/launch/setup.sh"
dsv4_setup
targets="dsv4 cuda_kernels_test backend_cuda_test golden_test device_parallel_test"
echo "== build for sm_$arch (build-sm$arch/)"
DSV4_BUILD_TARGETS="$targets" dsv4_build "build-sm$arch" -DDSV4_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch" \
  -DCMAKE_BUILD_TYPE=Release

rm -rf "$dir"
mkdir -p "$dir/bin" "$dir/lib" "$dir/golden"
cp "$root/build-sm$arch/launch/dsv4" "$dir/bin/"
for t in cuda_kernels_test backend_cuda_test golden_test device_parallel_test; do cp "$root/build-sm$arch/tests/$t" "$dir/bin/"; done
strip --strip-debug "$dir"/bin/*
# Shared libraries beyond the C/C++ runtime, the driver and NCCL (the GPU machine has those).
for bin in "$dir"/bin/*; do
  ldd "$bin" | awk '$3 ~ /^\// {print $3}'
done | sort -u | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so*|libm.so*|libstdc++.so*|libgcc_s.so*|ld-linux*|libpthread.so*|libdl.so*|librt.so*|libcuda.so*|libnccl.so*) ;;
    *) cp -L "$lib" "$dir/lib/" ;;
  esac
done
strip --strip-unneeded "$dir"/lib/* 2>/dev/null || true
cp -r "${DSV4_SHARED_DIR:-$root/../shared}/golden/v4-tiny" "$dir/golden/"
cp "$root/launch/gpu_check/run.sh" "$dir/"
git -C "$root" describe --always --dirty > "$dir/VERSION" 2>/dev/null || echo unknown > "$dir/VERSION"
echo "sm_$arch" > "$dir/ARCH"
echo "== $dir: $(du -sh "$dir" | cut -f1) ($(ls "$dir/lib" | wc -l) libraries)"
