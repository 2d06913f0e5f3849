#include "backend/backend.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "backend/cpu/cpu_backend.h"
#include "core/half.h"
#include "core/memory.h"
#include "core/synthetic.h"
#include "core/thread_pool.h"
#include "gptq/error.h"

namespace gptq {

uint64_t Backend::available_bytes() const { return available_memory(); }

namespace {

// fn(a, b) over [0, n) on the CPU backend's threads, or on the calling thread for other backends
// (whose overrides generate on the device).
void host_for(Backend& be, size_t n, const std::function<void(size_t, size_t)>& fn) {
  if (ThreadPool* pool = cpu_pool(be))
    pool->parallel_for(0, n, fn, 1 << 14);
  else
    fn(0, n);
}

}  // namespace

std::unique_ptr<Weight> Backend::random_dense_weight(int64_t out, int64_t in, DType dtype, float scale, uint64_t seed) {
  if (dtype != DType::kF32 && dtype != DType::kF16 && dtype != DType::kBF16)
    fail("synthetic dense weights are F32, F16 or BF16, not ", dtype_name(dtype));
  if (out <= 0 || in <= 0) fail("synthetic weight of shape [", out, ", ", in, "]: sizes must be positive");
  const size_t n = size_t(out) * size_t(in), esize = dtype_size(dtype);
  check_memory(n * esize, available_bytes(), cat("a synthetic [", out, ", ", in, "] weight"));
  // 4-byte words, so that F32 data is aligned
  auto buf = std::make_shared<std::vector<uint32_t>>((n * esize + 3) / 4);
  void* data = buf->data();
  host_for(*this, n, [&](size_t a, size_t b) {
    for (size_t i = a; i < b; ++i) {
      const float v = synthetic_uniform(seed, i, scale);
      if (dtype == DType::kF32)
        static_cast<float*>(data)[i] = v;
      else if (dtype == DType::kF16)
        static_cast<uint16_t*>(data)[i] = fp32_to_fp16(v);
      else
        static_cast<uint16_t*>(data)[i] = fp32_to_bf16(v);
    }
  });
  // Host memory: the handle keeps the buffer (no second copy); a device backend copies it over.
  const bool host = device() == Device::kCpu;
  auto w = dense_weight({data, dtype, out, in, nullptr, !host});
  if (host) w->hold(std::move(buf));
  return w;
}

std::unique_ptr<Weight> Backend::random_gptq_weight(int64_t out, int64_t in, int bits, int group_size, float scale,
                                                    uint64_t seed) {
  quant::check_bits(bits);
  const int64_t N = out, K = in;
  if (N <= 0 || K <= 0) fail("synthetic weight of shape [", out, ", ", in, "]: sizes must be positive");
  const int64_t G = quant::num_groups(K, group_size);  // validates group_size
  quant::qweight_rows(K, bits);                         // K*bits % 32 == 0
  quant::qzeros_cols(N, bits);                          // N*bits % 32 == 0
  const size_t nk = size_t(N) * size_t(K);
  check_memory(nk + nk * size_t(bits) / 8, available_bytes(), cat("a synthetic GPTQ [", out, ", ", in, "] weight"));
  std::vector<uint8_t> codes(nk);  // [N, K]
  host_for(*this, nk, [&](size_t a, size_t b) {
    for (size_t i = a; i < b; ++i) codes[i] = uint8_t(synthetic_code(seed, i, bits));
  });
  const size_t ng = size_t(G) * size_t(N);
  std::vector<float> scales(ng);  // [G, N]; rounded to fp16 by pack_quantized (to nearest even)
  for (size_t j = 0; j < ng; ++j) scales[j] = synthetic_scale(seed, nk + j, scale, bits);
  const std::vector<int32_t> zeros(ng, 1 << (bits - 1));
  const quant::PackedQuant packed = quant::pack_quantized(codes.data(), scales.data(), zeros.data(), nullptr, nullptr,
                                                          bits, group_size, K, N, quant::QuantFormat::kGptqV2);
  codes = {};
  return gptq_weight(packed.view(), nullptr);  // keeps no view of `packed` (gptq_weight's contract)
}

double Backend::copy_bandwidth() {
  if (host_copy_bandwidth_ > 0) return host_copy_bandwidth_;
  // Much larger than any L3 (but not more than a sixteenth of what is free): the copy streams memory.
  const size_t bytes = std::max<size_t>(size_t(16) << 20, std::min<size_t>(size_t(512) << 20, available_bytes() / 16));
  std::unique_ptr<char[]> src(new char[bytes]), dst(new char[bytes]);  // uninitialized
  std::unique_ptr<ThreadPool> own;
  ThreadPool* pool = cpu_pool(*this);
  if (!pool) pool = (own = std::make_unique<ThreadPool>(threads())).get();
  // First touch (page faults) outside the timing, by the threads that copy.
  auto copy = [&](bool touch) {
    pool->run([&](int t, int nt) {
      const size_t a = bytes * size_t(t) / size_t(nt), b = bytes * size_t(t + 1) / size_t(nt);
      if (touch) std::memset(src.get() + a, t + 1, b - a), std::memset(dst.get() + a, 0, b - a);
      std::memcpy(dst.get() + a, src.get() + a, b - a);
    });
  };
  copy(true);
  double best = 0;
  for (int r = 0; r < 5; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    copy(false);
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, 2 * double(bytes) / sec);  // each byte read once and written once
  }
  host_copy_bandwidth_ = best;
  return best;
}

#if !defined(GPTQ_WITH_CUDA)
bool built_with_cuda() { return false; }
bool cuda_usable(int, std::string* why) {
  if (why) *why = "this gptq was built without CUDA (configure with -DGPTQ_CUDA=ON and the CUDA toolkit)";
  return false;
}
std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions&) {
  fail("this gptq was built without CUDA (configure with -DGPTQ_CUDA=ON and the CUDA toolkit)");
}
#endif

}  // namespace gptq
