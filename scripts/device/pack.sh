#!/usr/bin/env bash
# Packs what a device call needs into .device/ (git-ignored; name it in `carry`): static, stripped
# gptq and gptq_tests (the GPU machine has none of Debian's libraries) and ../shared, compressed
# to fit the 64 MiB a call carries. Then, on the device: scripts/device/cpu_suite.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD_DIR=build-static scripts/build.sh -DGPTQ_STATIC=ON -DGPTQ_CUDA=OFF -DGPTQ_BUILD_BENCH=OFF
rm -rf .device
mkdir -p .device
for b in gptq gptq_tests; do
  strip -o ".device/$b" "build-static/$b"
  xz -T0 -6 ".device/$b"
done
tar -C ../shared -cf - models golden data | xz -T0 -6 >.device/shared.tar.xz
du -sh .device
