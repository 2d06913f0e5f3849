#!/usr/bin/env bash
# Issue 13's quality table for llama-gutenberg-22m: each configuration quantized with each grid
# (calibration: windows 0-127 of heldout.txt, ctx 1024, the golden protocol), then evaluated against
# the unquantized model on two held-out texts: windows 128-191 of heldout.txt (in domain, never seen
# by calibration) and windows 128-191 of WikiText-2 test (--wikitext; out of domain for this model).
# Perplexity, mean KL divergence and top-1 agreement come from `gptq perplexity --kl-divergence`.
#
#   scripts/grid_quality.sh [--out DIR] [--threads N] [--heldout A:B] [--wiki A:B] [--reuse] CONFIG...
#     CONFIG: name:bits:group:grid[:extra quantize flags, comma-separated], e.g.
#             4b-mse:4:128:mse   3b-minmax-act:3:128:minmax:--desc-act
#     --heldout / --wiki: the evaluation windows (default 128:192 both)
#     --reuse: keep a checkpoint already in DIR/name (and its quantize report) instead of re-quantizing
# Appends one JSON object per configuration to DIR/runs.jsonl (default out/grid-quality).
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${GPTQ_SHARED:-../shared}
[ -d "$shared/models" ] || shared=/work/shared
bin=${BUILD_DIR:-build}/gptq out=out/grid-quality threads=0 hw=128:192 ww=128:192 reuse=0
while [ $# -gt 0 ]; do
  case "$1" in
    --heldout) hw=$2; shift 2 ;;
    --wiki) ww=$2; shift 2 ;;
    --reuse) reuse=1; shift ;;
    --out) out=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) break ;;
  esac
done
model=$shared/models/llama-gutenberg-22m
heldout=$shared/data/gutenberg-heldout/heldout.txt
wiki=$shared/data/wikitext-2-raw/wiki.test.raw
mkdir -p "$out"
for spec in "$@"; do
  IFS=: read -r name bits group grid extra <<<"$spec"
  q=$out/$name
  IFS=, read -r -a flags <<<"${extra:-}"
  t0=$(date +%s.%N)
  [ "$reuse" = 1 ] && [ -f "$q/model.safetensors" ] && [ -s "$out/$name.quantize.json" ] ||
  "$bin" quantize -m "$model" -o "$q" --calibration "$heldout" --seqlen 1024 --nsamples 128 --bits "$bits" \
    --group-size "$group" --grid "$grid" "${flags[@]}" --threads "$threads" --force -q --json >"$out/$name.quantize.json"
  wall=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  "$bin" perplexity -m "$q" -f "$heldout" --ctx 1024 --windows "$hw" --kl-divergence "$model" --threads "$threads" \
    --json 2>/dev/null >"$out/$name.heldout.json"
  "$bin" perplexity -m "$q" -f "$wiki" --wikitext --ctx 1024 --windows "$ww" --kl-divergence "$model" \
    --threads "$threads" --json 2>/dev/null >"$out/$name.wiki.json"
  python3 - "$name" "$bits" "$group" "$grid" "${extra:-}" "$wall" "$out" "$hw" "$ww" <<'PY' | tee -a "$out/runs.jsonl"
import json, sys
name, bits, group, grid, extra, wall, out, hw, ww = sys.argv[1:]
qz = json.load(open(f"{out}/{name}.quantize.json"))
row = {"name": name, "bits": int(bits), "group": int(group), "grid": grid, "extra": extra, "wall_s": float(wall),
       "solver_s": qz["seconds"]["solve"], "total_s": qz["seconds"]["total"]}
for text in ("heldout", "wiki"):
    j = json.load(open(f"{out}/{name}.{text}.json"))
    kl = j["kl_divergence"]
    row[text] = {"windows": hw if text == "heldout" else ww, "ppl": j["ppl"], "base_ppl": kl["base_ppl"], "kld": kl["mean"], "kld_p99": kl["p99"],
                 "top1": kl["top1_agreement"], "tokens": kl["tokens"]}
print(json.dumps(row))
PY
done
