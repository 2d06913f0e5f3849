// Loading a Llama-family model folder and running its forward pass (fp32 arithmetic).
#include <cblas.h>

#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

#include "backend/cpu/gemm.h"
#include "backend/cpu/ops.h"
#include "core/fs.h"
#include "core/thread_pool.h"
#include "gptq/error.h"
#include "gptq/model.h"
#include "gptq/safetensors.h"
#include "model/llama_weights.h"
#include "model/quant_linear.h"

namespace gptq {

const char* linear_slot_name(LinearSlot s) {
  switch (s) {
    case LinearSlot::kQ: return "self_attn.q_proj";
    case LinearSlot::kK: return "self_attn.k_proj";
    case LinearSlot::kV: return "self_attn.v_proj";
    case LinearSlot::kO: return "self_attn.o_proj";
    case LinearSlot::kGate: return "mlp.gate_proj";
    case LinearSlot::kUp: return "mlp.up_proj";
    case LinearSlot::kDown: return "mlp.down_proj";
  }
  return "?";
}

std::unique_ptr<Linear>& LlamaLayer::slot(LinearSlot s) {
  switch (s) {
    case LinearSlot::kQ: return q;
    case LinearSlot::kK: return k;
    case LinearSlot::kV: return v;
    case LinearSlot::kO: return o;
    case LinearSlot::kGate: return gate;
    case LinearSlot::kUp: return up;
    case LinearSlot::kDown: return down;
  }
  return q;
}

KVCache::KVCache(const ModelConfig& c, int64_t max_tokens)
    : n_kv_(c.num_kv_heads), hd_(c.head_dim), max_len_(max_tokens) {
  const size_t n = size_t(c.num_layers * n_kv_ * max_len_ * hd_);
  k_.assign(n, 0.f);
  v_.assign(n, 0.f);
}

void KVCache::truncate(int64_t n) {
  GPTQ_ASSERT(n >= 0 && n <= len_);
  len_ = n;
}

namespace {

void check_shape(const TensorView& t, std::vector<int64_t> expected, const char* what) {
  if (t.shape != expected) {
    TensorView e;
    e.shape = expected;
    fail(t.file, ": tensor ", t.name, " has shape ", t.shape_str(), " but config.json implies ", e.shape_str(), " (",
         what, ")");
  }
}

std::vector<float> load_norm(const TensorStore& s, const std::string& name, int64_t hidden) {
  const TensorView& t = s.get(name);
  check_shape(t, {hidden}, "hidden_size");
  return tensor_to_f32(t);
}

std::unique_ptr<Linear> load_linear(ThreadPool& pool, const TensorStore& s, const ModelConfig& c, const std::string& prefix,
                                    int64_t out, int64_t in, bool has_bias) {
  const TensorView* bias = nullptr;
  if (s.has(prefix + ".bias")) {
    bias = &s.get(prefix + ".bias");
    check_shape(*bias, {out}, "bias of the output size");
  } else if (has_bias) {
    s.get(prefix + ".bias");  // throws "missing tensor"
  }
  if (c.quant && s.has(prefix + ".qweight")) return load_gptq_linear(pool, s, *c.quant, prefix, out, in, bias);
  const TensorView& w = s.get(prefix + ".weight");
  check_shape(w, {out, in}, "[out_features, in_features]");
  return std::make_unique<DenseLinear>(w, bias);
}

}  // namespace

std::unique_ptr<Model> Model::load(const std::string& dir, const LoadOptions& opts) {
  std::unique_ptr<Model> m(new Model());
  m->pool_ = std::make_unique<ThreadPool>(opts.threads);
  openblas_set_num_threads(1);  // BLAS runs inside our pool's tasks
  m->dir_ = dir;
  m->config_ = ModelConfig::from_dir(dir);
  const ModelConfig& c = m->config_;
  m->store_ = std::make_unique<TensorStore>(TensorStore::open_dir(dir));
  const TensorStore& s = *m->store_;
  auto w = std::make_unique<LlamaWeights>();

  const int64_t H = c.hidden_size, hd = c.head_dim, F = c.intermediate_size;
  w->embed = s.get("model.embed_tokens.weight");
  check_shape(w->embed, {c.vocab_size, H}, "[vocab_size, hidden_size]");
  if (w->embed.dtype != DType::kF32 && w->embed.dtype != DType::kF16 && w->embed.dtype != DType::kBF16)
    fail(w->embed.file, ": tensor ", w->embed.name, " has dtype ", dtype_name(w->embed.dtype), ", expected F32/F16/BF16");
  w->final_norm = load_norm(s, "model.norm.weight", H);
  // Tied: HF ignores a stored lm_head.weight and uses the embedding.
  w->lm_head_tied = c.tie_word_embeddings;
  if (w->lm_head_tied)
    w->lm_head = std::make_unique<DenseLinear>(w->embed, nullptr);
  else
    w->lm_head = load_linear(*m->pool_, s, c, "lm_head", c.vocab_size, H, false);
  w->layers.resize(static_cast<size_t>(c.num_layers));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LlamaLayer& L = w->layers[size_t(l)];
    L.attn_norm = load_norm(s, p + "input_layernorm.weight", H);
    L.mlp_norm = load_norm(s, p + "post_attention_layernorm.weight", H);
    L.q = load_linear(*m->pool_, s, c, p + "self_attn.q_proj", c.num_heads * hd, H, c.attention_bias);
    L.k = load_linear(*m->pool_, s, c, p + "self_attn.k_proj", c.num_kv_heads * hd, H, c.attention_bias);
    L.v = load_linear(*m->pool_, s, c, p + "self_attn.v_proj", c.num_kv_heads * hd, H, c.attention_bias);
    L.o = load_linear(*m->pool_, s, c, p + "self_attn.o_proj", H, c.num_heads * hd, false);
    L.gate = load_linear(*m->pool_, s, c, p + "mlp.gate_proj", F, H, c.mlp_bias);
    L.up = load_linear(*m->pool_, s, c, p + "mlp.up_proj", F, H, c.mlp_bias);
    L.down = load_linear(*m->pool_, s, c, p + "mlp.down_proj", H, F, c.mlp_bias);
  }
  m->w_ = std::move(w);
  // Quantized layers were repacked into their own buffers: the file pages read for that need not
  // stay resident (those still used, like the embeddings, fault back in from the page cache).
  if (c.quant)
    for (const auto& f : s.files()) f->drop_pages();
  return m;
}

Model::~Model() = default;

ThreadPool& Model::thread_pool() const { return *pool_; }

std::unique_ptr<KVCache> Model::new_cache(int64_t max_tokens) const {
  if (max_tokens <= 0 || max_tokens > context_length()) max_tokens = context_length();
  return std::make_unique<KVCache>(config_, max_tokens);
}

void Model::embed(const int32_t* tokens, int64_t T, float* x) const {
  const int64_t H = config_.hidden_size;
  for (int64_t t = 0; t < T; ++t) {
    if (tokens[t] < 0 || tokens[t] >= config_.vocab_size)
      fail("token id ", tokens[t], " is outside the vocabulary of ", config_.vocab_size);
    cpu::dense_row_to_f32(w_->embed.data, w_->embed.dtype, H, tokens[t], x + t * H);
  }
}

namespace {

// cos/sin of the rotary angles for positions p0..p0+T-1, as HF computes them: inverse frequencies
// in fp32, angle = fp32(position) * inv_freq in fp32, then cos/sin.
void rope_tables(const ModelConfig& c, int64_t p0, int64_t T, std::vector<float>& cos, std::vector<float>& sin) {
  const int64_t half = c.head_dim / 2;
  std::vector<float> inv(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    inv[size_t(i)] = float(1.0 / std::pow(c.rope_theta, double(float(2 * i) / float(c.head_dim))));
  }
  const RopeScaling& rs = c.rope_scaling;
  if (rs.type == "linear") {
    for (auto& f : inv) f = float(f / rs.factor);
  } else if (rs.type == "llama3") {
    const double old_ctx = double(rs.original_max_position_embeddings);
    const double low_wl = old_ctx / rs.low_freq_factor, high_wl = old_ctx / rs.high_freq_factor;
    for (auto& f : inv) {
      const double wl = 2 * M_PI / f;
      double v = wl > low_wl ? f / rs.factor : f;
      if (!(wl < high_wl) && !(wl > low_wl)) {
        const double smooth = (old_ctx / wl - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
        v = (1 - smooth) * v / rs.factor + smooth * v;
      }
      f = float(v);
    }
  }
  cos.resize(static_cast<size_t>(T * half));
  sin.resize(static_cast<size_t>(T * half));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < half; ++i) {
      const float a = float(p0 + t) * inv[size_t(i)];
      cos[size_t(t * half + i)] = float(std::cos(double(a)));
      sin[size_t(t * half + i)] = float(std::sin(double(a)));
    }
}

}  // namespace

void Model::attn_norm(int64_t layer, const float* x, int64_t T, float* h) const {
  cpu::rms_norm(*pool_, x, w_->layers[size_t(layer)].attn_norm.data(), T, config_.hidden_size, float(config_.rms_norm_eps), h);
}

void Model::mlp_norm(int64_t layer, const float* x, int64_t T, float* h) const {
  cpu::rms_norm(*pool_, x, w_->layers[size_t(layer)].mlp_norm.data(), T, config_.hidden_size, float(config_.rms_norm_eps), h);
}

void Model::attention_block(int64_t layer, KVCache& cache, const float* h, int64_t T, float* att) {
  const ModelConfig& c = config_;
  const int64_t hd = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
  const int64_t p0 = cache.len_;
  if (p0 + T > cache.max_len_)
    fail("sequence of ", p0 + T, " tokens does not fit in the context of ", cache.max_len_, " tokens");
  LlamaLayer& L = w_->layers[size_t(layer)];
  std::vector<float> q(static_cast<size_t>(T * nh * hd)), k(static_cast<size_t>(T * nkv * hd)),
      v(static_cast<size_t>(T * nkv * hd));
  L.q->forward(*pool_, h, T, q.data());  // q: [T, nh*hd]
  L.k->forward(*pool_, h, T, k.data());  // k: [T, nkv*hd]
  L.v->forward(*pool_, h, T, v.data());
  std::vector<float> cs, sn;
  rope_tables(c, p0, T, cs, sn);
  cpu::rope(q.data(), T, nh, hd, nh * hd, cs.data(), sn.data());
  cpu::rope(k.data(), T, nkv, hd, nkv * hd, cs.data(), sn.data());
  std::vector<float*> kc(static_cast<size_t>(nkv)), vc(static_cast<size_t>(nkv));
  for (int64_t j = 0; j < nkv; ++j) {
    kc[size_t(j)] = cache.k(layer, j);
    vc[size_t(j)] = cache.v(layer, j);
    for (int64_t t = 0; t < T; ++t) {
      std::copy_n(k.data() + t * nkv * hd + j * hd, hd, kc[size_t(j)] + (p0 + t) * hd);
      std::copy_n(v.data() + t * nkv * hd + j * hd, hd, vc[size_t(j)] + (p0 + t) * hd);
    }
  }
  cpu::attention(*pool_, q.data(), T, p0, nh, nkv, hd, kc.data(), vc.data(), att);
}

void Model::attn_out(int64_t layer, const float* att, int64_t T, float* x) {
  const int64_t H = config_.hidden_size;
  std::vector<float> y(static_cast<size_t>(T * H));
  w_->layers[size_t(layer)].o->forward(*pool_, att, T, y.data());
  for (int64_t i = 0; i < T * H; ++i) x[i] += y[size_t(i)];
}

void Model::mlp_act(int64_t layer, const float* h, int64_t T, float* g) {
  const int64_t F = config_.intermediate_size;
  LlamaLayer& L = w_->layers[size_t(layer)];
  std::vector<float> u(static_cast<size_t>(T * F));
  L.gate->forward(*pool_, h, T, g);
  L.up->forward(*pool_, h, T, u.data());
  cpu::silu_mul(*pool_, g, u.data(), T, F);
}

void Model::mlp_out(int64_t layer, const float* g, int64_t T, float* x) {
  const int64_t H = config_.hidden_size;
  std::vector<float> y(static_cast<size_t>(T * H));
  w_->layers[size_t(layer)].down->forward(*pool_, g, T, y.data());
  for (int64_t i = 0; i < T * H; ++i) x[i] += y[size_t(i)];
}

void Model::layer_forward(int64_t layer, KVCache& cache, float* x, int64_t T) {
  const ModelConfig& c = config_;
  std::vector<float> h(static_cast<size_t>(T * c.hidden_size));                // h: [T, H]
  std::vector<float> att(static_cast<size_t>(T * c.num_heads * c.head_dim));   // att: [T, nh*hd]
  std::vector<float> g(static_cast<size_t>(T * c.intermediate_size));          // g: [T, F]
  attn_norm(layer, x, T, h.data());
  attention_block(layer, cache, h.data(), T, att.data());
  attn_out(layer, att.data(), T, x);
  mlp_norm(layer, x, T, h.data());
  mlp_act(layer, h.data(), T, g.data());
  mlp_out(layer, g.data(), T, x);
}

void Model::commit_tokens(KVCache& cache, int64_t T) const {
  GPTQ_ASSERT(cache.len_ + T <= cache.max_len_);
  cache.len_ += T;
}

void Model::head(const float* x, int64_t T, float* logits) {
  const int64_t H = config_.hidden_size;
  std::vector<float> h(static_cast<size_t>(T * H));
  cpu::rms_norm(*pool_, x, w_->final_norm.data(), T, H, float(config_.rms_norm_eps), h.data());
  w_->lm_head->forward(*pool_, h.data(), T, logits);
}

void Model::forward(KVCache& cache, const int32_t* tokens, int64_t T, bool all_logits, std::vector<float>& logits) {
  if (T <= 0) fail("forward pass needs at least one token");
  if (cache.len_ + T > cache.max_len_)
    fail("sequence of ", cache.len_ + T, " tokens does not fit in the context of ", cache.max_len_, " tokens");
  const int64_t H = config_.hidden_size;
  std::vector<float> x(static_cast<size_t>(T * H));
  embed(tokens, T, x.data());
  for (int64_t l = 0; l < config_.num_layers; ++l) layer_forward(l, cache, x.data(), T);
  commit_tokens(cache, T);
  if (all_logits) {
    logits.resize(static_cast<size_t>(T * config_.vocab_size));
    head(x.data(), T, logits.data());
  } else {
    logits.resize(static_cast<size_t>(config_.vocab_size));
    head(x.data() + (T - 1) * H, 1, logits.data());
  }
}

// Decoder layers and final norm: read once per token, held once.
static size_t layer_bytes(const LlamaWeights& w) {
  size_t n = w.final_norm.size() * 4;
  for (auto& L : w.layers) {
    n += (L.attn_norm.size() + L.mlp_norm.size()) * 4;
    for (auto* lin : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) n += (*lin)->weight_bytes();
  }
  return n;
}

size_t Model::weight_bytes() const {
  return layer_bytes(*w_) + w_->embed.nbytes + (w_->lm_head_tied ? 0 : w_->lm_head->weight_bytes());
}

size_t Model::bytes_per_token() const {
  // one embedding row, every layer, the whole lm_head (the embedding again when tied)
  return layer_bytes(*w_) + size_t(config_.hidden_size) * dtype_size(w_->embed.dtype) + w_->lm_head->weight_bytes();
}

size_t Model::file_bytes() const { return store_->total_file_bytes(); }

int64_t Model::parameter_count() const {
  const ModelConfig& c = config_;
  const int64_t H = c.hidden_size, hd = c.head_dim, F = c.intermediate_size;
  int64_t per_layer = 2 * H + H * c.num_heads * hd * 2 + H * c.num_kv_heads * hd * 2 + 3 * H * F;
  if (c.attention_bias) per_layer += c.num_heads * hd + 2 * c.num_kv_heads * hd;
  int64_t n = c.vocab_size * H + H + per_layer * c.num_layers;
  if (!c.tie_word_embeddings) n += c.vocab_size * H;
  return n;
}

std::string Model::weight_dtype_summary() const {
  std::set<std::string> kinds;
  kinds.insert(dtype_name(w_->embed.dtype));
  for (auto& L : w_->layers)
    for (LinearSlot s : kAllLinearSlots) kinds.insert(const_cast<LlamaLayer&>(L).slot(s)->kind());
  std::string out;
  for (const auto& k : kinds) out += (out.empty() ? "" : " + ") + k;
  return out;
}

namespace {
size_t status_field_kb(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::string f = std::string(field) + ":";
  while (std::getline(in, line)) {
    if (line.rfind(f, 0) == 0) {
      std::istringstream ss(line.substr(f.size()));
      size_t kb = 0;
      ss >> kb;
      return kb;
    }
  }
  return 0;
}
}  // namespace

size_t current_rss_bytes() { return status_field_kb("VmRSS") * 1024; }
size_t peak_rss_bytes() { return status_field_kb("VmHWM") * 1024; }

}  // namespace gptq
