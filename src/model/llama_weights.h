// The weights of a Llama-family decoder, as the forward pass uses them.
#pragma once

#include <memory>
#include <vector>

#include "gptq/model.h"
#include "gptq/tensor.h"
#include "model/linear.h"

namespace gptq {

struct LlamaLayer {
  std::vector<float> attn_norm, mlp_norm;  // [hidden]
  std::unique_ptr<Linear> q, k, v, o, gate, up, down;

  std::unique_ptr<Linear>& slot(LinearSlot s);
};

struct LlamaWeights {
  TensorView embed;                  // [vocab, hidden], file dtype
  std::vector<float> final_norm;     // [hidden]
  std::unique_ptr<Linear> lm_head;   // [vocab, hidden]; the embedding when tied
  bool lm_head_tied = false;
  std::vector<LlamaLayer> layers;
};

}  // namespace gptq
