#!/usr/bin/env bash
# On the GPU machine, after scripts/device/gpu_pack_serve.sh here: gptq serve of llama-gutenberg-22m
# on the GPU, then scripts/serve_load.py at 1, 8, 32 and 64 concurrent streams (serve.txt,
# server.log, metrics.txt under $OUT). GPTQ_SERVE_ARGS: more serve options; GPTQ_SERVE_DEVICE (cuda),
# GPTQ_SERVE_CONCURRENCY (1,8,32,64).
set -uo pipefail
w=/tmp/gptq-serve out=${OUT:-/tmp} port=18240
rm -rf "$w" && mkdir -p "$w"
xz -dc .device-serve/serve.tar.xz | tar -C "$w" -xf -
xz -dc .device-serve/model.tar.xz | tar -C "$w" -xf -
. "$(dirname "$0")/cuda_libs.sh"
export LD_LIBRARY_PATH="$w/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
ldd "$w/gptq" | grep -E 'not found' && exit 1
"$w/gptq" serve -m "$w/models/llama-gutenberg-22m" --device "${GPTQ_SERVE_DEVICE:-cuda}" --port $port --max-batch 64 ${GPTQ_SERVE_ARGS:-} \
  >"$out/server.log" 2>&1 &
pid=$!
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.5; done
python3 .device-serve/serve_load.py --port $port --concurrency "${GPTQ_SERVE_CONCURRENCY:-1,8,32,64}" --max-tokens 64 --requests 2 2>&1 | tee "$out/serve.txt"
rc=${PIPESTATUS[0]}
curl -s "http://127.0.0.1:$port/metrics" >"$out/metrics.txt"
kill -TERM $pid; wait $pid; echo "server exit $?" | tee -a "$out/serve.txt"
tail -5 "$out/server.log"
exit $rc
