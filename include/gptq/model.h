// A loaded Llama-family model (Llama, Mistral, Qwen2) and its forward pass on the CPU.
// Weights stay memory-mapped in their file dtype and are converted to fp32 on the fly, so memory
// after load is about the size of the files; all arithmetic is fp32.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "gptq/model_config.h"

namespace gptq {

class TensorStore;
class ThreadPool;
struct LlamaWeights;

// Keys and values of one sequence: [layer][kv_head][position][head_dim], fp32.
class KVCache {
 public:
  KVCache(const ModelConfig& c, int64_t max_tokens);
  int64_t size() const { return len_; }  // tokens already in the cache
  int64_t capacity() const { return max_len_; }
  void clear() { len_ = 0; }
  // Forget everything after the first n tokens (n <= size()).
  void truncate(int64_t n);
  size_t bytes() const { return (k_.size() + v_.size()) * sizeof(float); }

  float* k(int64_t layer, int64_t kv_head) { return k_.data() + (layer * n_kv_ + kv_head) * max_len_ * hd_; }
  float* v(int64_t layer, int64_t kv_head) { return v_.data() + (layer * n_kv_ + kv_head) * max_len_ * hd_; }

 private:
  friend class Model;
  int64_t n_kv_, hd_, max_len_, len_ = 0;
  std::vector<float> k_, v_;
};

enum class LinearSlot { kQ, kK, kV, kO, kGate, kUp, kDown };
const char* linear_slot_name(LinearSlot s);  // "self_attn.q_proj", ... (HF names under model.layers.N.)
constexpr LinearSlot kAllLinearSlots[] = {LinearSlot::kQ,    LinearSlot::kK,  LinearSlot::kV,   LinearSlot::kO,
                                          LinearSlot::kGate, LinearSlot::kUp, LinearSlot::kDown};

struct LoadOptions {
  int threads = 0;  // 0: all hardware threads
};

class Model {
 public:
  // Throws gptq::Error naming the file and the problem (see ModelConfig::from_dir, TensorStore).
  static std::unique_ptr<Model> load(const std::string& dir, const LoadOptions& opts = {});
  ~Model();

  const ModelConfig& config() const { return config_; }
  const std::string& dir() const { return dir_; }
  int64_t context_length() const { return config_.max_position_embeddings; }
  int64_t vocab_size() const { return config_.vocab_size; }

  std::unique_ptr<KVCache> new_cache(int64_t max_tokens = 0) const;  // 0: the context length

  // Runs tokens[0..T) at positions cache.size() .. cache.size()+T-1 and appends them to the cache.
  // logits: [T, vocab] when all_logits, else [1, vocab] for the last token.
  // Throws gptq::Error when the tokens do not fit in the cache or an id is out of the vocabulary.
  void forward(KVCache& cache, const int32_t* tokens, int64_t T, bool all_logits, std::vector<float>& logits);

  // Pieces of the forward pass, for layer-by-layer work (GPTQ calibration).
  // x: [T, hidden] embeddings of tokens.
  void embed(const int32_t* tokens, int64_t T, float* x) const;
  // x: [T, hidden], updated in place by decoder layer `layer` at positions cache.size()...; the caller
  // advances the cache (commit_tokens) after the last layer.
  void layer_forward(int64_t layer, KVCache& cache, float* x, int64_t T);
  // The stages layer_forward runs, in order (calibration runs them one by one, quantizing the
  // linears of each stage before the next stage reads their outputs):
  void attn_norm(int64_t layer, const float* x, int64_t T, float* h) const;   // h = RMSNorm(x)      [T, hidden]
  void attention_block(int64_t layer, KVCache& cache, const float* h, int64_t T, float* att);  // q,k,v, RoPE, attention: att [T, heads*head_dim]
  void attn_out(int64_t layer, const float* att, int64_t T, float* x);        // x += o_proj(att)
  void mlp_norm(int64_t layer, const float* x, int64_t T, float* h) const;    // h = RMSNorm(x)
  void mlp_act(int64_t layer, const float* h, int64_t T, float* g);           // g = silu(gate(h)) * up(h)  [T, ffn]
  void mlp_out(int64_t layer, const float* g, int64_t T, float* x);           // x += down_proj(g)
  void commit_tokens(KVCache& cache, int64_t T) const;
  // x: [T, hidden] → logits [T, vocab] (final norm and lm_head).
  void head(const float* x, int64_t T, float* logits);

  // Bytes of the weights as held in memory (mapped file bytes of used tensors + converted copies).
  size_t weight_bytes() const;
  // Bytes of weights read to produce one token (every linear once + norms + one embedding row).
  size_t bytes_per_token() const;
  size_t file_bytes() const;
  int64_t parameter_count() const;
  std::string weight_dtype_summary() const;  // e.g. "F16" or "F16 + GPTQ 4-bit g128"

  LlamaWeights& weights() { return *w_; }
  ThreadPool& thread_pool() const;

 private:
  Model() = default;
  ModelConfig config_;
  std::string dir_;
  std::unique_ptr<TensorStore> store_;
  std::unique_ptr<LlamaWeights> w_;
  std::unique_ptr<ThreadPool> pool_;
};

// Resident memory of this process now, and its peak (from /proc/self/status), in bytes.
size_t current_rss_bytes();
size_t peak_rss_bytes();

}  // namespace gptq
