// The weights of a Llama-family decoder as backend handles, and the forward pass's workspace.
#pragma once

#include <array>
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "gptq/model.h"

namespace gptq {

// A small fp32 vector held in backend memory (norm weights, RoPE frequencies): [1, n].
struct DeviceVector {
  std::shared_ptr<void> mem;
  Tensor t;
};

struct LlamaLayer {
  DeviceVector attn_norm, mlp_norm;  // [1, hidden]
  std::array<std::unique_ptr<Weight>, 7> linears;  // indexed by LinearSlot; null where fused
  // Backend::fuse of q|k|v and of gate|up (LoadOptions::fuse_linears), or null.
  std::unique_ptr<Weight> qkv, gate_up;
  std::unique_ptr<Weight>& slot(LinearSlot s) { return linears[size_t(s)]; }
  const Weight& get(LinearSlot s) const { return *linears[size_t(s)]; }
  bool loaded() const { return bool(linears[size_t(LinearSlot::kO)]); }  // o is never fused
  std::vector<const Weight*> weights() const {  // every linear weight held, fused or not
    std::vector<const Weight*> w;
    for (const auto& lin : linears)
      if (lin) w.push_back(lin.get());
    for (const Weight* f : {qkv.get(), gate_up.get()})
      if (f) w.push_back(f);
    return w;
  }
};

struct LlamaWeights {
  std::unique_ptr<Weight> embed;    // [vocab, hidden], dense in the file dtype
  std::unique_ptr<Weight> lm_head;  // [vocab, hidden]; null when tied (the embedding is used)
  DeviceVector final_norm;          // [1, hidden]
  DeviceVector inv_freq;            // [1, head_dim/2] RoPE inverse frequencies (scaling applied)
  std::vector<LlamaLayer> layers;
  const Weight& head() const { return lm_head ? *lm_head : *embed; }
};

// Activations of one forward call, sized for `rows` tokens and `logit_rows` rows of logits;
// grown (never shrunk) when a bigger batch arrives.
struct Workspace {
  int64_t rows = 0, logit_rows = 0;
  uint64_t plan_id = 0;  // the plan whose RoPE angles `cs` holds
  uint64_t generation = 0;  // new (process-wide) whenever the tensors move: keys of recorded decode steps
  std::vector<std::shared_ptr<void>> mem;
  Tensor x, h, q, k, v, att, g, u, tmp, cs;  // [rows, ...]
  // Some layer is fused (set at load): q, k, v are then column ranges of qkv and g, u of gu
  // (LlamaLayer::qkv / gate_up write them); qkv.data is set when the tensors are laid out so.
  bool fused_layers = false;
  Tensor qkv, gu;
  Tensor hl, logits;                          // [logit_rows, hidden], [logit_rows, vocab]
};

}  // namespace gptq
