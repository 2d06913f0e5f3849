#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/fuzz_*.cpp; clang, ASan + UBSan, in BUILD_DIR, default
# build-fuzz/), makes their seed corpora from ../shared (GPTQ_SHARED), replays the saved crash
# inputs of fuzz/regressions/TARGET/, then fuzzes each target for SECONDS. Fails (exit 1) on any
# crash, leak, timeout, out-of-memory or sanitizer report; the input that caused it is left in
# BUILD_DIR/artifacts/TARGET/ and the log in BUILD_DIR/logs/TARGET.log.
#   scripts/fuzz.sh [-t SECONDS] [TARGET...]   fuzz (default 20 s each, all targets)
#   scripts/fuzz.sh --seeds-only               build and make the corpora (scripts/device/fuzz_long.sh)
# The corpora grow in BUILD_DIR/corpus/TARGET/ from run to run.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build-fuzz}
seconds=20 seeds_only=0 targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    -t) seconds=$2; shift ;;
    --seeds-only) seeds_only=1 ;;
    -*) echo "usage: scripts/fuzz.sh [-t SECONDS] [--seeds-only] [TARGET...]" >&2; exit 2 ;;
    *) targets+=("$1") ;;
  esac
  shift
done
shared=${GPTQ_SHARED:-$(cd .. && pwd)/shared}
export GPTQ_SHARED=$shared

# target  max_len  dictionary (fuzz/dicts/, after json.dict; "-" for none)
table=(
  "fuzz_safetensors      16384  safetensors"
  "fuzz_config            4096  config"
  "fuzz_tokenizer_load   65536  tokenizer"
  "fuzz_tokenize          1024  -"
  "fuzz_gptq              8192  -"
  "fuzz_gptq_checkpoint  24576  config"
  "fuzz_lora_config       4096  config"
  "fuzz_chat_template     4096  jinja"
)
[ ${#targets[@]} -gt 0 ] || for row in "${table[@]}"; do targets+=("${row%% *}"); done

CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DGPTQ_FUZZ=ON -DGPTQ_CUDA=OFF -DGPTQ_BUILD_TESTS=OFF \
  -DGPTQ_BUILD_BENCH=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -gline-tables-only" >/dev/null
cmake --build "$build" -j "${JOBS:-$(nproc)}"

# ---- seed corpora (never copied into the repository: they live in the build folder) ----------
have_shared=0
[ -d "$shared/models" ] && have_shared=1
[ "$have_shared" = 1 ] || echo "fuzz: $shared/models not found: seeds from the shared folder skipped, fuzz_tokenize skipped" >&2
seeds=$build/seeds
rm -rf "$seeds"
mkdir -p "$seeds" "$build/dicts"
for row in "${table[@]}"; do
  read -r t _ _ <<<"$row"
  mkdir -p "$seeds/$t"
done
for t in fuzz_safetensors fuzz_tokenizer_load fuzz_gptq fuzz_gptq_checkpoint fuzz_lora_config; do
  GPTQ_FUZZ_WRITE_SEEDS=$seeds/$t "$build/$t" >/dev/null 2>&1 || { echo "fuzz: $t could not write its seeds" >&2; exit 1; }
done
cp tests/data/chat_templates/*.jinja "$seeds/fuzz_chat_template/"
cfg=$seeds/fuzz_config
if [ "$have_shared" = 1 ]; then
  for d in "$shared"/models/*/; do
    m=$(basename "$d")
    for f in config.json generation_config.json quantize_config.json tokenizer_config.json; do
      [ -f "$d/$f" ] && cp "$d/$f" "$cfg/${m}_$f"
    done
  done
fi
printf '%s' '{"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": false, "sym": true, "damp_percent": 0.01, "true_sequential": true, "static_groups": false, "checkpoint_format": "gptq"}' >"$cfg/quantize_config.json"
printf '%s' '{"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100, "rope_parameters": {"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}, "bos_token_id": [1], "eos_token_id": [2, 3], "quantization_config": {"bits": 3, "group_size": -1, "checkpoint_format": "gptq_v2"}}' >"$cfg/qwen2_llama3_rope.json"
printf '%s' '{"architectures": ["MistralForCausalLM"], "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4, "head_dim": 32, "vocab_size": 10, "rope_scaling": {"type": "linear", "factor": 2.0}, "torch_dtype": "bfloat16"}' >"$cfg/mistral_linear_rope.json"
printf '%s' '{"temperature": 0.7, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1, "do_sample": true, "eos_token_id": [2, 7], "bos_token_id": 1}' >"$cfg/generation_config.json"
if [ "$have_shared" = 1 ]; then
  # fuzz_tokenize: byte 0 the tokenizer (0-2), byte 1 the mode (0/2: encode, 1: decode ids).
  texts=("$shared"/data/*/*)
  n=0
  for t in 0 1 2; do
    for mode in 0 1 2; do
      for f in "${texts[@]}"; do
        [ -f "$f" ] || continue
        { printf "\\x0$t\\x0$mode"; head -c 600 "$f"; } >"$seeds/fuzz_tokenize/seed_$n"
        n=$((n + 1))
      done
    done
    printf "\\x0$t\\x00%s" $'emoji \xF0\x9F\x9A\x80 <s></s><|endoftext|> \xE6\x97\xA5 bad \xFF\xC3 end  \t\n' >"$seeds/fuzz_tokenize/special_$t"
  done
fi
for row in "${table[@]}"; do
  read -r t _ dict <<<"$row"
  { cat fuzz/dicts/json.dict; [ "$dict" = - ] || cat "fuzz/dicts/$dict.dict"; } >"$build/dicts/$t.dict"
done
[ "$seeds_only" = 1 ] && exit 0

# ---- replay and fuzz ----------------------------------------------------------------------------
failed=()
for t in "${targets[@]}"; do
  row=$(printf '%s\n' "${table[@]}" | awk -v t="$t" '$1 == t')
  [ -n "$row" ] || { echo "fuzz: unknown target $t" >&2; exit 2; }
  read -r _ max_len _ <<<"$row"
  if [ "$t" = fuzz_tokenize ] && [ "$have_shared" = 0 ]; then continue; fi
  mkdir -p "$build/corpus/$t" "$build/artifacts/$t" "$build/logs"
  log=$build/logs/$t.log
  opts=(-timeout=10 -rss_limit_mb=2048 -max_len="$max_len" -artifact_prefix="$build/artifacts/$t/")
  ok=1
  if compgen -G "fuzz/regressions/$t/*" >/dev/null; then
    "$build/$t" "${opts[@]}" fuzz/regressions/"$t"/* >"$log" 2>&1 || ok=0
  fi
  if [ "$ok" = 1 ]; then
    "$build/$t" "${opts[@]}" -dict="$build/dicts/$t.dict" -max_total_time="$seconds" -print_final_stats=1 \
      "$build/corpus/$t" "$seeds/$t" >>"$log" 2>&1 || ok=0
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  if [ "$ok" = 1 ]; then
    echo "fuzz: $t: ok, ${execs:-?} executions in ${seconds} s"
  else
    echo "fuzz: $t: FAILED (log $log, input in $build/artifacts/$t/):" >&2
    grep -m5 -E 'ERROR|runtime error|invariant violated|Test unit written' "$log" >&2 || tail -20 "$log" >&2
    failed+=("$t")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: ${#failed[@]} target(s) failed: ${failed[*]}" >&2
  exit 1
fi
