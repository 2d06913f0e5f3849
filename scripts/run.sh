#!/usr/bin/env bash
# The main job: installs what is missing, builds, then on MODEL (default: the shared
# llama-gutenberg-22m) shows what the model is, generates a paragraph, measures perplexity on
# WikiText-2 and prints a benchmark table.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-../shared/models/llama-gutenberg-22m}
wiki=../shared/data/wikitext-2-raw/wiki.test.raw
if [ ! -d "$model" ]; then
  echo "run.sh: model folder $model not found (give one: scripts/run.sh PATH/TO/MODEL)" >&2
  exit 2
fi
scripts/setup.sh
scripts/build.sh
gptq=./build/gptq
echo "== inspect"; $gptq inspect "$model"
echo; echo "== generate"
$gptq generate -m "$model" -p "It was a dark and stormy night, and" -n 96 --seed 1
if [ -f "$wiki" ]; then
  echo; echo "== perplexity (WikiText-2 test, first 16 windows)"
  $gptq perplexity -m "$model" -f "$wiki" --wikitext --windows 0:16
fi
echo; echo "== bench"
$gptq bench -m "$model" -p 256 -n 64 -r 3
