#!/usr/bin/env bash
# On the GPU machine, after scripts/device/gpu_pack.sh here: unpacks, then runs what is asked
# (default: tests bench), logs under $OUT.
#   tests      the CUDA test cases: BackendOps.*/cuda, Cuda*.* (GPTQ_TEST_FILTER overrides)
#   sanitize   the same under compute-sanitizer memcheck (a subset: GPTQ_SANITIZE_FILTER)
#   workbench  bench/cuda_workbench: GPTQ kernels and cuBLAS fp16 on Llama-2-7B layer shapes
#              (GPTQ_WORKBENCH_ARGS: its arguments, e.g. --sweep)
#   bench      gptq bench --device cuda: llama-gutenberg-22m, synthetic Llama-2-7B fp16 and GPTQ
#   profile    ncu: time per kernel over ~2 decode steps of synthetic Llama-2-7B GPTQ 4-bit at batch 1
#              (profile.txt: kernel, launches, total us), and the GPTQ 4-bit GEMV's stall reasons
#   bench4     the synthetic Llama-2-7B GPTQ 4-bit row of bench alone
#   sass       cuobjdump -sass of the 4-bit GEMV kernels and their opcode counts
#   quantize   gptq quantize of llama-gutenberg-22m (4-bit g128, 128 x 1024 calibration tokens) on the GPU
#              and on this machine's CPU, timed (quantize_*.txt: the report with its per-phase times)
#   quantizeab the quantizer's stacked solves and kept down inputs, A/B (env knobs), Llama-2-7B shapes, 8 layers
#   quantize7b gptq quantize --synthetic (issue 11's targets): Llama-2-7B shapes, 4-bit g128, 128 x 2048
#              calibration tokens of WikiText-2 test, then the first 4 decoder layers of Llama-2-70B
#              (quantize_7b.txt, quantize_70b4.txt: per-module errors, per-phase times, peak memory)
#   prefill    prefill A/B: synthetic Llama-2-7B GPTQ 4-bit pp512 and pp2048 with the tensor-core
#              prefill attention and with GPTQ_CUDA_PREFILL_TC=0 (the fp32 kernel), same binary
#   ncu        ncu --set full of the 4-bit GEMV's first workbench launch (GPTQ_NCU_SHAPE, default qkv; T = 1)
#   tcgemm     the batched 4-bit kernel (T 9..64): its test (also under memcheck and racecheck), the
#              backend's GPTQ ops and batches with GPTQ_CUDA_TC_GEMM=1, and bench -b 16,32,64 with it 0 and 1
#   tcbench    that bench alone
#   pdl        the 4-bit GEMVs as programmatic dependent launches (GPTQ_CUDA_PDL=1): the GPU tests of the
#              decode path with it, and bench tg128 at batch 1 and 4 without/with it (twice each)
#   reg        the 4-bit GEMV kernels end to end: bench tg128 of synthetic Llama-2-7B GPTQ 4-bit at batch
#              1, 4 and 8 with GPTQ_CUDA_GEMV_REG=0 (the ring), unset (the dispatch) and 1 (registers), twice
#              each, alternating (bench_reg.txt)
#   ncuattn    ncu of one decode-step attention kernel (synthetic Llama-2-7B GPTQ 4-bit, batch 1, ~40 keys)
set -uo pipefail
w=/tmp/gptq-gpu
out=${OUT:-/tmp}
rm -rf "$w" && mkdir -p "$w/shared"
for b in gptq gptq_tests gptq_cuda_workbench; do
  [ -f ".device/$b.xz" ] && xz -dc ".device/$b.xz" >"$w/$b" && chmod +x "$w/$b"
done
xz -dc .device/shared.tar.xz | tar -C "$w/shared" -xf -
. "$(dirname "$0")/cuda_libs.sh"
export GPTQ_SHARED="$w/shared" GPTQ_CLI="$w/gptq"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv | tee "$out/gpu.txt"
ldd "$w/gptq" | grep -E 'cublas|cusolver|not found' | tee -a "$out/gpu.txt"
rc=0
for what in ${@:-tests bench}; do
  echo "=== $what"
  case $what in
    tests)
      "$w/gptq_tests" --gtest_filter="${GPTQ_TEST_FILTER:-BackendOps.*/cuda:*Cuda*.*}" --gtest_brief=1 >"$out/tests.log" 2>&1 || rc=1
      grep -E 'FAIL|tests? ran|PASSED|SKIPPED \]' "$out/tests.log" | head -60
      grep -q "tests\? ran" "$out/tests.log" || tail -20 "$out/tests.log" ;;
    sanitize)
      compute-sanitizer --tool memcheck --error-exitcode 9 "$w/gptq_tests" \
        --gtest_filter="${GPTQ_SANITIZE_FILTER:-BackendOps.*_T1/cuda:BackendOps.*_T5/cuda:BackendOps.*_T65/cuda:BackendOps.attention*/cuda:CudaBatch.*}" \
        --gtest_brief=1 >"$out/sanitize.log" 2>&1 || rc=1
      grep -E 'ERROR SUMMARY|FAIL|tests? ran' "$out/sanitize.log" | head -20 ;;
    tcgemm)  # the batched 4-bit kernel (cuda::gptq_gemm): its own test, under memcheck and racecheck too, the
      # backend's ops and batches on it (GPTQ_CUDA_TC_GEMM=1), then decode at batch 16-64 without and with it
      "$w/gptq_tests" --gtest_filter='CudaGptq.Batched*' --gtest_brief=1 >"$out/tcgemm_tests.log" 2>&1 || rc=1
      GPTQ_CUDA_TC_GEMM=1 "$w/gptq_tests" --gtest_brief=1 \
        --gtest_filter='BackendOps.linear_gptq_b4*/cuda:BackendOps.linear_add*/cuda:BackendOps.fuse*/cuda:CudaBatch.*:*GenerateBatch*:Layouts/CudaGptq.*' \
        >>"$out/tcgemm_tests.log" 2>&1 || rc=1
      for tool in memcheck racecheck; do
        compute-sanitizer --tool $tool --error-exitcode 9 "$w/gptq_tests" --gtest_filter='CudaGptq.Batched*' \
          --gtest_brief=1 >>"$out/tcgemm_tests.log" 2>&1 || rc=1
      done
      grep -E 'FAIL|tests? ran|PASSED|ERROR SUMMARY|RACECHECK SUMMARY' "$out/tcgemm_tests.log" | head -40
      ;&
    tcbench)
      for v in 0 1; do
        echo "GPTQ_CUDA_TC_GEMM=$v" | tee -a "$out/bench_tc.txt"
        GPTQ_CUDA_TC_GEMM=$v "$w/gptq" bench --synthetic llama2-7b --bits 4 --group-size 128 -p 512 -n 64 -r 3 \
          -b 16,32,64 --device cuda 2>&1 | tee -a "$out/bench_tc.txt" | grep -E 'pp|tg|roofline'
      done ;;
    pdl)  # the decode GEMVs (4-bit, fp16) as programmatic dependent launches: tests with GPTQ_CUDA_PDL=1, tg b1/b4 without/with
      GPTQ_CUDA_PDL=1 "$w/gptq_tests" --gtest_brief=1 \
        --gtest_filter='BackendOps.linear*/cuda:CudaBatch.*:*GenerateBatch*:Layouts/CudaGptq.*:Models/CudaGolden.*' \
        >"$out/pdl_tests.log" 2>&1 || rc=1
      grep -E 'FAIL|tests? ran|PASSED' "$out/pdl_tests.log" | head -20
      for s in "--bits 4 --group-size 128" "--dtype f16"; do
        for v in 0 1 0 1; do
          echo "GPTQ_CUDA_PDL=$v $s" | tee -a "$out/bench_pdl.txt"
          GPTQ_CUDA_PDL=$v "$w/gptq" bench --synthetic llama2-7b $s -p 0 -n 128 -r 3 -b 1,4 --device cuda 2>&1 |
            tee -a "$out/bench_pdl.txt" | grep -E 'tg|roofline'
        done
      done ;;
    reg)  # the register 4-bit GEMV against the ring kernel, end to end, same binary, alternating
      for v in 0 "" 1 0 "" 1; do
        echo "GPTQ_CUDA_GEMV_REG=$v" | tee -a "$out/bench_reg.txt"
        env ${v:+GPTQ_CUDA_GEMV_REG=$v} "$w/gptq" bench --synthetic llama2-7b --bits 4 --group-size 128 -p 0 -n 128 -r 3 \
          -b 1,4,8 --device cuda 2>&1 | tee -a "$out/bench_reg.txt" | grep -E 'tg|roofline'
      done ;;
    workbench)
      "$w/gptq_cuda_workbench" ${GPTQ_WORKBENCH_ARGS:-} 2>&1 | tee "$out/workbench.txt" | tail -60 ;;
    bench)
      m="$w/shared/models/llama-gutenberg-22m"
      "$w/gptq" bench -m "$m" --device cuda 2>&1 | tee "$out/bench_22m.txt" | tail -20
      for s in "--synthetic llama2-7b --dtype f16" "--synthetic llama2-7b --bits 4 --group-size 128"; do
        "$w/gptq" bench $s --device cuda 2>&1 | tee -a "$out/bench_7b.txt" | tail -12
      done
      GPTQ_CUDA_DENSE_GEMV=0 "$w/gptq" bench --synthetic llama2-7b --dtype f16 -b 1 -n 64 --device cuda 2>&1 |
        tee -a "$out/bench_7b_cublas.txt" | grep -E 'tg|roofline:' ;;
    profile)
      ncu --metrics gpu__time_duration.sum --csv --launch-skip 3000 --launch-count 1000 "$w/gptq" bench \
        --synthetic llama2-7b --bits 4 --group-size 128 -p 0 -n 16 -r 1 -b 1 --device cuda >"$out/profile.csv" 2>&1
      python3 - "$out/profile.csv" <<'PY' | tee "$out/profile.txt"
import csv, sys, collections
rows = [r for r in csv.reader(l for l in open(sys.argv[1]) if l.startswith('"'))]
h = rows[0]; ki, vi = h.index("Kernel Name"), h.index("Metric Value")
t = collections.defaultdict(lambda: [0, 0.0])
for r in rows[1:]:
    if r[vi].replace(",", "").replace(".", "").isdigit():
        k = r[ki].split("(")[0][:60]; t[k][0] += 1; t[k][1] += float(r[vi].replace(",", "")) / 1e3
tot = sum(v[1] for v in t.values())
for k, (n, us) in sorted(t.items(), key=lambda x: -x[1][1]):
    print(f"{k:60s} {n:6d} {us:10.1f} us {100 * us / tot:5.1f} %")
print(f"total {tot:.1f} us over {sum(v[0] for v in t.values())} launches")
PY
      timeout 200 ncu -k regex:gptq4_mma_gemv -s 8 -c 1 --section SpeedOfLight --section WarpStateStats \
        --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats "$w/gptq_cuda_workbench" --reps 1 \
        >"$out/ncu_gemv.txt" 2>&1
      grep -E "Duration|Throughput|Stall|Warp Cycles|Achieved|Block Size|Grid Size|Registers|Theoretical|Issued|Eligible" \
        "$out/ncu_gemv.txt" | head -40 ;;
    ncu)  # the 4-bit GEMV's first launch on one shape (GPTQ_NCU_SHAPE, default qkv) at T = 1, full set
      timeout 300 ncu -k regex:gptq4_mma_gemv -c 1 --set full "$w/gptq_cuda_workbench" --reps 1 \
        --shape "${GPTQ_NCU_SHAPE:-qkv}" >"$out/ncu_full.txt" 2>&1
      grep -vE "^==PROF==|^\s*$" "$out/ncu_full.txt" | grep -E "Duration|Throughput|Stall|Warp Cycles|Achieved|Theoretical|Issued|Eligible|Active|Occupancy|L1|L2|DRAM|Bandwidth|Sectors|Hit|Registers|Shared|Block|Grid|Waves|Memory|Elapsed|SM " | head -90 ;;
    ncuattn)
      timeout 200 ncu -k regex:attention_kernel -s 300 -c 1 --section SpeedOfLight --section WarpStateStats \
        --section LaunchStats --section Occupancy --section SchedulerStats --section MemoryWorkloadAnalysis "$w/gptq" bench \
        --synthetic llama2-7b --bits 4 --group-size 128 -p 32 -n 16 -r 1 -b 1 --device cuda >"$out/ncu_attn.txt" 2>&1
      grep -vE "^==PROF==|^\s*$" "$out/ncu_attn.txt" | grep -E "Duration|Throughput|Stall|Warp Cycles|Achieved|Theoretical|Issued|Eligible|Active|Registers|Block|Grid|Waves|Elapsed|No Eligible|One or More" | head -40 ;;
    prefill)
      for tc in 1 0; do
        for p in 512 2048; do
          GPTQ_CUDA_PREFILL_TC=$tc "$w/gptq" bench --synthetic llama2-7b --bits 4 --group-size 128 -p $p -n 0 -r 3 \
            --no-bandwidth --device cuda 2>&1 | tee -a "$out/prefill.txt" | grep -E "pp$p" | sed "s/^/tc=$tc /"
        done
      done ;;
    bench4)  # the synthetic Llama-2-7B GPTQ 4-bit g128 row of `bench` alone
      "$w/gptq" bench --synthetic llama2-7b --bits 4 --group-size 128 --device cuda 2>&1 | tee -a "$out/bench_7b.txt" | tail -12 ;;
    sass)  # the 4-bit GEMV's SASS and its opcode counts per instantiation (sass.txt.xz, sass_ops.txt)
      cuobjdump -sass "$w/gptq_cuda_workbench" 2>/dev/null | awk '/Function : .*gptq4_mma_gemv/{p=1} /Function : /&&!/gptq4_mma_gemv/{p=0} p' >"$out/sass.txt"
      awk '/Function :/{f=$3} /\/\*[0-9a-f]+\*\//{for(i=2;i<=NF;i++) if($i ~ /^[A-Z][A-Z0-9_.]+$/){split($i,o,"."); n[f" "o[1]]++; break}} END{for(k in n) print n[k], k}' \
        "$out/sass.txt" | sort -k2,2 -k1,1nr >"$out/sass_ops.txt"; xz -f "$out/sass.txt"; wc -l "$out/sass_ops.txt" ;;
    quantize)
      # the reference table's calibration: 128 windows of 1024 tokens of heldout.txt
      m="$w/shared/models/llama-gutenberg-22m" cal="$w/shared/data/gutenberg-heldout/heldout.txt"
      for d in cuda cpu; do
        rm -rf "$w/q-$d"
        /usr/bin/time -f "wall %e s, max rss %M KB" "$w/gptq" quantize -m "$m" -o "$w/q-$d" --calibration "$cal" \
          --nsamples 128 --seqlen 1024 --device $d -q >"$out/quantize_$d.txt" 2>&1 || rc=1
        tail -30 "$out/quantize_$d.txt"
      done
      # issue 13's time ratio: the reference's order and grid (the defaults before it) on the GPU
      rm -rf "$w/q-ref"
      "$w/gptq" quantize -m "$m" -o "$w/q-ref" --calibration "$cal" --nsamples 128 --seqlen 1024 --device cuda -q \
        --order natural --grid minmax >"$out/quantize_cuda_ref.txt" 2>&1 || rc=1
      grep -E "^\| (forward|Hessians|solver|packing|total)" "$out/quantize_cuda_ref.txt" | sed "s/^/reference flags: /"
      for d in cuda cpu; do  # held-out windows 128-191 (the reference: fp32 32.933, its 4-bit g128 33.905)
        "$w/gptq" perplexity -m "$w/q-$d" -f "$cal" -c 1024 --windows 128:192 --device cuda 2>&1 | tail -1
      done
      # The default (act-order, static groups) checkpoints read independently by PyTorch + transformers
      for d in cuda cpu; do
        python3 "$(dirname "$0")/check_checkpoint.py" "$w/q-$d" "$cal" 1024 128 192 2>&1 | tail -1 | sed "s/^/$d: /"
      done
      python3 -c 'import vllm; print("vllm", vllm.__version__)' 2>&1 | tail -1 ;;
    quantize7b)
      t="$w/shared/models/llama-gutenberg-22m" cal="$w/shared/data/wikitext-2-raw/wiki.test.raw"
      for s in "llama2-7b" "llama2-70b --layers 4"; do
        f="$out/quantize_$(echo $s | tr -dc 'a-z0-9').txt"
        /usr/bin/time -f "wall %e s, max rss %M KB" "$w/gptq" quantize --synthetic $s --tokenizer "$t" --calibration "$cal" \
          --nsamples 128 --seqlen 2048 --device cuda -q >"$f" 2>&1 || rc=1
        tail -14 "$f"
      done ;;
    quantizeab)
      # The quantizer's stacked solves and kept down inputs, A/B on Llama-2-7B shapes (8 layers,
      # 128 x 2048): the default, then GPTQ_QUANTIZE_STACK=0, then GPTQ_QUANTIZE_KEEP_MLP=0, twice.
      t="$w/shared/models/llama-gutenberg-22m" cal="$w/shared/data/wikitext-2-raw/wiki.test.raw"
      for rep in 1 2; do
        for v in "" "GPTQ_QUANTIZE_STACK=0" "GPTQ_QUANTIZE_KEEP_MLP=0"; do
          f="$out/quantizeab_${rep}_$(echo "${v:-default}" | tr -dc 'A-Za-z0-9').txt"
          env $v "$w/gptq" quantize --synthetic llama2-7b --layers 8 --tokenizer "$t" --calibration "$cal" \
            --nsamples 128 --seqlen 2048 --device cuda --json -q >"$f" 2>"$f.err" || rc=1
          python3 -c "import json,sys; d=json.load(open(sys.argv[1])); s=d['seconds']; print(sys.argv[2], ' '.join(f'{k}={v:.2f}' for k,v in s.items()), 'peak_gpu=%.2fGiB' % (d['peak_device_bytes']/2**30))" "$f" "${v:-default}" || tail -3 "$f.err"
        done
      done ;;
    *) echo "unknown: $what"; rc=1 ;;
  esac
done
exit $rc
