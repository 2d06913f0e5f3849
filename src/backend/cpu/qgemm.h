// Quantized GEMM on the CPU: y[T, N] = x[T, K] * W^T (+ bias) for a GPTQ layer, dequantizing W on
// the fly. W never exists in fp32 as a whole.
//
// Contract (DESIGN.md "launcher contract"): prepare() validates the checkpoint tensors and throws
// gptq::Error for what cannot be run (it can run everything validate() accepts); it returns an
// owning PreparedQuantMatrix whose layout is private to these kernels. qgemm() then needs no
// workspace from the caller (it keeps thread-local scratch).
//
// Prepared layout (why it differs from the checkpoint's [K*b/32, N]):
//  - Act-order: the input channels are reordered once so that g_idx is non-decreasing (as exllama
//    does); each group is then a contiguous range of the reordered K and qgemm permutes x's
//    columns instead (O(T*K) per call, negligible next to the weights).
//  - Column tiles of kTileN = 32 outputs: qweight is stored [N/32][K*b/32][32], so one tile's
//    codes for all K are one contiguous stream (the checkpoint layout would make every word row of
//    a tile a separate 4 KiB-strided access, which the hardware prefetcher does not follow).
//    N is padded to a multiple of 32 with zero codes.
//  - scales and zeros as fp16 [N/32][n_groups][32]; zeros hold the real zero point (v1's +1
//    applied), fp16 represents it exactly.
//
// Paths: a scalar reference (plain C++, any group layout) and AVX2+FMA+F16C / AVX-512F kernels
// picked at run time (__builtin_cpu_supports); the library itself is built for baseline x86-64.
// The SIMD kernels need every group boundary on a packing unit (32/b values; 32 for 3 bits),
// which every checkpoint GPTQ tools write (G a multiple of 32, act-order groups of G);
// other layouts run on the scalar path.
//  - T <= max_direct_t ("decode"): per tile and group, codes are decoded into registers and
//    accumulated as acc = sum_k x[k]*q[k]; y += s * (acc - z * sum_k x[k]). Memory-bound.
//  - larger T ("prefill"): per thread, a [512 x 128] block of W is dequantized to fp32 into a
//    thread-local buffer and multiplied with cblas_sgemm (single-threaded inside our pool).
//    Up to T ~ 64-128 decoding T rows directly beats dequantizing plus OpenBLAS repacking,
//    hence the default max_direct_t (measured on Zen AVX2, see bench_quant.cpp).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "io/gptq_format.h"

namespace gptq::cpu {

enum class QgemmIsa { kAuto, kScalar, kAvx2, kAvx512 };

const char* isa_name(QgemmIsa isa);
bool qgemm_isa_supported(QgemmIsa isa);  // kAuto and kScalar: always
QgemmIsa qgemm_best_isa();               // what kAuto resolves to on this CPU

struct PreparedQuantMatrix {
  static constexpr int64_t kTileN = 32;

  int bits = 4;
  int64_t K = 0, N = 0;
  int64_t n_groups = 0;
  int64_t n_tiles = 0;         // ceil(N / 32)
  int64_t words_per_col = 0;   // K*bits/32
  std::vector<uint32_t> qweight;     // [n_tiles][words_per_col][32]
  std::vector<uint16_t> scales;      // fp16 [n_tiles][n_groups][32]
  std::vector<uint16_t> zeros;       // fp16 [n_tiles][n_groups][32]
  std::vector<int32_t> group_begin;  // [n_groups + 1]: group g = reordered k in [begin[g], begin[g+1])
  std::vector<int32_t> unit_group;   // [K / unit]: group of each packing unit (when unit_aligned)
  std::vector<int32_t> perm;         // [K]: reordered k reads x[perm[k]]; empty when identity
  std::vector<float> bias;           // [N] or empty
  bool unit_aligned = false;         // SIMD kernels usable

  // Values per packing unit: 32 for 3 bits (3 words), else 32/bits (1 word).
  int64_t unit_values() const { return bits == 3 ? 32 : 32 / bits; }
  int64_t unit_words() const { return bits == 3 ? 3 : 1; }
  // Bytes the checkpoint holds for this layer (qweight + qzeros + scales): the decode traffic.
  int64_t checkpoint_bytes() const;
};

// W: [N, K] fp32 in the original input order (bias not applied), from the prepared layout alone:
// the same values as quant::dequantize of the matrix it was prepared from, so a weight handle needs
// no view of the checkpoint after prepare().
std::vector<float> dequantize(const PreparedQuantMatrix& m);

// The launcher contract's first step: whether prepare(m) will succeed; why not in *why.
bool can_implement(const quant::QuantMatrix& m, std::string* why = nullptr);

// Validates m (gptq::Error on bad input) and builds the kernel layout.
PreparedQuantMatrix prepare(const quant::QuantMatrix& m, ThreadPool& pool);

struct QgemmOptions {
  QgemmIsa isa = QgemmIsa::kAuto;  // a forced ISA this CPU lacks is a programmer error
  int64_t max_direct_t = 64;      // T up to this runs the decode kernel, above it dequant+sgemm
};

// x: [T, K] fp32 row-major, y: [T, N] fp32 row-major (overwritten). Multithreaded over N with
// gptq::parallel_for, so it must not be called from inside a parallel_for task (the pool does not
// nest). OpenBLAS is held to one thread for the duration of the call (sgemm runs inside our
// threads) and restored afterwards.
void qgemm(ThreadPool& pool, const PreparedQuantMatrix& w, const float* x, int64_t T, float* y,
           const QgemmOptions& opt = {});

}  // namespace gptq::cpu
