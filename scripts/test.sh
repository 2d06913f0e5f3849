#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite; then the test suite again
# under AddressSanitizer + UndefinedBehaviorSanitizer (slow golden cases filtered out there).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
(cd build && ctest --output-on-failure -j "$(nproc)" --timeout 1500)
if [ "${GPTQ_SKIP_SANITIZE:-0}" != "1" ]; then
  BUILD_DIR=build-asan scripts/build.sh -DCMAKE_BUILD_TYPE=RelWithDebInfo -DGPTQ_SANITIZE=ON -DGPTQ_CUDA=OFF -DGPTQ_BUILD_BENCH=OFF
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
    ./build-asan/gptq_tests --gtest_filter='-*Slow*' --gtest_brief=1
fi
