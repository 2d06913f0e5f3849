// The backend interface: the coarse operations of the Llama forward pass and of GPTQ calibration,
// over tensor views of the backend's own memory (DESIGN.md "The shape of the engine").
//
// A backend makes weight handles once at load, in whatever layout its kernels want (dense in the
// file dtype; GPTQ of any bits repacked, act-order rows reordered), and runs ops on activations the
// caller allocated from it (a workspace sized once per batch shape, so a CUDA backend can capture a
// decode step as a graph). Ops are asynchronous on devices that are; to_host() synchronizes.
// CpuBackend (backend/cpu/cpu_backend.h) is the readable reference every other backend is
// tested against (tests/test_backend_ops.cpp).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/gptq_format.h"

namespace gptq {


// A linear layer's weights y = x·Wᵀ + b as one backend holds them.
class Weight {
 public:
  virtual ~Weight() = default;
  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }
  virtual std::string kind() const = 0;         // "F16", "GPTQ 4-bit g128 act-order"
  virtual size_t bytes() const = 0;             // bytes read per use: the decode traffic
  virtual std::vector<float> dense() const = 0; // W as fp32 [out, in] on the host (calibration, tests)
  virtual const std::vector<float>& bias() const { return bias_; }  // [out] or empty, host
  // Keeps `owner` alive as long as this handle: the memory a handle made without copying points
  // into, when nothing else holds it (a synthetic dense weight's host buffer on the CPU).
  void hold(std::shared_ptr<const void> owner) { held_ = std::move(owner); }

 protected:
  Weight(int64_t in, int64_t out) : in_(in), out_(out) {}
  int64_t in_, out_;
  std::vector<float> bias_;

 private:
  std::shared_ptr<const void> held_;  // destroyed after the derived handle's views
};

// Dense weights as they lie in a (memory-mapped) file: not copied unless `copy`, so the data must
// outlive the handle then. data: [out, in] row-major in dtype (F32/F16/BF16); bias: [out] or null.
struct DenseWeightDesc {
  const void* data = nullptr;
  DType dtype = DType::kF32;
  int64_t out = 0, in = 0;
  const float* bias = nullptr;
  bool copy = false;
};

// The paged KV cache's memory as the attention op sees it. The cache is a pool of blocks of
// `block_size` token slots; a block holds every layer: [layer][K, V][kv_head][block_size][head_dim]
// in `dtype` (F32 or F16). Sequences own blocks through block tables (model/kv_cache.h).
struct KVLayout {
  int64_t n_layers = 0, n_kv_heads = 0, head_dim = 0, block_size = 16;
  DType dtype = DType::kF32;
  size_t head_bytes() const { return size_t(block_size * head_dim) * dtype_size(dtype); }  // one head, K or V
  size_t layer_bytes() const { return 2 * size_t(n_kv_heads) * head_bytes(); }
  size_t block_bytes() const { return size_t(n_layers) * layer_bytes(); }
};

struct KVView {
  KVLayout layout;
  void* const* blocks = nullptr;  // base address of each block id
  int64_t max_len = 0;            // the most positions a sequence may hold (0: unknown)
};

// One sequence of a batch as attention sees it: rows [row0, row0 + n_rows) of the batch are its
// new tokens at positions pos0 .. pos0 + n_rows - 1; row i attends to the sequence's positions
// 0 .. pos0 + i (causal), read through its block table (position p is slot p % block_size of
// block block_table[p / block_size]).
struct AttnSeq {
  int64_t row0 = 0, n_rows = 0, pos0 = 0;
  const int32_t* block_table = nullptr;
  int64_t n_blocks = 0;
};

// The host-side description of one forward call (a CUDA backend uploads it once per call).
struct BatchPlan {
  std::vector<int32_t> tokens;     // [T]
  std::vector<int32_t> positions;  // [T]
  std::vector<int64_t> slots;      // [T] cache slot of each token: block * block_size + offset
  std::vector<AttnSeq> seqs;
  std::vector<int64_t> logit_rows; // rows whose logits are wanted, in output order
  uint64_t id = 0;                 // distinguishes plans (the model's workspace follows the latest)
  int64_t n_tokens() const { return int64_t(tokens.size()); }
};

// GPTQ's H = 2/n Σ x xᵀ over calibration inputs (the semantics of quant/hessian.h).
class HessianAccumulator {
 public:
  virtual ~HessianAccumulator() = default;
  // x: [samples*T, K] inputs of `samples` sequences.
  virtual void add(const Tensor& x, int64_t samples) = 0;
  // H: [K, K] symmetric on the host, of the adds so far (more may follow); valid until the next call.
  virtual const std::vector<float>& host() = 0;
  virtual std::vector<float> take() = 0;  // H: [K, K] on the host; resets
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual std::string name() const = 0;  // "cpu (AVX2, 2 threads)"
  virtual int threads() const { return 1; }
  // Bytes this backend can still allocate (host memory for the CPU), for refusing up front.
  virtual uint64_t available_bytes() const;

  // ---- memory
  // Uninitialized device memory, freed with its last reference.
  virtual std::shared_ptr<void> alloc(size_t bytes) = 0;
  Tensor alloc_f32(int64_t rows, int64_t cols, std::shared_ptr<void>& owner) {
    owner = alloc(size_t(rows * cols) * sizeof(float));
    return Tensor{owner.get(), DType::kF32, device(), rows, cols, cols};
  }
  virtual void upload(void* dst, const void* src, size_t bytes) = 0;
  virtual void to_host(const Tensor& src, float* dst) = 0;          // F32 view → host [rows, cols]
  virtual void from_host(const float* src, const Tensor& dst) = 0;  // host [rows, cols] → F32 view
  virtual void fill_zero(const Tensor& t) = 0;
  virtual void copy(const Tensor& src, const Tensor& dst) = 0;      // same shape, F32

  // ---- weights
  virtual std::unique_ptr<Weight> dense_weight(const DenseWeightDesc& d) = 0;
  // m: views into a checkpoint (validated here; gptq::Error for what cannot run); the handle keeps
  // no view of m after the call (it repacks what it needs, dense() included). bias: [N] fp32, or
  // null for m.bias (fp16) or none; either way it is added once and bias() returns it.
  virtual std::unique_ptr<Weight> gptq_weight(const quant::QuantMatrix& m, const float* bias) = 0;
  // One weight whose outputs are the parts' outputs side by side (q|k|v, gate|up: one launch
  // instead of several at decode), the same values; null when this backend does not fuse or the
  // parts cannot be (different kinds, inputs, act-order permutations). The parts stay valid.
  virtual std::unique_ptr<Weight> fuse(const std::vector<const Weight*>& parts) {
    (void)parts;
    return nullptr;
  }

  // ---- ops. T = the rows of the batch; all tensors F32 unless said.
  // y[t, :] = table[plan.tokens[t], :]; table: a dense weight [vocab, H]. Ids are checked by the caller.
  virtual void embed(const Weight& table, const BatchPlan& plan, const Tensor& y) = 0;
  // y[T, N] = x[T, K]·Wᵀ (+ bias). y must not alias x.
  virtual void linear(const Weight& w, const Tensor& x, const Tensor& y) = 0;
  // y += x·Wᵀ (+ bias), the same values as linear into tmp ([T, N]) and add(y, tmp); a backend may
  // add in the linear's epilogue instead (tmp unused).
  virtual void linear_add(const Weight& w, const Tensor& x, const Tensor& y, const Tensor& tmp) {
    linear(w, x, tmp);
    add(y, tmp);
  }
  // y = x / sqrt(mean(x²) + eps) * w, per row; w: [1, D]; y may alias x.
  virtual void rms_norm(const Tensor& x, const Tensor& w, float eps, const Tensor& y) = 0;
  // cs[t, :] = cos(pos_t · inv_freq) | sin(pos_t · inv_freq)   inv_freq: [1, hd/2], cs: [T, hd]
  // (angles in fp32 as transformers computes them). Once per forward, shared by every layer.
  virtual void rope_angles(const Tensor& inv_freq, const BatchPlan& plan, const Tensor& cs) = 0;
  // Rotate-half RoPE in place on x: [T, n_heads*hd] with cs from rope_angles.
  virtual void rope(const Tensor& x, int64_t n_heads, int64_t head_dim, const Tensor& cs) = 0;
  // rope(q, n_heads, ...) and rope(k, n_kv_heads, ...) (a backend may do both in one pass).
  virtual void rope_qk(const Tensor& q, int64_t n_heads, const Tensor& k, int64_t n_kv_heads, int64_t head_dim,
                       const Tensor& cs) {
    rope(q, n_heads, head_dim, cs);
    rope(k, n_kv_heads, head_dim, cs);
  }
  // Writes k, v: [T, n_kv*hd] into the cache slots of layer `layer`, then causal GQA attention of
  // q: [T, n_heads*hd] for every sequence of the plan: out: [T, n_heads*hd].
  virtual void attention(int64_t layer, const Tensor& q, const Tensor& k, const Tensor& v, const KVView& kv,
                         const BatchPlan& plan, int64_t n_heads, const Tensor& out) = 0;
  virtual void silu_mul(const Tensor& g, const Tensor& u) = 0;  // g = silu(g) * u (same shape, any row strides)
  virtual void add(const Tensor& x, const Tensor& y) = 0;       // x += y
  // y[i, :] = x[plan.logit_rows[i], :]
  virtual void gather_rows(const Tensor& x, const BatchPlan& plan, const Tensor& y) = 0;
  virtual std::unique_ptr<HessianAccumulator> hessian(int64_t K) = 0;
  // Runs ops(): a fixed sequence of this backend's ops whose only inputs that change from call to
  // call are the plan's contents (same shape: tokens, positions, slots, block tables) and the
  // memory its tensors point to. A backend may record the sequence the first time it sees `key`
  // and replay the recording for later calls with that key (the CUDA backend: a CUDA graph), so
  // the caller changes the key whenever a tensor address, a shape or the op sequence changes.
  // kv: the cache the plan's block tables index.
  virtual void run_recorded(uint64_t key, const BatchPlan& plan, const KVView& kv, const std::function<void()>& ops) {
    (void)key, (void)plan, (void)kv;
    ops();
  }

  // ---- synthetic weights (bench --synthetic): random values of a real model's shapes, made where
  // the backend keeps them (on the GPU for CUDA, so a 7B model needs no host copy). Values are
  // uniform in [-scale, scale] (dense) or random codes with scales ~ scale/2^(bits-1) (GPTQ, sym,
  // v2 zeros, no act-order); a given seed gives the same weights on every backend, bit for bit.
  // The values, with the functions of core/synthetic.h (pure functions of (seed, index), callable
  // from a kernel):
  //   dense  W[n, k] = round_to_dtype(synthetic_uniform(seed, n*in + k, scale))    n < out, k < in
  //          (F32 as is; F16 and BF16 rounded to nearest even: __float2half_rn, __float2bfloat16_rn)
  //   GPTQ   q[n, k] = synthetic_code(seed, n*in + k, bits)                        (the codes first)
  //          scales[g, n] = fp16_rn(synthetic_scale(seed, out*in + g*out + n, scale, bits))  (then these)
  //          zeros[g, n] = 2^(bits-1) (gptq_v2: stored as is), g_idx[k] = k / G, no bias;
  //          G = group_size (-1: in), g < ceil(in / G); packed as io/gptq_format.h says.
  // The base-class versions generate on the host (on the CPU backend's threads) and hand the
  // result to dense_weight / gptq_weight.
  virtual std::unique_ptr<Weight> random_dense_weight(int64_t out, int64_t in, DType dtype, float scale, uint64_t seed);
  virtual std::unique_ptr<Weight> random_gptq_weight(int64_t out, int64_t in, int bits, int group_size, float scale,
                                                     uint64_t seed);

  // ---- measuring (bench)
  virtual void synchronize() {}                         // waits for queued work (devices)
  virtual uint64_t device_bytes_in_use() const { return 0; }  // device memory held by this process; 0: host backend
  virtual uint64_t device_bytes_peak() const { return 0; }    // the most it has held at once
  // Memory bandwidth (bytes read + written per second) of a large copy in this backend's memory,
  // measured once per backend on first call: the roofline bench reports against. The base class
  // measures host memory: threads() threads memcpy slices of a 512 MiB buffer, best of 5.
  virtual double copy_bandwidth();

  // Fixed-order arithmetic on the calibration path (same bytes on any CPU and thread count) where
  // the backend offers it; see README "Reproducibility".
  virtual void set_deterministic(bool on) { (void)on; }

 private:
  double host_copy_bandwidth_ = 0;  // copy_bandwidth() of the base class, once measured
};

struct CpuBackendOptions {
  int threads = 0;  // 0: all hardware threads
};
std::unique_ptr<Backend> make_cpu_backend(const CpuBackendOptions& o = {});

// The CUDA backend (backend/cuda/): device `device` of those the driver sees. Throws gptq::Error
// naming why when it cannot start (built without CUDA, no GPU, a driver too old, a bad index).
struct CudaBackendOptions {
  int device = 0;
};
std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions& o = {});
// Whether make_cuda_backend({device}) would find a usable GPU; why not in *why. Cheap; no context.
bool cuda_usable(int device = 0, std::string* why = nullptr);
bool built_with_cuda();

}  // namespace gptq
