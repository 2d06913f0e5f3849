// Launchers of the CUDA backend's elementwise, normalization, RoPE and attention kernels
// (elementwise.cu, attention.cu). All asynchronous on `s`; pointers are device memory; fp32
// activations with a row stride in elements. Shapes follow backend/backend.h.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace gptq::cuda {

enum class ElemType { kF32, kF16, kBF16 };

// y[t, :] = table[tokens[t], :] (table [V, H] in `tt`)
void embed_rows(const void* table, ElemType tt, int64_t H, const int32_t* tokens, int64_t T, float* y,
                int64_t y_stride, cudaStream_t s);
// y = x / sqrt(mean(x²) + eps) * w per row (y may alias x)
void rms_norm(const float* x, int64_t x_stride, const float* w, float eps, int64_t rows, int64_t D, float* y,
              int64_t y_stride, cudaStream_t s);
// cs[t, i] = cos(pos[t] * inv[i]), cs[t, half + i] = sin(...), the angle rounded to fp32 first
void rope_angles(const float* inv_freq, int64_t half, const int32_t* positions, int64_t T, float* cs,
                 int64_t cs_stride, cudaStream_t s);
// rotate-half RoPE in place, q: [T, nq * hd] and k: [T, nk * hd] (nk may be 0), in one launch
void rope(float* q, int64_t q_stride, int64_t nq, float* k, int64_t k_stride, int64_t nk, int64_t T, int64_t hd,
          const float* cs, int64_t cs_stride, cudaStream_t s);
// g = silu(g) * u, [rows, cols] each with its row stride
void silu_mul(float* g, int64_t g_stride, const float* u, int64_t u_stride, int64_t rows, int64_t cols, cudaStream_t s);
void add(float* x, int64_t x_stride, const float* y, int64_t y_stride, int64_t rows, int64_t cols, cudaStream_t s);
// y[i, :] = x[rows[i], :]
void gather_rows(const float* x, int64_t x_stride, const int64_t* rows, int64_t n, int64_t cols, float* y,
                 int64_t y_stride, cudaStream_t s);
// y[t, k] = x[t, perm[k]] (act-order input reordering); y rows y_stride apart
void permute_cols(const float* x, int64_t x_stride, const int32_t* perm, int64_t T, int64_t K, int64_t y_stride,
                  float* y, cudaStream_t s);
// y [T, K] contiguous in `yt` (F16/BF16) from x fp32
void convert_rows(const float* x, int64_t x_stride, int64_t T, int64_t K, void* y, ElemType yt, cudaStream_t s);
// out [n] fp32 from `t`
void to_f32(const void* src, ElemType t, int64_t n, float* out, cudaStream_t s);
void add_bias(float* y, int64_t y_stride, const float* bias, int64_t T, int64_t N, cudaStream_t s);
// Synthetic weights: dst[i] = synthetic_uniform(seed, i) * scale as `t` (core/synthetic.h)
void fill_uniform(void* dst, ElemType t, int64_t n, float scale, uint64_t seed, cudaStream_t s);

// ---- dense 16-bit weights at decode batch sizes (dense_gemv.cu): y[T, N] = x[T, K] · Wᵀ, W [N, K]
// F16/BF16, fp32 x and accumulation. Only where dense_gemv_ok (K % 8, 16-byte alignment, T <= 8).
constexpr int64_t kDenseGemvMaxRows = 8;
bool dense_gemv_ok(const void* W, int64_t K, const float* x, int64_t xs, int64_t T);
void dense_gemv(const void* W, ElemType wt, int64_t K, int64_t N, const float* x, int64_t xs, int64_t T, float* y,
                int64_t ys, cudaStream_t s, bool accumulate = false,  // accumulate: y += x · Wᵀ
                bool pdl = false);  // a programmatic dependent launch (device_util.cuh; compute capability 9.0+)

// ---- attention over the paged KV cache (attention.cu)
struct PagedKV {
  void* const* blocks = nullptr;  // device array: base address of each block id
  int64_t n_kv_heads = 0, head_dim = 0, block_size = 0;
  size_t layer_bytes = 0, head_bytes = 0;  // KVLayout's
  bool f16 = false;
};

struct AttnSeqDev {
  int32_t row0, n_rows, pos0, n_blocks;
  int64_t table0;  // this sequence's block table starts at tables[table0]
};

// k, v [T, nkv*hd] into their slots (slot = block * block_size + offset) of `layer`.
void kv_store(const PagedKV& kv, int64_t layer, const float* k, int64_t k_stride, const float* v, int64_t v_stride,
              const int64_t* slots, int64_t T, cudaStream_t s);

struct AttnArgs {
  PagedKV kv;
  int64_t layer = 0, n_heads = 0, T = 0;
  const float* q = nullptr;
  int64_t q_stride = 0;
  float* out = nullptr;
  int64_t out_stride = 0;
  const int32_t* row_seq = nullptr;  // [T] sequence of each row
  const AttnSeqDev* seqs = nullptr;
  const int32_t* tables = nullptr;
  // An upper bound on the keys any row sees: sizes the split. The cache's context length keeps the
  // launch the same from one decode step to the next (CUDA graphs).
  int64_t max_keys = 0;
  float* scratch = nullptr;  // attention_scratch_floats(...) floats
  // Sequences with this many new rows or more are left to paged_attention_prefill (0: none are).
  int64_t prefill_rows = 0;
};
size_t attention_scratch_floats(int64_t T, int64_t n_heads, int64_t head_dim, int64_t max_keys);
// The fp32 kernel (attention.cu): every row, except those of sequences with a.prefill_rows new rows
// or more when a.prefill_rows > 0.
void paged_attention(const AttnArgs& a, cudaStream_t s);

// Prefill on tensor cores (attention_prefill.cu): the rows of the sequences (a.seqs[0 .. n_seqs))
// with kPrefillMinRows new rows or more; max_rows: the most new rows of any sequence. fp16
// operands, fp32 accumulation (see there). Only where prefill_attention_ok.
constexpr int64_t kPrefillMinRows = 16;
bool prefill_attention_ok(int64_t head_dim, const float* q, int64_t q_stride, const float* out, int64_t out_stride);
void paged_attention_prefill(const AttnArgs& a, int64_t n_seqs, int64_t max_rows, cudaStream_t s);

}  // namespace gptq::cuda
