// CUDA kernel workbench: our GPTQ and fp16 GEMVs against cuBLAS fp16 GEMM on Llama-2-7B layer shapes, with
// the device's measured copy bandwidth as the roofline. Validation and timing in one program
// (llm.c style); never asserts on speed.
//
//   gptq_cuda_workbench [--reps R] [--json FILE] [--sweep[=gemv|gemm]] [--shape NAME]
//
// --sweep: also the 4-bit kernels' launch choices (gptq_kernels.h Gemv4Tuning, GemmTuning) one by one;
// --sweep=gemv only the GEMVs' (both kernels), --sweep=gemm only the batched kernel's.
// --shape NAME: that layer shape only (qkv, o, gate_up, down), e.g. under ncu.
//
// Per (kernel, shape K x N, T): the median over R samples of one pass over C weight copies
// (C such that a pass touches >= 200 MB, so the 50-60 MB L2 does not hold the weights),
// recorded as a CUDA graph (launch gaps as in a graph-captured decode step), divided by C.
// GB/s counts weight bytes (qweight + scale_zero + chunk_group, or the fp16 matrix) + x + y.
// Before timing, every kernel's output on copy 0 is compared with cuBLAS on the same weights
// (the fp16 dequantization of the GPTQ matrix; x is fp16-exact so both see the same inputs).
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "backend/cuda/cuda_common.h"
#include "backend/cuda/gptq_kernels.h"
#include "backend/cuda/ops.h"
#include "gptq/version.h"

using gptq::cuda::GptqDeviceMatrix;

namespace {

#define CUBLAS_CHECK(call)                                                                     \
  do {                                                                                         \
    const cublasStatus_t st_ = (call);                                                         \
    if (st_ != CUBLAS_STATUS_SUCCESS) {                                                        \
      std::fprintf(stderr, "%s:%d: %s failed: cuBLAS status %d\n", __FILE__, __LINE__, #call,  \
                   int(st_));                                                                  \
      std::abort();                                                                            \
    }                                                                                          \
  } while (0)

constexpr double kRotationBytes = 200e6;

__device__ __forceinline__ uint32_t hash32(uint64_t i, uint32_t seed) {
  uint64_t x = i * 0x9E3779B97F4A7C15ull + seed;
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  return uint32_t(x >> 16);
}

__global__ void fill_random_u32(uint32_t* p, int64_t n, uint32_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    p[i] = hash32(uint64_t(i), seed);
}

// scale_zero: scale in [0.001, 0.02) (fp16), zero in [0, 2^bits] (the v1 wrap included).
__global__ void fill_scale_zero(uint32_t* p, int64_t n, int bits, uint32_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const uint32_t h = hash32(uint64_t(i), seed);
    const float s = 0.001f + 0.019f * float(h & 0xffff) / 65536.f;
    const float z = float((h >> 16) % uint32_t((1 << bits) + 1));
    const __half hs = __float2half_rn(s), hz = __float2half_rn(z);
    p[i] = uint32_t(__half_as_ushort(hs)) | (uint32_t(__half_as_ushort(hz)) << 16);
  }
}

__global__ void fill_random_half(__half* p, int64_t n, float scale, uint32_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const uint32_t h = hash32(uint64_t(i), seed);
    p[i] = __float2half_rn(scale * (float(h & 0xffffff) / 8388608.f - 1.f));
  }
}

__global__ void half_to_float(const __half* a, float* b, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    b[i] = __half2float(a[i]);
}

dim3 fill_grid(int64_t n) { return dim3(unsigned(std::min<int64_t>((n + 255) / 256, 4096))); }

struct Shape {
  const char* name;
  int64_t K, N;
};
const Shape kShapes[] = {
    {"qkv", 4096, 12288}, {"o", 4096, 4096}, {"gate_up", 4096, 22016}, {"down", 11008, 4096}};

struct GptqConfig {
  int bits, group;
  std::string name() const { return "gptq" + std::to_string(bits) + "b g" + std::to_string(group); }
};
const GptqConfig kGptq[] = {{4, 128}, {8, 128}, {3, 128}, {4, 32}};
const int64_t kGemvT[] = {1, 2, 4, 8};
const int64_t kCublasT[] = {1, 2, 4, 8, 16, 32, 64, 512};
const int64_t kGemmT[] = {16, 32, 64};  // the batched 4-bit kernel

// One GPTQ matrix on the device, random (a valid layout: any codes, contiguous groups of G).
struct DevGptq {
  GptqDeviceMatrix m;
  uint32_t* qweight = nullptr;
  uint32_t* scale_zero = nullptr;
  int32_t* chunk_group = nullptr;
  int64_t bytes = 0;
};

DevGptq make_gptq(int64_t K, int64_t N, int bits, int G, uint32_t seed) {
  DevGptq d;
  d.m.bits = bits;
  d.m.K = K;
  d.m.N = N;
  d.m.n_chunks = (K + 31) / 32;
  d.m.n_groups = (K + G - 1) / G;
  const int64_t nq = gptq::cuda::gptq_qweight_words(bits, d.m.n_chunks, N), nsz = d.m.n_groups * gptq::cuda::gptq_sz_stride(bits, N);
  CUDA_CHECK(cudaMalloc(&d.qweight, size_t(nq) * 4));
  CUDA_CHECK(cudaMalloc(&d.scale_zero, size_t(nsz) * 4));
  CUDA_CHECK(cudaMalloc(&d.chunk_group, size_t(d.m.n_chunks) * 4));
  fill_random_u32<<<fill_grid(nq), 256>>>(d.qweight, nq, seed);
  fill_scale_zero<<<fill_grid(nsz), 256>>>(d.scale_zero, nsz, bits, seed + 1);
  CUDA_CHECK(cudaGetLastError());
  std::vector<int32_t> cg(size_t(d.m.n_chunks));
  for (int64_t c = 0; c < d.m.n_chunks; ++c) cg[size_t(c)] = int32_t(c * 32 / G);
  CUDA_CHECK(cudaMemcpy(d.chunk_group, cg.data(), cg.size() * 4, cudaMemcpyHostToDevice));
  d.m.qweight = d.qweight;
  d.m.scale_zero = d.scale_zero;
  d.m.chunk_group = d.chunk_group;
  d.m.chunks_per_group = G / 32;
  d.bytes = (nq + nsz + d.m.n_chunks) * 4;
  return d;
}

void free_gptq(DevGptq& d) {
  CUDA_CHECK(cudaFree(d.qweight));
  CUDA_CHECK(cudaFree(d.scale_zero));
  CUDA_CHECK(cudaFree(d.chunk_group));
}

// y[T, N] (fp32) = x[T, K] (fp16) · W[N, K]ᵀ (fp16), fp32 compute. Column-major view: y is N x T,
// W row-major [N][K] is the K x N matrix Wc, so y = Wcᵀ x.
void cublas_gemm(cublasHandle_t h, const __half* W, const __half* x, float* y, int64_t K, int64_t N, int64_t T) {
  const float one = 1.f, zero = 0.f;
  CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, int(N), int(T), int(K), &one, W, CUDA_R_16F, int(K), x,
                            CUDA_R_16F, int(K), &zero, y, CUDA_R_32F, int(N), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// Median time of one call, in microseconds: `pass(stream)` issues one call per copy (`copies`
// of them); recorded once as a graph, replayed `reps` times between events.
template <typename F>
double time_passes(cudaStream_t s, int copies, int reps, F&& pass) {
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  pass(s);
  CUDA_CHECK(cudaStreamEndCapture(s, &graph));
  CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  cudaEvent_t a, b;
  CUDA_CHECK(cudaEventCreate(&a));
  CUDA_CHECK(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) CUDA_CHECK(cudaGraphLaunch(exec, s));  // warm up
  std::vector<double> us;
  for (int r = 0; r < reps; ++r) {
    CUDA_CHECK(cudaEventRecord(a, s));
    CUDA_CHECK(cudaGraphLaunch(exec, s));
    CUDA_CHECK(cudaEventRecord(b, s));
    CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    us.push_back(double(ms) * 1e3 / copies);
  }
  CUDA_CHECK(cudaEventDestroy(a));
  CUDA_CHECK(cudaEventDestroy(b));
  CUDA_CHECK(cudaGraphExecDestroy(exec));
  CUDA_CHECK(cudaGraphDestroy(graph));
  std::sort(us.begin(), us.end());
  return us[us.size() / 2];
}

double copy_bandwidth(cudaStream_t s) {
  const size_t bytes = size_t(1) << 30;
  void *a, *b;
  CUDA_CHECK(cudaMalloc(&a, bytes));
  CUDA_CHECK(cudaMalloc(&b, bytes));
  CUDA_CHECK(cudaMemsetAsync(a, 1, bytes, s));
  cudaEvent_t e0, e1;
  CUDA_CHECK(cudaEventCreate(&e0));
  CUDA_CHECK(cudaEventCreate(&e1));
  std::vector<double> t;
  for (int i = 0; i < 12; ++i) {
    CUDA_CHECK(cudaEventRecord(e0, s));
    CUDA_CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, s));
    CUDA_CHECK(cudaEventRecord(e1, s));
    CUDA_CHECK(cudaEventSynchronize(e1));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    if (i >= 2) t.push_back(ms * 1e-3);
  }
  std::sort(t.begin(), t.end());
  CUDA_CHECK(cudaEventDestroy(e0));
  CUDA_CHECK(cudaEventDestroy(e1));
  CUDA_CHECK(cudaFree(a));
  CUDA_CHECK(cudaFree(b));
  return 2.0 * double(bytes) / t[t.size() / 2];
}

double nmse(const std::vector<float>& y, const std::vector<float>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    const double d = double(y[i]) - double(ref[i]);
    num += d * d;
    den += double(ref[i]) * double(ref[i]);
  }
  return den > 0 ? num / den : num;
}

std::vector<float> download(const float* d, size_t n) {
  std::vector<float> h(n);
  CUDA_CHECK(cudaMemcpy(h.data(), d, n * 4, cudaMemcpyDeviceToHost));
  return h;
}

struct Result {
  std::string kernel, shape;
  int64_t K, N, T;
  double us, bytes, nmse;
};

}  // namespace

int main(int argc, char** argv) {
  int reps = 50;
  std::string json;
  bool sweep_gemv = false, sweep_gemm = false;
  std::string only_shape;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--sweep") || !std::strcmp(argv[i], "--sweep=gemv") ||
        !std::strcmp(argv[i], "--sweep=gemm")) {
      sweep_gemv = std::strcmp(argv[i], "--sweep=gemm") != 0;
      sweep_gemm = std::strcmp(argv[i], "--sweep=gemv") != 0;
    } else if (!std::strcmp(argv[i], "--shape") && i + 1 < argc) {
      only_shape = argv[++i];
    } else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) {
      reps = std::max(1, std::atoi(argv[++i]));
    } else if (!std::strcmp(argv[i], "--json") && i + 1 < argc) {
      json = argv[++i];
    } else {
      std::fprintf(stderr, "usage: %s [--reps R] [--json FILE] [--sweep[=gemv|gemm]] [--shape NAME]\n", argv[0]);
      return 2;
    }
  }
  int dev_count = 0;
  if (cudaGetDeviceCount(&dev_count) != cudaSuccess || dev_count == 0) {
    std::fprintf(stderr, "gptq_cuda_workbench: no CUDA device\n");
    return 2;
  }
  cudaDeviceProp prop;
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  cudaStream_t s;
  CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  cublasHandle_t h;
  CUBLAS_CHECK(cublasCreate(&h));
  CUBLAS_CHECK(cublasSetStream(h, s));
  void* cublas_ws;  // graph capture needs cuBLAS to use a workspace of ours
  const size_t ws_bytes = size_t(64) << 20;
  CUDA_CHECK(cudaMalloc(&cublas_ws, ws_bytes));
  CUBLAS_CHECK(cublasSetWorkspace(h, cublas_ws, ws_bytes));

  const double copy_bw = copy_bandwidth(s);
  std::printf("gptq %s (%s), %s, %d SMs, L2 %d MB; copy bandwidth (D2D 1 GiB, read+write) %.0f GB/s; "
              "median of %d passes, >= %.0f MB per pass\n\n",
              gptq::version(), gptq::commit(), prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20,
              copy_bw / 1e9, reps, kRotationBytes / 1e6);

  const int64_t maxT = 512;
  std::vector<Result> results;
  for (const Shape& sh : kShapes) {
    if (!only_shape.empty() && only_shape != sh.name) continue;
    const int64_t K = sh.K, N = sh.N;
    // x: fp16-exact values, as fp16 for cuBLAS and fp32 for the GEMV; y fp32 for both.
    __half* xh;
    float *xf, *y, *yref;
    CUDA_CHECK(cudaMalloc(&xh, size_t(maxT * K) * 2));
    CUDA_CHECK(cudaMalloc(&xf, size_t(maxT * K) * 4));
    CUDA_CHECK(cudaMalloc(&y, size_t(maxT * N) * 4));
    CUDA_CHECK(cudaMalloc(&yref, size_t(maxT * N) * 4));
    fill_random_half<<<fill_grid(maxT * K), 256>>>(xh, maxT * K, 1.f, 7);
    half_to_float<<<fill_grid(maxT * K), 256>>>(xh, xf, maxT * K);
    CUDA_CHECK(cudaGetLastError());

    // cuBLAS fp16: random fp16 weights, copies enough for kRotationBytes.
    {
      const double wbytes = double(N * K) * 2;
      const int copies = std::max(1, int(std::ceil(kRotationBytes / wbytes)));
      std::vector<__half*> W(static_cast<size_t>(copies));
      for (int c = 0; c < copies; ++c) {
        CUDA_CHECK(cudaMalloc(&W[size_t(c)], size_t(N * K) * 2));
        fill_random_half<<<fill_grid(N * K), 256>>>(W[size_t(c)], N * K, 0.02f, 100 + c);
      }
      CUDA_CHECK(cudaGetLastError());
      for (int64_t T : kCublasT) {
        const double us = time_passes(s, copies, reps, [&](cudaStream_t) {
          for (int c = 0; c < copies; ++c) cublas_gemm(h, W[size_t(c)], xh, y, K, N, T);
        });
        results.push_back({"cublas f16", sh.name, K, N, T, us, wbytes + double(T * K) * 2 + double(T * N) * 4, -1});
      }
      // Our dense GEMV on the same weights (fp32 x, the decode path of fp16 checkpoints).
      for (int64_t T : kGemvT) {
        cublas_gemm(h, W[0], xh, yref, K, N, T);
        CUDA_CHECK(cudaMemsetAsync(y, 0xff, size_t(T * N) * 4, s));
        gptq::cuda::dense_gemv(W[0], gptq::cuda::ElemType::kF16, K, N, xf, K, T, y, N, s);
        CUDA_CHECK(cudaStreamSynchronize(s));
        const double err = nmse(download(y, size_t(T * N)), download(yref, size_t(T * N)));
        const double us = time_passes(s, copies, reps, [&](cudaStream_t st) {
          for (int c = 0; c < copies; ++c)
            gptq::cuda::dense_gemv(W[size_t(c)], gptq::cuda::ElemType::kF16, K, N, xf, K, T, y, N, st);
        });
        results.push_back({"ours f16 gemv", sh.name, K, N, T, us, wbytes + double(T * K) * 4 + double(T * N) * 4, err});
      }
      for (__half* w : W) CUDA_CHECK(cudaFree(w));
    }

    for (const GptqConfig& g : kGptq) {
      DevGptq probe = make_gptq(K, N, g.bits, g.group, 1);
      const double wbytes = double(probe.bytes);
      const int copies = std::max(1, int(std::ceil(kRotationBytes / wbytes)));
      std::vector<DevGptq> W{probe};
      for (int c = 1; c < copies; ++c) W.push_back(make_gptq(K, N, g.bits, g.group, 1 + 10 * c));
      // Reference: cuBLAS on the fp16 dequantization of copy 0.
      __half* Wd;
      CUDA_CHECK(cudaMalloc(&Wd, size_t(N * K) * 2));
      gptq::cuda::gptq_dequant_f16(W[0].m, Wd, s);
      // The dispatch's launch; for 4-bit g128 also the launch choices it picks from (column tiles per
      // block sharing x, chunks per scale), so the dispatch table can be read off this output.
      // Each 4-bit kernel alone (the ring, gptq4_mma_gemv; the registers, gptq4_reg_gemv) at the
      // dispatch's column tiles, and with --sweep their column tiles, spans and warps per block.
      std::vector<std::pair<std::string, gptq::cuda::Gemv4Tuning>> variants{{g.name(), {}}};
      if (g.bits == 4) {
        variants.push_back({g.name() + " ring", {0, 0, -1, 0, 0, 1}});
        variants.push_back({g.name() + " reg", {0, 0, -1, 0, 0, 2}});
      }
      if (g.bits == 4 && g.group == 128 && sweep_gemv) {
        for (int ct : {1, 2, 4})
          for (int span : {1, 4})
            variants.push_back({g.name() + " ct" + std::to_string(ct) + " span" + std::to_string(span), {ct, 0, 1, span, 0, 1}});
        for (int ct : {1, 2, 4})
          for (int wp : {0, 4, 8, 16})
            variants.push_back({g.name() + " reg ct" + std::to_string(ct) + " w" + std::to_string(wp), {ct, wp, -1, 0, 0, 2}});
      }
      for (const auto& [vname, tune] : variants)
        for (int64_t T : kGemvT) {
          cublas_gemm(h, Wd, xh, yref, K, N, T);
          CUDA_CHECK(cudaMemsetAsync(y, 0xff, size_t(T * N) * 4, s));  // NaN poison
          gptq::cuda::gptq_gemv(W[0].m, xf, K, T, y, N, s, tune);
          CUDA_CHECK(cudaStreamSynchronize(s));
          const double err = nmse(download(y, size_t(T * N)), download(yref, size_t(T * N)));
          const double us = time_passes(s, copies, reps, [&](cudaStream_t st) {
            for (int c = 0; c < copies; ++c) gptq::cuda::gptq_gemv(W[size_t(c)].m, xf, K, T, y, N, st, tune);
          });
          results.push_back({vname, sh.name, K, N, T, us, wbytes + double(T * K) * 4 + double(T * N) * 4, err});
        }
      // The batched tensor-core kernel (T > 8, 4 bits), its default launch; with --sweep also the
      // launch choices (column tiles per warp, warps, K splits) it picks from.
      if (g.bits == 4) {
        std::vector<std::pair<std::string, gptq::cuda::GemmTuning>> gvariants{{g.name() + " tc", {}}};
        if (g.group == 128 && sweep_gemm)
          for (int ctw : {1, 2, 4})
            for (int wp : {4, 8})
              for (int sp : {0, 1, 2, 4})
                gvariants.push_back({g.name() + " tc c" + std::to_string(ctw) + " w" + std::to_string(wp) + " s" +
                                         std::to_string(sp),
                                     {ctw, wp, sp}});
        for (const auto& [vname, tune] : gvariants)
          for (int64_t T : kGemmT) {
            if (tune.col_tiles * ((T + 7) / 8 <= 2 ? 2 : (T + 7) / 8 <= 4 ? 4 : 8) > 16) continue;  // spills: refused
            const auto need = gptq::cuda::gptq_gemm_scratch(W[0].m, T, tune);
            void* ws;
            int* cnt;
            CUDA_CHECK(cudaMalloc(&ws, std::max<size_t>(need.bytes, 1)));
            CUDA_CHECK(cudaMalloc(&cnt, size_t(std::max<int64_t>(need.counters, 1)) * 4));
            CUDA_CHECK(cudaMemset(cnt, 0, size_t(std::max<int64_t>(need.counters, 1)) * 4));
            cublas_gemm(h, Wd, xh, yref, K, N, T);
            CUDA_CHECK(cudaMemsetAsync(y, 0xff, size_t(T * N) * 4, s));
            gptq::cuda::gptq_gemm(W[0].m, xf, K, T, y, N, ws, need.bytes, cnt, need.counters, s, tune);
            CUDA_CHECK(cudaStreamSynchronize(s));
            const double err = nmse(download(y, size_t(T * N)), download(yref, size_t(T * N)));
            const double us = time_passes(s, copies, reps, [&](cudaStream_t st) {
              for (int c = 0; c < copies; ++c)
                gptq::cuda::gptq_gemm(W[size_t(c)].m, xf, K, T, y, N, ws, need.bytes, cnt, need.counters, st, tune);
            });
            results.push_back({vname, sh.name, K, N, T, us, wbytes + double(T * K) * 4 + double(T * N) * 4, err});
            CUDA_CHECK(cudaFree(ws));
            CUDA_CHECK(cudaFree(cnt));
          }
      }
      // Dequantization alone (what T > 8 pays before cuBLAS): reads the GPTQ bytes, writes fp16.
      {
        // One output for all copies: at N*K*2 >= 33 MB per write it gains little from L2.
        const double us = time_passes(s, copies, reps, [&](cudaStream_t st) {
          for (int c = 0; c < copies; ++c) gptq::cuda::gptq_dequant_f16(W[size_t(c)].m, Wd, st);
        });
        results.push_back({g.name() + " dequant", sh.name, K, N, 0, us, wbytes + double(N * K) * 2, -1});
      }
      CUDA_CHECK(cudaFree(Wd));
      for (DevGptq& d : W) free_gptq(d);
    }
    CUDA_CHECK(cudaFree(xh));
    CUDA_CHECK(cudaFree(xf));
    CUDA_CHECK(cudaFree(y));
    CUDA_CHECK(cudaFree(yref));
  }

  // ---- the table
  std::map<std::pair<std::string, int64_t>, double> cublas_us;  // (shape, T) -> us
  for (const Result& r : results)
    if (r.kernel == "cublas f16") cublas_us[{r.shape, r.T}] = r.us;
  std::printf("| %-20s | %-7s | %13s | %4s | %9s | %7s | %6s | %9s | %9s |\n", "kernel", "shape", "K x N", "T", "us",
              "GB/s", "% copy", "x cuBLAS", "NMSE");
  std::printf("|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n", std::string(22, '-').c_str(), std::string(9, '-').c_str(),
              std::string(15, '-').c_str(), std::string(6, '-').c_str(), std::string(11, '-').c_str(),
              std::string(9, '-').c_str(), std::string(8, '-').c_str(), std::string(11, '-').c_str(),
              std::string(11, '-').c_str());
  for (const Result& r : results) {
    const double gbs = r.bytes / (r.us * 1e-6) / 1e9;
    char ratio[32] = "", err[32] = "", dims[32], tcol[16];
    auto it = cublas_us.find({r.shape, r.T});
    if (it != cublas_us.end() && r.T > 0) std::snprintf(ratio, sizeof ratio, "%.2f", it->second / r.us);
    if (r.nmse >= 0) std::snprintf(err, sizeof err, "%.2e", r.nmse);
    std::snprintf(dims, sizeof dims, "%lldx%lld", (long long)r.K, (long long)r.N);
    std::snprintf(tcol, sizeof tcol, r.T > 0 ? "%lld" : "-", (long long)r.T);
    std::printf("| %-20s | %-7s | %13s | %4s | %9.2f | %7.0f | %6.1f | %9s | %9s |\n", r.kernel.c_str(),
                r.shape.c_str(), dims, tcol, r.us, gbs, 100.0 * gbs * 1e9 / copy_bw, ratio, err);
  }

  // ---- per decoder layer (the 4 shapes)
  std::map<std::pair<std::string, int64_t>, std::pair<double, double>> layer;  // (kernel, T) -> (us, bytes)
  std::vector<std::pair<std::string, int64_t>> order;
  for (const Result& r : results) {
    auto key = std::make_pair(r.kernel, r.T);
    if (!layer.count(key)) order.push_back(key);
    layer[key].first += r.us;
    layer[key].second += r.bytes;
  }
  std::printf("\nper decoder layer (qkv + o + gate_up + down):\n");
  std::printf("| %-20s | %4s | %9s | %7s | %6s | %9s |\n", "kernel", "T", "us", "GB/s", "% copy", "x cuBLAS");
  std::printf("|%s|%s|%s|%s|%s|%s|\n", std::string(22, '-').c_str(), std::string(6, '-').c_str(),
              std::string(11, '-').c_str(), std::string(9, '-').c_str(), std::string(8, '-').c_str(),
              std::string(11, '-').c_str());
  for (const auto& key : order) {
    const auto [us, bytes] = layer[key];
    const double gbs = bytes / (us * 1e-6) / 1e9;
    char ratio[32] = "", tcol[16];
    auto it = layer.find({"cublas f16", key.second});
    if (it != layer.end() && key.second > 0) std::snprintf(ratio, sizeof ratio, "%.2f", it->second.first / us);
    std::snprintf(tcol, sizeof tcol, key.second > 0 ? "%lld" : "-", (long long)key.second);
    std::printf("| %-20s | %4s | %9.2f | %7.0f | %6.1f | %9s |\n", key.first.c_str(), tcol, us, gbs,
                100.0 * gbs * 1e9 / copy_bw, ratio);
  }

  if (!json.empty()) {
    FILE* f = std::fopen(json.c_str(), "w");
    if (!f) {
      std::fprintf(stderr, "cannot write %s\n", json.c_str());
      return 2;
    }
    std::fprintf(f, "{\"commit\": \"%s\", \"device\": \"%s\", \"copy_gbs\": %.1f, \"results\": [\n", gptq::commit(),
                 prop.name, copy_bw / 1e9);
    for (size_t i = 0; i < results.size(); ++i) {
      const Result& r = results[i];
      std::fprintf(f,
                   "  {\"kernel\": \"%s\", \"shape\": \"%s\", \"K\": %lld, \"N\": %lld, \"T\": %lld, \"us\": %.3f, "
                   "\"gbs\": %.1f, \"nmse\": %.3e}%s\n",
                   r.kernel.c_str(), r.shape.c_str(), (long long)r.K, (long long)r.N, (long long)r.T, r.us,
                   r.bytes / (r.us * 1e-6) / 1e9, r.nmse, i + 1 < results.size() ? "," : "");
    }
    std::fprintf(f, "]}\n");
    std::fclose(f);
  }
  CUBLAS_CHECK(cublasDestroy(h));
  CUDA_CHECK(cudaFree(cublas_ws));
  CUDA_CHECK(cudaStreamDestroy(s));
  return 0;
}
