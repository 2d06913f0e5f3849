// A linear layer y = x · Wᵀ + b behind one interface, whatever holds W (dense file dtype, GPTQ).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "gptq/tensor.h"

namespace gptq {

class Linear {
 public:
  virtual ~Linear() = default;
  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }
  // y: [T, out] = x: [T, in] · Wᵀ (+ bias)
  virtual void forward(ThreadPool& pool, const float* x, int64_t T, float* y) const = 0;
  virtual size_t weight_bytes() const = 0;  // bytes held for W (and bias, scales, ...)
  virtual std::string kind() const = 0;     // "F16", "GPTQ 4-bit g128", ...
  // W as fp32 [out, in] (quantized layers dequantize); for calibration and tests.
  virtual std::vector<float> dense_weight() const = 0;
  virtual const std::vector<float>& bias() const { return bias_; }

 protected:
  Linear(int64_t in, int64_t out) : in_(in), out_(out) {}
  int64_t in_, out_;
  std::vector<float> bias_;  // [out] or empty
};

// W kept as it is in the file (F32/F16/BF16, memory-mapped), or owned fp32 data.
class DenseLinear : public Linear {
 public:
  // w: [out, in]; bias: [out] or nullptr.
  DenseLinear(const TensorView& w, const TensorView* bias);
  // Owns an fp32 copy (e.g. a dequantized matrix). w: [out * in].
  DenseLinear(std::vector<float> w, int64_t in, int64_t out, std::vector<float> bias);

  void forward(ThreadPool& pool, const float* x, int64_t T, float* y) const override;
  size_t weight_bytes() const override;
  std::string kind() const override;
  std::vector<float> dense_weight() const override;
  const void* data() const { return data_; }
  DType dtype() const { return dtype_; }

 private:
  const void* data_;
  DType dtype_;
  std::vector<float> owned_;
};

std::vector<float> tensor_to_f32(const TensorView& t);

}  // namespace gptq
