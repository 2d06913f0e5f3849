#!/usr/bin/env bash
# On the GPU machine, after scripts/device/gpu_pack_serve.sh here: gptq serve on the GPU of
# llama-gutenberg-22m, then of synthetic Llama-2-7B shapes in fp16 and in GPTQ 4-bit g128 (random
# weights, the 22m model's Llama-2 tokenizer), each driven by scripts/serve_load.py at 1, 8, 32 and
# 64 concurrent streams (serve.txt, server.log, metrics.txt under $OUT, one section per model);
# then GPTQ_SERVE_BENCH (default: a short bench of the 4-bit shapes at batch 1 and 64) with the same
# binary; and the long-prompt measurement below. GPTQ_SERVE_ARGS: more serve options; GPTQ_SERVE_DEVICE (cuda), GPTQ_SERVE_CONCURRENCY
# (1,8,32,64), GPTQ_SERVE_MODELS (22m 7b-f16 7b-gptq4).
set -uo pipefail
w=/tmp/gptq-serve out=${OUT:-/tmp} port=18240
rm -rf "$w" && mkdir -p "$w"
xz -dc .device-serve/serve.tar.xz | tar -C "$w" -xf -
xz -dc .device-serve/model.tar.xz | tar -C "$w" -xf -
. "$(dirname "$0")/cuda_libs.sh"
export LD_LIBRARY_PATH="$w/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
ldd "$w/gptq" | grep -E 'not found' && exit 1
m22="$w/models/llama-gutenberg-22m"
rc=0
for name in ${GPTQ_SERVE_MODELS:-22m 7b-f16 7b-gptq4}; do
  case $name in
    22m) model=(-m "$m22") ;;
    7b-f16) model=(--synthetic llama2-7b --tokenizer "$m22") ;;
    7b-gptq4) model=(--synthetic llama2-7b --bits 4 --group-size 128 --tokenizer "$m22") ;;
    *) echo "unknown model $name"; rc=1; continue ;;
  esac
  echo "=== serve $name: ${model[*]}"
  "$w/gptq" serve "${model[@]}" --device "${GPTQ_SERVE_DEVICE:-cuda}" --port $port --max-batch 64 -c 2048 \
    ${GPTQ_SERVE_ARGS:-} >"$w/server_$name.log" 2>&1 &
  pid=$!
  for _ in $(seq 240); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.5; done
  python3 .device-serve/serve_load.py --port $port --concurrency "${GPTQ_SERVE_CONCURRENCY:-1,8,32,64}" --max-tokens 64 \
    --requests 2 2>&1 | sed "s/^/$name: /" | tee -a "$out/serve.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || rc=1
  { echo "# $name"; curl -s "http://127.0.0.1:$port/metrics"; } >>"$out/metrics.txt"
  kill -TERM $pid; wait $pid; echo "$name: server exit $?" | tee -a "$out/serve.txt"
  { echo "=== $name"; cat "$w/server_$name.log"; } >>"$out/server.log"
  tail -3 "$w/server_$name.log"
done
# A 4000-token prompt arriving while one stream runs (serve_load.py --long-prompt), synthetic
# Llama-2-7B fp16: the stream's gaps with the prompt prefilled in chunks of 256 tokens per step (the
# default) and in one step (--prefill-chunk 4096). GPTQ_SERVE_LONG= skips it.
if [ -n "${GPTQ_SERVE_LONG-x}" ]; then
  for chunk in 256 4096; do
    "$w/gptq" serve --synthetic llama2-7b --tokenizer "$m22" --device "${GPTQ_SERVE_DEVICE:-cuda}" --port $port \
      --max-batch 8 -c 4608 --prefill-chunk $chunk >"$w/server_long.log" 2>&1 &
    pid=$!
    for _ in $(seq 240); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.5; done
    python3 .device-serve/serve_load.py --port $port --long-prompt 4000 --max-tokens 256 2>&1 |
      sed "s/^/long prompt, --prefill-chunk $chunk: /" | tee -a "$out/serve.txt"
    [ "${PIPESTATUS[0]}" = 0 ] || rc=1
    kill -TERM $pid; wait $pid
  done
fi
if [ -n "${GPTQ_SERVE_BENCH-x}" ]; then
  "$w/gptq" bench --synthetic llama2-7b ${GPTQ_SERVE_BENCH:---bits 4 --group-size 128 -b 1,64 -n 128 -r 3} --device cuda \
    2>&1 | tee "$out/bench.txt" | grep -E "tg|pp|roofline:"
fi
exit $rc
