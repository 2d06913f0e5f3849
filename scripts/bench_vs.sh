#!/usr/bin/env bash
# Side-by-side speed of this checkout and an earlier commit, in one run (README, docs/measurements.md):
#   scripts/bench_vs.sh [BASE_COMMIT] [MODEL] [CALIBRATION]
# Builds BASE_COMMIT (default: the commit before the engine rework, 03fc488) in a temporary worktree,
# then alternates the two binaries: bench (pp512, tg128) twice each, batched decode of this checkout,
# and the quantization time of both (4-bit g128, 128 x 1024 calibration tokens).
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:-03fc488}
model=${2:-../shared/models/llama-gutenberg-22m}
calib=${3:-../shared/data/gutenberg-heldout/heldout.txt}
scripts/build.sh >/dev/null
new=$PWD/build/gptq
wt=$(mktemp -d /tmp/gptq-base.XXXXXX)
git worktree add -q --detach "$wt" "$base"
trap 'git worktree remove --force "$wt"' EXIT
(cd "$wt" && BUILD_DIR=build scripts/build.sh -DGPTQ_BUILD_TESTS=OFF -DGPTQ_BUILD_BENCH=OFF >/dev/null)
old=$wt/build/gptq
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) threads; load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "base $base: $old"; echo "this: $(git rev-parse --short HEAD)$(git diff --quiet || echo +dirty)"
for round in 1 2; do
  for b in old new; do
    bin=$old; [ $b = new ] && bin=$new
    echo "== round $round, $b"
    "$bin" bench -m "$model" -p 512 -n 128 -r 5 --no-bandwidth | grep -E '\| (pp|tg)'
  done
done
echo "== batched decode (this checkout)"
"$new" bench -m "$model" -p 0 -n 64 -r 3 -b 1,4,16,64 --no-bandwidth | grep -E '\| tg'
for b in old new; do
  bin=$old; [ $b = new ] && bin=$new
  out=$(mktemp -d)
  s=$(date +%s.%N)
  "$bin" quantize -m "$model" -o "$out/q" --calibration "$calib" --seqlen 1024 --nsamples 128 --force -q >/dev/null
  echo "== quantize $b: $(awk -v a="$s" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s wall"
  rm -rf "$out"
done
