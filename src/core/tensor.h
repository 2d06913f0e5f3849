// Tensor views over backend memory: data, dtype, device and a 2-D row-major shape with a row
// stride. Every activation of the forward pass is [tokens, features], so two dimensions suffice;
// heads are column ranges (a [T, n_heads*head_dim] view).
#pragma once

#include <cstdint>

#include "gptq/error.h"
#include "gptq/tensor.h"

namespace gptq {

enum class Device { kCpu, kCuda };

struct Tensor {
  void* data = nullptr;
  DType dtype = DType::kF32;
  Device device = Device::kCpu;
  int64_t rows = 0, cols = 0;
  int64_t stride = 0;  // elements from one row to the next (>= cols)

  static Tensor f32(float* p, int64_t rows, int64_t cols, Device d = Device::kCpu) {
    return Tensor{p, DType::kF32, d, rows, cols, cols};
  }
  float* f32() const {
    GPTQ_ASSERT(dtype == DType::kF32, "tensor is not F32");
    return static_cast<float*>(data);
  }
  bool contiguous() const { return stride == cols; }
  int64_t numel() const { return rows * cols; }
  Tensor slice_rows(int64_t r0, int64_t n) const {
    GPTQ_ASSERT(r0 >= 0 && n >= 0 && r0 + n <= rows);
    Tensor t = *this;
    t.data = static_cast<char*>(data) + size_t(r0 * stride) * dtype_size(dtype);
    t.rows = n;
    return t;
  }
  Tensor slice_cols(int64_t c0, int64_t n) const {
    GPTQ_ASSERT(c0 >= 0 && n >= 0 && c0 + n <= cols);
    Tensor t = *this;
    t.data = static_cast<char*>(data) + size_t(c0) * dtype_size(dtype);
    t.cols = n;
    return t;
  }
};

}  // namespace gptq
