// A loaded Llama-family model (Llama, Mistral, Qwen2) and its one forward pass over a backend.
// Weights stay memory-mapped in their file dtype on the CPU (converted to fp32 on the fly), so
// memory after load is about the size of the files; activations are fp32.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "gptq/model_config.h"
#include "gptq/tensor.h"

namespace gptq {

class TensorStore;
class Backend;
class Weight;
struct Tensor;
struct TensorView;
struct BatchPlan;
struct LlamaWeights;
struct Workspace;

enum class LinearSlot { kQ, kK, kV, kO, kGate, kUp, kDown };
const char* linear_slot_name(LinearSlot s);  // "self_attn.q_proj", ... (HF names under model.layers.N.)
constexpr LinearSlot kAllLinearSlots[] = {LinearSlot::kQ,    LinearSlot::kK,  LinearSlot::kV,   LinearSlot::kO,
                                          LinearSlot::kGate, LinearSlot::kUp, LinearSlot::kDown};

// The paged KV cache: a pool of fixed-size blocks (every layer's keys and values of block_size
// token slots), allocated in chunks as sequences grow, and a block table per sequence. Memory
// follows the tokens held, not the context length; freeing a sequence returns its blocks.
struct KVCacheOptions {
  // K/V in fp16 (half the memory and, decoding, half the attention's reads) or fp32; unset: the
  // backend's default, fp16 on a GPU (what vLLM and llama.cpp keep) and fp32 on the CPU (exact).
  std::optional<bool> fp16;
  int64_t block_size = 16;   // token slots per block
  int64_t max_tokens = 0;    // cap on the slots of the pool (0: no cap); a sequence that needs more fails
};

class KVCache {
 public:
  ~KVCache();
  KVCache(const KVCache&) = delete;
  KVCache& operator=(const KVCache&) = delete;

  int64_t add_sequence();                 // a new empty sequence's id
  void free_sequence(int64_t seq);        // returns its blocks to the pool
  bool has_sequence(int64_t seq) const;
  int64_t seq_len(int64_t seq) const;     // tokens held
  void truncate(int64_t seq, int64_t n);  // forget everything after the first n tokens
  int64_t context_length() const { return ctx_; }  // the most positions a sequence may hold

  // Single-sequence use: sequence 0, created on first use.
  int64_t size() const { return has_sequence(0) ? seq_len(0) : 0; }
  int64_t capacity() const { return ctx_; }
  void clear();  // frees every sequence

  int64_t blocks_in_use() const;
  size_t bytes_allocated() const;  // device memory held by the pool
  int64_t block_size() const { return opt_.block_size; }
  bool fp16() const;  // K/V stored in fp16

 private:
  friend class Model;
  struct Impl;
  KVCache(Backend& backend, const ModelConfig& c, int64_t ctx, const KVCacheOptions& o);
  void ensure(int64_t seq, int64_t n_tokens);  // blocks for positions 0..n_tokens-1
  Backend& backend_;
  KVCacheOptions opt_;
  int64_t ctx_;
  std::unique_ptr<Impl> impl_;
};

// Which logits a sequence of a batch wants.
enum class Logits { kNone, kLast, kAll };

// A batch: any mix of sequences, each with its new tokens (a prompt to prefill, one decode token,
// or anything between), appended at the positions after what the cache holds for it.
struct Batch {
  struct Entry {
    int64_t seq = 0;
    std::vector<int32_t> tokens;
    Logits logits = Logits::kLast;
  };
  std::vector<Entry> entries;
  void add(int64_t seq, const int32_t* tokens, int64_t n, Logits l = Logits::kLast) {
    entries.push_back({seq, std::vector<int32_t>(tokens, tokens + n), l});
  }
  int64_t n_tokens() const {
    int64_t n = 0;
    for (const auto& e : entries) n += int64_t(e.tokens.size());
    return n;
  }
};

// What a decoder layer computes, as four stages; each stage starts with the input of its linears.
enum class Stage { kAttnIn = 0, kAttnOut = 1, kMlpIn = 2, kMlpOut = 3, kDone = 4 };
// [q, k, v] read RMSNorm(x); [o] reads the attention output; [gate, up] read RMSNorm(x + o);
// [down] reads silu(gate) * up.
const std::vector<LinearSlot>& stage_slots(Stage s);

// Sees each stage's input before its linears run (calibration: Hessians); returning false stops
// the layer right there (the stage's linears do not run).
class LayerObserver {
 public:
  virtual ~LayerObserver() = default;
  virtual bool observe(int64_t layer, Stage stage, const Tensor& input) = 0;
};

struct LoadOptions {
  int threads = 0;  // CPU threads; 0: all hardware threads
  std::shared_ptr<Backend> backend;  // null: a CPU backend with `threads`
  // Tensors used in place of the folder's of the same names (a LoRA adapter merged in memory);
  // they must outlive the model.
  const std::map<std::string, TensorView>* replace = nullptr;
  // Leave the decoder layers' linears in the files until load_layer(l) asks for them (quantize
  // streams a model through a GPU one layer at a time); the norms, embeddings and lm_head load now.
  bool defer_layers = false;
  // The KV caches' storage when KVCacheOptions::fp16 is unset (`--kv-cache f16|f32`); unset: the
  // backend's default (fp16 on a GPU, fp32 on the CPU).
  std::optional<bool> kv_fp16;
  // q|k|v and gate|up held as one weight each where the backend fuses them (Backend::fuse: the
  // CUDA backend; one launch instead of three and two at decode). A fused layer's q, k, v, gate
  // and up are not reachable one by one (linear(), set_linear()): calibration turns this off.
  bool fuse_linears = true;
};

// A model of a known architecture's exact shapes with random weights, made by the backend where it
// keeps them (Backend::random_dense_weight / random_gptq_weight): speed and memory of a 7B model
// without its files (bench --synthetic). Norm weights are 1 ± 0.1, embeddings and linears uniform
// in [-0.02, 0.02] (GPTQ: scales 0.02/2^(bits-1) ± 25 %), so activations stay finite; lm_head is
// untied. There is no tokenizer: feed token ids.
struct SyntheticOptions {
  DType dtype = DType::kF16;  // embeddings, lm_head, and the linears when bits == 0: F16, BF16 or F32
  int bits = 0;               // 0: dense linears; 2, 3, 4, 8: GPTQ linears (sym, gptq_v2 zeros, no act-order)
  int group_size = 128;       // GPTQ group size (-1: one group per row)
  uint64_t seed = 0;          // the same seed gives the same weights on every backend
  int threads = 0;            // CPU threads when backend is null; 0: all hardware threads
  int64_t layers = 0;         // decoder layers (the first ones of the architecture); 0: all of them
  std::shared_ptr<Backend> backend;  // null: a CPU backend with `threads`
  std::optional<bool> kv_fp16;       // as LoadOptions::kv_fp16
  // As LoadOptions::defer_layers: a decoder layer's linears are made by load_layer(l) (the same
  // values: a pure function of the seed) and dropped by release_layer(l).
  bool defer_layers = false;
  bool fuse_linears = true;  // as LoadOptions::fuse_linears
};

// The architectures Model::synthetic knows, with their Hugging Face configs' shapes:
// llama2-7b, llama2-13b, llama2-70b, llama3-8b, and tiny (hidden 64, 2 layers, vocab 512: for tests).
const std::vector<std::string>& synthetic_model_names();
// Throws gptq::Error naming the known ones for any other name.
ModelConfig synthetic_config(const std::string& name);

class Model {
 public:
  // Throws gptq::Error naming the file and the problem (see ModelConfig::from_dir, TensorStore).
  static std::unique_ptr<Model> load(const std::string& dir, const LoadOptions& opts = {});
  // See SyntheticOptions. dir() is "synthetic:NAME"; file_bytes() is 0 (no files). Throws
  // gptq::Error for an unknown name, bad options, or weights that would not fit in memory.
  static std::unique_ptr<Model> synthetic(const std::string& name, const SyntheticOptions& opts = {});
  ~Model();

  const ModelConfig& config() const { return config_; }
  const std::string& dir() const { return dir_; }
  int64_t context_length() const { return config_.max_position_embeddings; }
  int64_t vocab_size() const { return config_.vocab_size; }
  Backend& backend() const { return *backend_; }

  // ctx: the most positions a sequence may hold (0 or above the model's: the model's context).
  std::unique_ptr<KVCache> new_cache(int64_t ctx = 0, const KVCacheOptions& o = {}) const;
  // Throws gptq::Error, with the numbers, when the activations of one forward pass over `tokens`
  // tokens with `logit_rows` logit rows would not fit in the backend's memory.
  void check_forward_memory(int64_t tokens, int64_t logit_rows) const;

  // The forward pass. Runs every entry's tokens at the positions after its cached ones and
  // appends them to the cache. logits: [rows, vocab], the rows each entry asked for (kLast: 1,
  // kAll: its token count) in batch order. Throws gptq::Error for ids outside the vocabulary,
  // sequences that exceed the context, unknown sequences, an exhausted cache pool.
  void forward(const Batch& batch, KVCache& cache, std::vector<float>& logits);
  // One sequence (the cache's sequence 0): logits [T, vocab] when all_logits, else [1, vocab].
  void forward(KVCache& cache, const int32_t* tokens, int64_t T, bool all_logits, std::vector<float>& logits);

  // ---- layer-level access (calibration, tests); see backend/backend.h for the types.
  // Plans a batch against the cache (allocating its blocks); nothing is committed until commit().
  BatchPlan plan(const Batch& batch, KVCache& cache);
  void commit(const Batch& batch, KVCache& cache);
  void embed(const BatchPlan& plan, const Tensor& x);  // x: [T, hidden]
  // Runs decoder layer `layer` from stage `from` on the plan's rows; returns the stage it stopped
  // at (kDone when it ran to the end). x: [T, hidden], updated in place. att: [T, heads x head_dim]
  // where attention writes its output, read when resuming at kAttnOut; resuming at kMlpOut it is
  // down's input instead, silu(gate(h)) * up(h): [T, intermediate] (calibration keeps it from the
  // pass that stopped there). Both are the caller's.
  Stage run_layer(int64_t layer, const BatchPlan& plan, KVCache& cache, const Tensor& x, const Tensor& att,
                  Stage from, LayerObserver* obs);
  const Weight& linear(int64_t layer, LinearSlot s) const;
  void set_linear(int64_t layer, LinearSlot s, std::unique_ptr<Weight> w);  // swap a linear's weights
  // With LoadOptions::defer_layers: makes layer l's linears from the files (no-op when they are
  // there), and drops them again; the layer cannot run in between. Weight sizes count held layers.
  void load_layer(int64_t layer);
  void release_layer(int64_t layer);
  bool layer_loaded(int64_t layer) const;
  size_t layer_file_bytes(int64_t layer) const;  // its linears' tensors in the files (0: synthetic)
  // Starts reading layer l's linears from the files into the page cache in the background (a
  // streaming run asks for layer l + 1 while layer l works); no-op for a synthetic model.
  void prefetch_layer(int64_t layer) const;

  // Bytes of the weights as held in memory (mapped file bytes of used tensors + repacked copies).
  size_t weight_bytes() const;
  // Bytes of weights read to produce one token (every linear once + norms + one embedding row).
  size_t bytes_per_token() const;
  size_t file_bytes() const;  // the checkpoint's files; 0 for a synthetic model
  int64_t parameter_count() const;
  std::string weight_dtype_summary() const;  // e.g. "F16" or "F16 + GPTQ 4-bit g128"
  int threads() const;

 private:
  Model();
  void run_rows(const BatchPlan& plan, KVCache& cache, std::vector<float>& logits);
  void for_layer_tensors(int64_t layer, const std::function<void(const TensorView&)>& fn) const;
  ModelConfig config_;
  std::string dir_;
  std::shared_ptr<Backend> backend_;
  std::optional<bool> kv_fp16_;  // LoadOptions::kv_fp16
  bool fuse_linears_ = false;    // LoadOptions::fuse_linears
  std::optional<SyntheticOptions> synthetic_;  // what makes a synthetic model's layers (load_layer)
  std::unique_ptr<TensorStore> store_;
  std::unique_ptr<LlamaWeights> w_;
  std::unique_ptr<Workspace> ws_;
};

// Resident memory of this process now, and its peak (from /proc/self/status), in bytes.
size_t current_rss_bytes();
size_t peak_rss_bytes();

}  // namespace gptq
