#include "model/quant_linear.h"

#include "backend/cpu/qgemm.h"
#include "gptq/error.h"
#include "quant/format.h"

namespace gptq {

namespace {

// Holds the kernel layout of one GPTQ layer (built once at load time from the mapped tensors).
class GptqLinear : public Linear {
 public:
  GptqLinear(ThreadPool& pool, const quant::QuantMatrix& m, std::vector<float> bias, std::string kind)
      : Linear(m.K, m.N), w_(cpu::prepare(m, pool)), kind_(std::move(kind)), q_(m) {
    bias_ = std::move(bias);
  }

  void forward(ThreadPool& pool, const float* x, int64_t T, float* y) const override {
    cpu::qgemm(pool, w_, x, T, y);
    if (!bias_.empty())
      for (int64_t t = 0; t < T; ++t)
        for (int64_t n = 0; n < out_; ++n) y[t * out_ + n] += bias_[size_t(n)];
  }
  size_t weight_bytes() const override {
    return size_t(w_.checkpoint_bytes()) + (w_.perm.empty() ? 0 : size_t(in_) * 4) + bias_.size() * 4;
  }
  std::string kind() const override { return kind_; }
  std::vector<float> dense_weight() const override { return quant::dequantize(q_); }

 private:
  cpu::PreparedQuantMatrix w_;
  std::string kind_;
  quant::QuantMatrix q_;  // views into the mapped checkpoint, valid while the model lives
};

const TensorView& require(const TensorStore& s, const std::string& name, DType dtype, std::vector<int64_t> shape,
                          const char* what) {
  const TensorView& t = s.get(name);
  if (t.dtype != dtype)
    fail(t.file, ": tensor ", name, " has dtype ", dtype_name(t.dtype), ", expected ", dtype_name(dtype), " (", what, ")");
  if (t.shape != shape) {
    TensorView e;
    e.shape = shape;
    fail(t.file, ": tensor ", name, " has shape ", t.shape_str(), " but the config implies ", e.shape_str(), " (", what,
         ")");
  }
  return t;
}

}  // namespace

std::unique_ptr<Linear> load_gptq_linear(ThreadPool& pool, const TensorStore& s, const QuantConfig& q, const std::string& prefix,
                                         int64_t out, int64_t in, const TensorView* bias) {
  if (!quant::is_supported_bits(q.bits)) fail(s.dir(), ": quantization_config bits ", q.bits, " is not supported (2, 3, 4, 8)");
  if (q.checkpoint_format != "gptq" && q.checkpoint_format != "gptq_v2")
    fail(s.dir(), ": checkpoint_format \"", q.checkpoint_format, "\" is not supported (gptq, gptq_v2)");
  if ((in * q.bits) % 32 != 0 || (out * q.bits) % 32 != 0)
    fail(s.dir(), ": ", prefix, " has ", in, " inputs and ", out, " outputs; ", q.bits,
         "-bit packing needs in*bits and out*bits to be multiples of 32");
  const int64_t G = quant::num_groups(in, q.group_size);
  quant::QuantMatrix m;
  m.bits = q.bits;
  m.group_size = q.group_size;
  m.K = in;
  m.N = out;
  m.format = q.checkpoint_format == "gptq_v2" ? quant::QuantFormat::kGptqV2 : quant::QuantFormat::kGptqV1;
  m.qweight = static_cast<const int32_t*>(
      require(s, prefix + ".qweight", DType::kI32, {in * q.bits / 32, out}, "qweight [in*bits/32, out]").data);
  m.qzeros = static_cast<const int32_t*>(
      require(s, prefix + ".qzeros", DType::kI32, {G, out * q.bits / 32}, "qzeros [groups, out*bits/32]").data);
  m.scales = static_cast<const uint16_t*>(require(s, prefix + ".scales", DType::kF16, {G, out}, "scales [groups, out]").data);
  if (s.has(prefix + ".g_idx"))
    m.g_idx = static_cast<const int32_t*>(require(s, prefix + ".g_idx", DType::kI32, {in}, "g_idx [in]").data);
  std::vector<float> b;
  if (bias) b = tensor_to_f32(*bias);
  try {
    quant::validate(m);
  } catch (const Error& e) {
    fail(s.dir(), ": ", prefix, ": ", e.what());
  }
  std::string kind = "GPTQ " + std::to_string(q.bits) + "-bit g" + std::to_string(q.group_size) +
                     (q.desc_act ? " act-order" : "");
  return std::make_unique<GptqLinear>(pool, m, std::move(b), std::move(kind));
}

}  // namespace gptq
