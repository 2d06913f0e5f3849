#include "model/linear.h"

#include "backend/cpu/gemm.h"
#include "gptq/error.h"

namespace gptq {

std::vector<float> tensor_to_f32(const TensorView& t) {
  std::vector<float> out(static_cast<size_t>(t.numel()));
  if (t.dtype != DType::kF32 && t.dtype != DType::kF16 && t.dtype != DType::kBF16)
    fail(t.file, ": tensor ", t.name, " has dtype ", dtype_name(t.dtype), ", expected F32, F16 or BF16");
  cpu::to_f32(t.data, t.dtype, t.numel(), out.data());
  return out;
}

DenseLinear::DenseLinear(const TensorView& w, const TensorView* bias)
    : Linear(w.dim(1), w.dim(0)), data_(w.data), dtype_(w.dtype) {
  if (dtype_ != DType::kF32 && dtype_ != DType::kF16 && dtype_ != DType::kBF16)
    fail(w.file, ": tensor ", w.name, " has dtype ", dtype_name(w.dtype), ", expected F32, F16 or BF16");
  if (bias) bias_ = tensor_to_f32(*bias);
}

DenseLinear::DenseLinear(std::vector<float> w, int64_t in, int64_t out, std::vector<float> bias)
    : Linear(in, out), data_(nullptr), dtype_(DType::kF32), owned_(std::move(w)) {
  GPTQ_ASSERT(int64_t(owned_.size()) == in * out);
  data_ = owned_.data();
  bias_ = std::move(bias);
}

void DenseLinear::forward(ThreadPool& pool, const float* x, int64_t T, float* y) const {
  cpu::dense_matmul(pool, x, T, in_, data_, dtype_, out_, bias_.empty() ? nullptr : bias_.data(), y);
}

size_t DenseLinear::weight_bytes() const {
  return size_t(in_ * out_) * dtype_size(dtype_) + bias_.size() * sizeof(float);
}

std::string DenseLinear::kind() const { return dtype_name(dtype_); }

std::vector<float> DenseLinear::dense_weight() const {
  std::vector<float> w(static_cast<size_t>(in_ * out_));
  cpu::to_f32(data_, dtype_, in_ * out_, w.data());
  return w;
}

}  // namespace gptq
