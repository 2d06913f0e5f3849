#include "model/quant_linear.h"

#include "gptq/error.h"

namespace gptq {

std::unique_ptr<Linear> load_gptq_linear(const TensorStore& s, const QuantConfig& q, const std::string& prefix,
                                         int64_t out, int64_t in, const TensorView* bias) {
  fail(s.dir(), ": GPTQ checkpoints cannot be run yet (", prefix, ".qweight)");
}

}  // namespace gptq
