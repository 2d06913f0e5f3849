#include "backend/cpu/cpu_backend.h"

#include <cblas.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "backend/cpu/cpu_features.h"
#include "backend/cpu/fixed_gemm.h"
#include "backend/cpu/gemm.h"
#include "backend/cpu/qgemm.h"
#include "core/half.h"
#include "backend/cpu/hessian.h"

namespace gptq {

namespace {

class CpuDenseWeight final : public Weight {
 public:
  CpuDenseWeight(const DenseWeightDesc& d) : Weight(d.in, d.out), data_(d.data), dtype_(d.dtype) {
    GPTQ_ASSERT(dtype_ == DType::kF32 || dtype_ == DType::kF16 || dtype_ == DType::kBF16);
    if (d.copy) {
      const size_t n = size_t(d.in * d.out) * dtype_size(dtype_);
      owned_.resize((n + 3) / 4);
      std::memcpy(owned_.data(), d.data, n);
      data_ = owned_.data();
    }
    if (d.bias) bias_.assign(d.bias, d.bias + d.out);
  }
  std::string kind() const override { return dtype_name(dtype_); }
  size_t bytes() const override { return size_t(in_ * out_) * dtype_size(dtype_) + bias_.size() * 4; }
  std::vector<float> dense() const override {
    std::vector<float> w(size_t(in_ * out_));
    cpu::to_f32(data_, dtype_, in_ * out_, w.data());
    return w;
  }
  const void* data() const { return data_; }
  DType dtype() const { return dtype_; }

 private:
  const void* data_;
  DType dtype_;
  std::vector<float> owned_;  // 4-byte words holding a copy when asked
};

quant::QuantMatrix without_bias(quant::QuantMatrix m) {
  m.bias = nullptr;
  return m;
}

class CpuGptqWeight final : public Weight {
 public:
  // The bias is the argument's, else the matrix's own (fp16); the backend adds it once.
  CpuGptqWeight(ThreadPool& pool, const quant::QuantMatrix& m, const float* bias)
      : Weight(m.K, m.N), w_(cpu::prepare(without_bias(m), pool)) {
    if (bias) {
      bias_.assign(bias, bias + m.N);
    } else if (m.bias) {
      for (int64_t n = 0; n < m.N; ++n) bias_.push_back(fp16_to_fp32(m.bias[n]));
    }
    bool act_order = false;
    if (m.g_idx) {
      const int64_t G = quant::resolve_group_size(m.K, m.group_size);
      for (int64_t k = 0; k < m.K && !act_order; ++k) act_order = m.g_idx[k] != k / G;
    }
    kind_ = "GPTQ " + std::to_string(m.bits) + "-bit g" + std::to_string(m.group_size) + (act_order ? " act-order" : "");
  }
  std::string kind() const override { return kind_; }
  size_t bytes() const override {
    return size_t(w_.checkpoint_bytes()) + (w_.perm.empty() ? 0 : size_t(in_) * 4) + bias_.size() * 4;
  }
  std::vector<float> dense() const override { return cpu::dequantize(w_); }
  const cpu::PreparedQuantMatrix& prepared() const { return w_; }

 private:
  cpu::PreparedQuantMatrix w_;
  std::string kind_;
};

void check_cpu(const Tensor& t) { GPTQ_ASSERT(t.device == Device::kCpu && t.dtype == DType::kF32, "not a CPU F32 tensor"); }

void add_bias(const std::vector<float>& b, const Tensor& y) {
  if (b.empty()) return;
  for (int64_t t = 0; t < y.rows; ++t) {
    float* r = y.f32() + t * y.stride;
    for (int64_t n = 0; n < y.cols; ++n) r[n] += b[size_t(n)];
  }
}

// One query row against a block of keys/values, with the arithmetic of gemm_nt_fixed (dot8:
// lane l sums k ≡ l mod 8 by fma, tree ((0+1)+(2+3))+((4+5)+(6+7)), times alpha) and of
// gemm_nn_fixed (per block an fma chain from +0, added to the output): the same bits as those
// calls, without their per-call packing, which dominates decode (one row, blocks of 16 keys).
__attribute__((target("avx2,fma"))) void scores_row_avx2(const float* q, const float* K, int64_t nk, int64_t hd,
                                                         float scale, float* out) {
  for (int64_t j = 0; j < nk; ++j) {
    const float* k = K + j * hd;
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= hd; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(k + i), acc);
    alignas(32) float l[8];
    _mm256_store_ps(l, acc);
    for (int64_t t = 0; i < hd; ++i, ++t) l[t] = std::fma(q[i], k[i], l[t]);
    out[j] = scale * (((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7])));
  }
}

__attribute__((target("avx2,fma"))) void pv_row_avx2(const float* p, const float* V, int64_t nk, int64_t hd, bool first,
                                                     float* o) {
  int64_t i = 0;
  for (; i + 8 <= hd; i += 8) {
    __m256 s = _mm256_setzero_ps();
    for (int64_t j = 0; j < nk; ++j) s = _mm256_fmadd_ps(_mm256_set1_ps(p[j]), _mm256_loadu_ps(V + j * hd + i), s);
    _mm256_storeu_ps(o + i, first ? s : _mm256_add_ps(_mm256_loadu_ps(o + i), s));
  }
  for (; i < hd; ++i) {
    float s = 0.f;
    for (int64_t j = 0; j < nk; ++j) s = std::fma(p[j], V[j * hd + i], s);
    o[i] = first ? s : o[i] + s;
  }
}

// y[T, N] = x[T, K] · Wᵀ in the fixed order of fixed_gemm.h, W in its file dtype: blocks of rows
// are converted to fp32 per task; each output is one whole dot product, so neither the blocking
// nor the thread count changes it.
void linear_fixed(ThreadPool& pool, const float* x, int64_t T, int64_t K, const void* w, DType wt, int64_t N, float* y) {
  if (wt == DType::kF32) {
    cpu::gemm_nt_fixed(&pool, T, N, K, 1.f, x, K, static_cast<const float*>(w), K, 0.f, y, N);
    return;
  }
  constexpr int64_t kRows = 64;
  const size_t es = dtype_size(wt);
  pool.parallel_for(0, size_t(N), [&](size_t b0, size_t b1) {
    std::vector<float> buf;
    for (size_t n0 = b0; n0 < b1; n0 += kRows) {
      const int64_t nb = std::min<int64_t>(kRows, int64_t(b1 - n0));
      buf.resize(size_t(nb * K));
      cpu::to_f32(static_cast<const uint8_t*>(w) + n0 * size_t(K) * es, wt, nb * K, buf.data());
      cpu::gemm_nt_fixed(nullptr, T, nb, K, 1.f, x, K, buf.data(), K, 0.f, y + n0, N);
    }
  }, size_t(kRows));
}

}  // namespace

CpuBackend::CpuBackend(const CpuBackendOptions& o) : pool_(o.threads) {
  // BLAS policy: our pool owns the parallelism; OpenBLAS runs single-threaded inside its tasks.
  openblas_set_num_threads(1);
}

CpuBackend::~CpuBackend() = default;

std::string CpuBackend::name() const {
  return cat("cpu (", cpu::simd_name(cpu::active_simd()), ", ", pool_.size(), " threads)");
}

std::shared_ptr<void> CpuBackend::alloc(size_t bytes) {
  // 64-byte aligned, so SIMD loads of a row start never split a cache line.
  void* p = ::operator new(std::max<size_t>(bytes, 1), std::align_val_t(64));
  return std::shared_ptr<void>(p, [](void* q) { ::operator delete(q, std::align_val_t(64)); });
}

void CpuBackend::upload(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }

void CpuBackend::to_host(const Tensor& src, float* dst) {
  check_cpu(src);
  for (int64_t r = 0; r < src.rows; ++r) std::memcpy(dst + r * src.cols, src.f32() + r * src.stride, size_t(src.cols) * 4);
}

void CpuBackend::from_host(const float* src, const Tensor& dst) {
  check_cpu(dst);
  for (int64_t r = 0; r < dst.rows; ++r) std::memcpy(dst.f32() + r * dst.stride, src + r * dst.cols, size_t(dst.cols) * 4);
}

void CpuBackend::fill_zero(const Tensor& t) {
  check_cpu(t);
  for (int64_t r = 0; r < t.rows; ++r) std::fill_n(t.f32() + r * t.stride, t.cols, 0.f);
}

void CpuBackend::copy(const Tensor& src, const Tensor& dst) {
  check_cpu(src);
  check_cpu(dst);
  GPTQ_ASSERT(src.rows == dst.rows && src.cols == dst.cols);
  for (int64_t r = 0; r < src.rows; ++r) std::memcpy(dst.f32() + r * dst.stride, src.f32() + r * src.stride, size_t(src.cols) * 4);
}

std::unique_ptr<Weight> CpuBackend::dense_weight(const DenseWeightDesc& d) { return std::make_unique<CpuDenseWeight>(d); }

std::unique_ptr<Weight> CpuBackend::gptq_weight(const quant::QuantMatrix& m, const float* bias) {
  return std::make_unique<CpuGptqWeight>(pool_, m, bias);
}

void CpuBackend::embed(const Weight& table, const BatchPlan& plan, const Tensor& y) {
  check_cpu(y);
  const auto* t = dynamic_cast<const CpuDenseWeight*>(&table);
  GPTQ_ASSERT(t, "embedding table must be a dense weight");
  const int64_t H = t->in_features();
  GPTQ_ASSERT(y.cols == H && y.rows == plan.n_tokens());
  for (int64_t i = 0; i < y.rows; ++i) {
    const int32_t id = plan.tokens[size_t(i)];
    GPTQ_ASSERT(id >= 0 && id < t->out_features());
    cpu::dense_row_to_f32(t->data(), t->dtype(), H, id, y.f32() + i * y.stride);
  }
}

void CpuBackend::linear(const Weight& w, const Tensor& x, const Tensor& y) {
  check_cpu(x);
  check_cpu(y);
  GPTQ_ASSERT(x.cols == w.in_features() && y.cols == w.out_features() && x.rows == y.rows);
  GPTQ_ASSERT(x.contiguous() && y.contiguous(), "linear needs contiguous rows");
  if (x.rows == 0) return;
  if (const auto* d = dynamic_cast<const CpuDenseWeight*>(&w)) {
    if (deterministic_) {
      linear_fixed(pool_, x.f32(), x.rows, x.cols, d->data(), d->dtype(), y.cols, y.f32());
      add_bias(w.bias(), y);
      return;
    }
    cpu::dense_matmul(pool_, x.f32(), x.rows, x.cols, d->data(), d->dtype(), y.cols, nullptr, y.f32());
  } else {
    const auto* g = dynamic_cast<const CpuGptqWeight*>(&w);
    GPTQ_ASSERT(g, "weight was not made by the CPU backend");
    cpu::qgemm(pool_, g->prepared(), x.f32(), x.rows, y.f32());
  }
  add_bias(w.bias(), y);
}

void CpuBackend::rms_norm(const Tensor& x, const Tensor& w, float eps, const Tensor& y) {
  check_cpu(x);
  check_cpu(y);
  const int64_t D = x.cols;
  GPTQ_ASSERT(w.cols == D && y.cols == D && y.rows == x.rows);
  const float* wp = w.f32();
  pool_.parallel_for(0, size_t(x.rows), [&](size_t t0, size_t t1) {
    for (size_t t = t0; t < t1; ++t) {
      const float* xr = x.f32() + t * x.stride;
      float* yr = y.f32() + t * y.stride;
      double ss = 0;
      for (int64_t i = 0; i < D; ++i) ss += double(xr[i]) * xr[i];
      const float inv = 1.f / std::sqrt(float(ss / double(D)) + eps);
      for (int64_t i = 0; i < D; ++i) yr[i] = wp[i] * (xr[i] * inv);
    }
  }, 8);
}

void CpuBackend::rope_angles(const Tensor& inv_freq, const BatchPlan& plan, const Tensor& cs) {
  check_cpu(cs);
  const int64_t half = inv_freq.cols;
  GPTQ_ASSERT(cs.cols == 2 * half && cs.rows == plan.n_tokens());
  const float* inv = inv_freq.f32();
  for (int64_t t = 0; t < cs.rows; ++t) {
    float* c = cs.f32() + t * cs.stride;
    const float p = float(plan.positions[size_t(t)]);
    for (int64_t i = 0; i < half; ++i) {
      const float a = p * inv[i];
      c[i] = float(std::cos(double(a)));
      c[half + i] = float(std::sin(double(a)));
    }
  }
}

void CpuBackend::rope(const Tensor& x, int64_t n_heads, int64_t hd, const Tensor& cs) {
  check_cpu(x);
  GPTQ_ASSERT(x.cols == n_heads * hd && cs.cols == hd && cs.rows == x.rows);
  const int64_t half = hd / 2;
  for (int64_t t = 0; t < x.rows; ++t) {
    const float* c = cs.f32() + t * cs.stride;
    const float* s = c + half;
    for (int64_t h = 0; h < n_heads; ++h) {
      float* v = x.f32() + t * x.stride + h * hd;
      for (int64_t i = 0; i < half; ++i) {
        const float x1 = v[i], x2 = v[i + half];
        v[i] = x1 * c[i] - x2 * s[i];
        v[i + half] = x2 * c[i] + x1 * s[i];
      }
    }
  }
}

void CpuBackend::attention(int64_t layer, const Tensor& q, const Tensor& k, const Tensor& v, const KVView& kv,
                           const BatchPlan& plan, int64_t n_heads, const Tensor& out) {
  check_cpu(q);
  check_cpu(out);
  const KVLayout& L = kv.layout;
  const int64_t hd = L.head_dim, nkv = L.n_kv_heads, bs = L.block_size, T = q.rows;
  GPTQ_ASSERT(q.cols == n_heads * hd && k.cols == nkv * hd && v.cols == nkv * hd && out.cols == q.cols);
  GPTQ_ASSERT(n_heads % nkv == 0 && layer >= 0 && layer < L.n_layers);
  const bool f16 = L.dtype == DType::kF16;
  const size_t es = dtype_size(L.dtype);
  auto head_ptr = [&](int32_t block, int64_t which, int64_t kvh) -> char* {  // which: 0 = K, 1 = V
    return static_cast<char*>(kv.blocks[block]) + size_t(layer) * L.layer_bytes() +
           size_t(which * nkv + kvh) * L.head_bytes();
  };
  // 1. The new keys and values into their slots.
  for (int64_t t = 0; t < T; ++t) {
    const int64_t slot = plan.slots[size_t(t)];
    const int32_t b = int32_t(slot / bs);
    const int64_t off = slot % bs;
    for (int64_t j = 0; j < nkv; ++j)
      for (int64_t which = 0; which < 2; ++which) {
        const float* src = (which == 0 ? k : v).f32() + t * (which == 0 ? k : v).stride + j * hd;
        char* dst = head_ptr(b, which, j) + size_t(off * hd) * es;
        if (f16) {
          auto* d = reinterpret_cast<uint16_t*>(dst);
          for (int64_t i = 0; i < hd; ++i) d[i] = fp32_to_fp16(src[i]);
        } else {
          std::memcpy(dst, src, size_t(hd) * 4);
        }
      }
  }
  // 2. One task per (sequence, head, block of query rows). Scores in the fixed dot order;
  // softmax in double; P·V accumulated key by key in position order.
  constexpr int64_t kRows = 64;
  struct Item { int64_t seq, head, r0, nr; };
  std::vector<Item> items;
  for (size_t s = 0; s < plan.seqs.size(); ++s)
    for (int64_t h = 0; h < n_heads; ++h)
      for (int64_t r0 = 0; r0 < plan.seqs[s].n_rows; r0 += kRows)
        items.push_back({int64_t(s), h, r0, std::min(kRows, plan.seqs[s].n_rows - r0)});
  const int64_t group = n_heads / nkv;
  const float scale = 1.f / std::sqrt(float(hd));
  const bool avx2 = cpu::active_simd() >= cpu::SimdLevel::kAvx2;
  pool_.parallel_for(0, items.size(), [&](size_t i0, size_t i1) {
    std::vector<float> sc, kbuf(size_t(bs * hd)), vbuf(size_t(bs * hd));
    for (size_t it = i0; it < i1; ++it) {
      const Item& w = items[it];
      const AttnSeq& S = plan.seqs[size_t(w.seq)];
      const int64_t kvh = w.head / group;
      const int64_t lk = S.pos0 + w.r0 + w.nr;  // keys the last row of this block sees (all written)
      const float* qb = q.f32() + (S.row0 + w.r0) * q.stride + w.head * hd;  // [nr, hd], stride q.stride
      float* ob = out.f32() + (S.row0 + w.r0) * out.stride + w.head * hd;
      sc.resize(size_t(w.nr * lk));
      const bool one_row = w.nr == 1 && avx2;  // decode: the direct kernels above
      auto load = [&](int64_t which, int64_t blk, std::vector<float>& buf) -> const float* {
        const char* p = head_ptr(S.block_table[blk], which, kvh);
        if (!f16) return reinterpret_cast<const float*>(p);
        const auto* h16 = reinterpret_cast<const uint16_t*>(p);
        for (int64_t i = 0; i < bs * hd; ++i) buf[size_t(i)] = fp16_to_fp32(h16[i]);
        return buf.data();
      };
      // sc[r, j] = scale · q_r · k_j, a block of keys at a time (fixed-order dots).
      for (int64_t j0 = 0; j0 < lk; j0 += bs) {
        const int64_t nk = std::min(bs, lk - j0);
        if (one_row)
          scores_row_avx2(qb, load(0, j0 / bs, kbuf), nk, hd, scale, sc.data() + j0);
        else
          cpu::gemm_nt_fixed(nullptr, w.nr, nk, hd, scale, qb, q.stride, load(0, j0 / bs, kbuf), hd, 0.f, sc.data() + j0, lk);
      }
      // Softmax over the keys each row sees (position order, double sum); the rest get 0.
      for (int64_t r = 0; r < w.nr; ++r) {
        float* row = sc.data() + r * lk;
        const int64_t visible = S.pos0 + w.r0 + r + 1;
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < visible; ++j) mx = std::max(mx, row[j]);
        double sum = 0;
        for (int64_t j = 0; j < visible; ++j) {
          row[j] = std::exp(row[j] - mx);
          sum += row[j];
        }
        const float inv = float(1.0 / sum);
        for (int64_t j = 0; j < visible; ++j) row[j] *= inv;
        std::fill(row + visible, row + lk, 0.f);
      }
      // out[r, :] = Σ_j p[r, j] v_j, block by block in position order.
      for (int64_t j0 = 0; j0 < lk; j0 += bs) {
        const int64_t nk = std::min(bs, lk - j0);
        if (one_row)
          pv_row_avx2(sc.data() + j0, load(1, j0 / bs, vbuf), nk, hd, j0 == 0, ob);
        else
          cpu::gemm_nn_fixed(nullptr, w.nr, hd, nk, 1.f, sc.data() + j0, lk, load(1, j0 / bs, vbuf), hd,
                             j0 == 0 ? 0.f : 1.f, ob, out.stride);
      }
    }
  });
}

void CpuBackend::silu_mul(const Tensor& g, const Tensor& u) {
  check_cpu(g);
  check_cpu(u);
  GPTQ_ASSERT(g.rows == u.rows && g.cols == u.cols);
  auto run = [](float* gp, const float* up, size_t n) {
    for (size_t i = 0; i < n; ++i) gp[i] = gp[i] / (1.f + std::exp(-gp[i])) * up[i];
  };
  if (g.contiguous() && u.contiguous()) {
    pool_.parallel_for(0, size_t(g.numel()), [&](size_t i0, size_t i1) { run(g.f32() + i0, u.f32() + i0, i1 - i0); }, 4096);
    return;
  }
  pool_.parallel_for(0, size_t(g.rows), [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r) run(g.f32() + r * g.stride, u.f32() + r * u.stride, size_t(g.cols));
  });
}

void CpuBackend::add(const Tensor& x, const Tensor& y) {
  check_cpu(x);
  GPTQ_ASSERT(x.rows == y.rows && x.cols == y.cols);
  for (int64_t r = 0; r < x.rows; ++r) {
    float* a = x.f32() + r * x.stride;
    const float* b = y.f32() + r * y.stride;
    for (int64_t i = 0; i < x.cols; ++i) a[i] += b[i];
  }
}

void CpuBackend::gather_rows(const Tensor& x, const BatchPlan& plan, const Tensor& y) {
  const std::vector<int64_t>& rows = plan.logit_rows;
  GPTQ_ASSERT(y.rows == int64_t(rows.size()) && y.cols == x.cols);
  for (size_t i = 0; i < rows.size(); ++i)
    std::memcpy(y.f32() + int64_t(i) * y.stride, x.f32() + rows[i] * x.stride, size_t(x.cols) * 4);
}

namespace {
class CpuHessian final : public HessianAccumulator {
 public:
  CpuHessian(ThreadPool& pool, int64_t K) : acc_(pool, K) {}
  void add(const Tensor& x, int64_t samples) override {
    GPTQ_ASSERT(x.contiguous() && x.cols == acc_.K() && x.rows % samples == 0);
    acc_.add_batch(x.f32(), samples, x.rows / samples);
  }
  const std::vector<float>& host() override { return acc_.symmetric(); }
  std::vector<float> take() override { return acc_.take(); }

 private:
  cpu::HessianAccumulator acc_;
};
}  // namespace

std::unique_ptr<HessianAccumulator> CpuBackend::hessian(int64_t K) { return std::make_unique<CpuHessian>(pool_, K); }

std::unique_ptr<Backend> make_cpu_backend(const CpuBackendOptions& o) { return std::make_unique<CpuBackend>(o); }

}  // namespace gptq
