#!/usr/bin/env bash
# The main job: installs what is missing, builds, then on MODEL (default: the shared
# llama-gutenberg-22m) shows what the model is, generates a paragraph, quantizes it with GPTQ
# (4-bit, group 128) and prints the comparison table of the original and the quantized model.
#   scripts/run.sh [MODEL [CALIBRATION.txt]]
set -euo pipefail
cd "$(dirname "$0")/.."
shared=../shared
model=${1:-$shared/models/llama-gutenberg-22m}
if [ ! -d "$model" ]; then
  echo "run.sh: model folder $model not found (give one: scripts/run.sh PATH/TO/MODEL)" >&2
  exit 2
fi
wiki=(-f $shared/data/wikitext-2-raw/wiki.test.raw --wikitext --windows 0:32)
if [ -n "${2:-}" ]; then
  calib=$2; seqlen=512; ppl=("${wiki[@]}")
elif [ "$(basename "$model")" = llama-gutenberg-22m ]; then
  # the model's held-out books: calibrate on windows 0-127, judge on 128-191 (golden/README.md)
  calib=$shared/data/gutenberg-heldout/heldout.txt; seqlen=1024; ppl=(-f "$calib" --ctx 1024 --windows 128:192)
else
  calib=$shared/data/c4-sample/c4.utf8; seqlen=512; ppl=("${wiki[@]}")
fi
scripts/setup.sh
scripts/build.sh
gptq=./build/gptq
out=out/$(basename "$model")-gptq-4bit
mkdir -p out
echo "== inspect"; $gptq inspect "$model"
echo; echo "== generate"
$gptq generate -m "$model" -p "It was a dark and stormy night, and" -n 96 --seed 1
echo; echo "== quantize (GPTQ 4-bit, group 128, 128 calibration windows of $seqlen tokens from $(basename "$calib"))"
$gptq quantize -m "$model" -o "$out" --bits 4 --group-size 128 --calibration "$calib" --seqlen "$seqlen" --nsamples 128 --force
echo; echo "== compare"
$gptq bench --compare "$model" "$out" -p 512 -n 128 -r 3 "${ppl[@]}"
