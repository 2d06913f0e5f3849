#!/usr/bin/env bash
# The long fuzzing run, on the device machine (16 cores; packed by scripts/device/fuzz_pack.sh):
#   bash .device/fuzz/fuzz_long.sh [SECONDS] [TARGET=PROCESSES ...]
# runs every target at once for SECONDS (default 540), each as PROCESSES fuzzing processes that
# share one corpus folder (libFuzzer's -reload picks up each other's finds). A process that stops
# on a finding (crash, timeout, out-of-memory, leak, sanitizer report: the input is saved) is
# started again for the time left, so one finding does not end the run. Under $OUT it leaves
# summary.txt (executions, from libFuzzer's final stats, and findings per target), logs.tar.xz,
# findings.tar.xz (the saved inputs, when any) and corpus.tar.xz (the grown corpora, to unpack
# into build-fuzz/corpus/).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$here/out}
seconds=${1:-540}
[ $# -gt 0 ] && shift
# Processes per target (16 in all).
declare -A procs=([fuzz_safetensors]=2 [fuzz_config]=2 [fuzz_lora_config]=2 [fuzz_tokenizer_load]=3 [fuzz_tokenize]=3
                  [fuzz_gptq]=2 [fuzz_gptq_checkpoint]=2)
if [ $# -gt 0 ]; then
  procs=()
  for a in "$@"; do procs[${a%%=*}]=${a#*=}; done
fi
declare -A max_len=([fuzz_safetensors]=16384 [fuzz_config]=4096 [fuzz_lora_config]=4096 [fuzz_tokenizer_load]=65536
                    [fuzz_tokenize]=1024 [fuzz_gptq]=8192 [fuzz_gptq_checkpoint]=24576)

work=/tmp/gptq-fuzz-long
rm -rf "$work"
mkdir -p "$work" "$out"
xz -dc "$here/payload.tar.xz" | tar -C "$work" -xf -
cd "$work"
export LD_LIBRARY_PATH=$work/lib GPTQ_SHARED=$work/shared
mkdir -p logs findings
echo "fuzz_long: $(nproc) cores, ${seconds} s, $(uname -r)"
end=$(($(date +%s) + seconds))
# One fuzzing process, restarted after each finding until the time is up.
worker() {
  local t=$1 i=$2 left quick=0 t0
  while left=$((end - $(date +%s))); [ "$left" -gt 5 ] && [ "$quick" -lt 20 ]; do
    t0=$(date +%s)
    "bin/$t" -max_total_time="$left" -print_final_stats=1 -print_funcs=0 -timeout=10 -rss_limit_mb=2048 \
      -max_len="${max_len[$t]}" -dict="dicts/$t.dict" -artifact_prefix="findings/$t/" "corpus/$t" "seeds/$t" \
      >>"logs/$t.$i.log" 2>&1
    [ $(($(date +%s) - t0)) -lt 3 ] && quick=$((quick + 1))  # a binary that cannot start does not spin
  done
}
for t in "${!procs[@]}"; do
  mkdir -p "corpus/$t" "findings/$t"
  # The saved crash inputs first: they must all pass now.
  if compgen -G "regressions/$t/*" >/dev/null; then
    "bin/$t" -rss_limit_mb=2048 regressions/"$t"/* >"logs/$t.replay.log" 2>&1 || echo "fuzz_long: $t: a saved regression input fails again"
  fi
  for i in $(seq 1 "${procs[$t]}"); do worker "$t" "$i" & done
done
wait

{
  printf '%-22s %6s %14s %8s  %s\n' target procs executions runs "findings (saved inputs by kind)"
  for t in $(printf '%s\n' "${!procs[@]}" | sort); do
    execs=$(cat logs/"$t".[0-9]*.log | sed -n 's/^stat::number_of_executed_units: *//p' | awk '{s += $1} END {print s + 0}')
    runs=$(cat logs/"$t".[0-9]*.log | grep -c '^stat::number_of_executed_units')
    kinds=$(find "findings/$t" -type f -printf '%f\n' | sed 's/-.*//' | sort | uniq -c | awk '{printf "%s %s, ", $1, $2}')
    printf '%-22s %6s %14s %8s  %s\n' "$t" "${procs[$t]}" "$execs" "$runs" "${kinds:-none}"
  done
} | tee "$out/summary.txt"
tar -cJf "$out/logs.tar.xz" logs
[ -n "$(find findings -type f)" ] && tar -cJf "$out/findings.tar.xz" findings
tar -cf - corpus | xz -T0 -6 >"$out/corpus.tar.xz"
ls -la "$out"
