#!/usr/bin/env bash
# Installs what is missing, builds, and runs the tests.
#   scripts/test.sh             the suite CI runs (everything but the cases named Slow*), then
#                               a 20 s run of each fuzz target (scripts/fuzz.sh)
#   scripts/test.sh --all       also the Slow* cases (the full quantization quality matrix)
#   scripts/test.sh --sanitize  also the suite under AddressSanitizer + UndefinedBehaviorSanitizer
set -euo pipefail
cd "$(dirname "$0")/.."
all=0 sanitize=0
for a in "$@"; do
  case "$a" in
    --all) all=1 ;;
    --sanitize) sanitize=1 ;;
    *) echo "usage: scripts/test.sh [--all] [--sanitize]" >&2; exit 2 ;;
  esac
done
scripts/setup.sh
scripts/build.sh
exclude=(-E Slow)
[ "$all" = 1 ] && exclude=()
(cd build && ctest --output-on-failure -j "$(nproc)" --timeout 3000 "${exclude[@]}")
# A short run of every libFuzzer target (clang build in build-fuzz/, ~20 s each; see README).
scripts/fuzz.sh
if [ "$sanitize" = 1 ]; then
  # clang at -O1: builds in ~7 min on 2 cores (gcc at -O2 took ~19); the unit tests then take ~6 min.
  # Not in CI: with the suite and the fuzz runs it would pass the 40-minute budget.
  CC=clang CXX=clang++ BUILD_DIR=build-asan scripts/build.sh -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1" -DGPTQ_SANITIZE=ON -DGPTQ_CUDA=OFF -DGPTQ_BUILD_BENCH=OFF
  # The long golden and quality cases are left out: under ASan they take an hour and add no coverage.
  # GPTQ_CLI: the CLI cases run the sanitized gptq too.
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 GPTQ_CLI="$PWD/build-asan/gptq" \
    ./build-asan/gptq_tests --gtest_brief=1 --gtest_filter='-*Wikitext*:*ReferenceQuality*:*Slow*'
fi
