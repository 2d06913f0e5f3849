#!/usr/bin/env bash
# Packs what a GPU device call needs into .device/ (git-ignored; name it in `carry`): gptq,
# gptq_tests and gptq_cuda_workbench built with CUDA (Debian's libraries and the C++ runtime linked
# in; glibc and cuBLAS from the GPU machine), stripped and compressed, and ../shared.
# Then one device call: scripts/device/gpu_check.sh [what...] (see there).
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD_DIR=${BUILD_DIR:-build-cuda-static} scripts/build.sh -DGPTQ_STATIC=ON -DGPTQ_CUDA=ON -DGPTQ_BUILD_BENCH=ON \
  -DCMAKE_CUDA_ARCHITECTURES="${GPTQ_CUDA_ARCHS:-90a-real;80}"
b=${BUILD_DIR:-build-cuda-static}
rm -rf .device
mkdir -p .device
for t in gptq gptq_tests gptq_cuda_workbench; do
  [ -x "$b/$t" ] || continue
  strip -o ".device/$t" "$b/$t"
  xz -T0 -6 ".device/$t"
done
tar -C ../shared -cf - models golden data | xz -T0 -6 >.device/shared.tar.xz
du -sh .device
