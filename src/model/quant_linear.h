// GPTQ-quantized linear layers loaded from a checkpoint (qweight, qzeros, scales, g_idx).
#pragma once

#include <memory>
#include <string>

#include "gptq/model_config.h"
#include "gptq/safetensors.h"
#include "model/linear.h"

namespace gptq {

// prefix: "model.layers.0.self_attn.q_proj"; out/in from config.json. Validates every tensor's
// dtype and shape against the quantization config.
std::unique_ptr<Linear> load_gptq_linear(ThreadPool& pool, const TensorStore& s, const QuantConfig& q, const std::string& prefix,
                                         int64_t out, int64_t in, const TensorView* bias);

}  // namespace gptq
