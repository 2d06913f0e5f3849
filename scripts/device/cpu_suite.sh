#!/usr/bin/env bash
# On the device machine (after scripts/device/pack.sh here): the test suite on its CPU, in gtest
# shards. Logs go to $OUT. Usage: scripts/device/cpu_suite.sh [SHARDS] [GTEST_FILTER]
set -uo pipefail
shards=${1:-4}
filter=${2:--Slow*}
w=/tmp/gptq-device
rm -rf "$w" && mkdir -p "$w/shared"
for b in gptq gptq_tests; do xz -dc ".device/$b.xz" >"$w/$b" && chmod +x "$w/$b"; done
xz -dc .device/shared.tar.xz | tar -C "$w/shared" -xf -
out=${OUT:-/tmp}
{
  lscpu | grep -E '^(Model name|CPU\(s\))'
  echo "AVX-512F: $(grep -c -m1 avx512f /proc/cpuinfo)"
} | tee "$out/cpu.txt"
# Each shard's pools get their share of the cores (spinning pools must not oversubscribe).
export GPTQ_SHARED="$w/shared" GPTQ_CLI="$w/gptq" GPTQ_THREADS=$(( $(nproc) / shards > 0 ? $(nproc) / shards : 1 ))
pids=()
for ((i = 0; i < shards; i++)); do
  GTEST_TOTAL_SHARDS=$shards GTEST_SHARD_INDEX=$i "$w/gptq_tests" --gtest_filter="$filter" --gtest_brief=1 \
    >"$out/shard$i.log" 2>&1 &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
for ((i = 0; i < shards; i++)); do
  echo "== shard $i"; grep -E '^\[  (PASSED|FAILED|SKIPPED) |tests? ran|FAILED TEST|Failure' "$out/shard$i.log" | head -40
done
exit $rc
