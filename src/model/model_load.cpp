// Loading a Llama-family model folder into backend weight handles.
#include <array>
#include <cmath>
#include <cstring>
#include <set>

#include "backend/backend.h"
#include "core/fs.h"
#include "core/mapped_file.h"
#include "core/memory.h"
#include "core/synthetic.h"
#include "gptq/error.h"
#include "gptq/model.h"
#include "gptq/safetensors.h"
#include "model/llama_weights.h"

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

namespace {

void check_shape(const TensorView& t, std::vector<int64_t> expected, const char* what) {
  if (t.shape != expected) {
    TensorView e;
    e.shape = expected;
    fail(t.file, ": tensor ", t.name, " has shape ", t.shape_str(), " but config.json implies ", e.shape_str(), " (",
         what, ")");
  }
}

void check_float(const TensorView& t) {
  if (t.dtype != DType::kF32 && t.dtype != DType::kF16 && t.dtype != DType::kBF16)
    fail(t.file, ": tensor ", t.name, " has dtype ", dtype_name(t.dtype), ", expected F32, F16 or BF16");
}

std::vector<float> to_f32(const TensorView& t) {
  check_float(t);
  std::vector<float> out(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) {
    out[size_t(i)] = load_float(t, i);
    if (!std::isfinite(out[size_t(i)]))
      fail(t.file, ": tensor ", t.name, " holds ", out[size_t(i)], " at index ", i, " (corrupt file?)");
  }
  return out;
}

DeviceVector device_vector(Backend& be, const std::vector<float>& v) {
  DeviceVector d;
  d.t = be.alloc_f32(1, int64_t(v.size()), d.mem);
  be.from_host(v.data(), d.t);
  return d;
}

DeviceVector load_norm(Backend& be, const TensorStore& s, const std::string& name, int64_t hidden) {
  const TensorView& t = s.get(name);
  check_shape(t, {hidden}, "hidden_size");
  return device_vector(be, to_f32(t));
}

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

std::unique_ptr<Weight> load_gptq(Backend& be, const TensorStore& s, const QuantConfig& q, const std::string& prefix,
                                  int64_t out, int64_t in, const float* bias) {
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
  try {
    quant::validate(m);
    return be.gptq_weight(m, bias);
  } catch (const Error& e) {
    fail(s.dir(), ": ", prefix, ": ", e.what());
  }
}

// The seven linears of a decoder layer, in LinearSlot order: [out, in] and whether a bias is expected.
struct LinearShape {
  LinearSlot slot;
  int64_t out, in;
  bool bias;
};
std::array<LinearShape, 7> layer_linears(const ModelConfig& c) {
  const int64_t H = c.hidden_size, A = c.num_heads * c.head_dim, KV = c.num_kv_heads * c.head_dim,
                F = c.intermediate_size;
  return {{{LinearSlot::kQ, A, H, c.attention_bias},
           {LinearSlot::kK, KV, H, c.attention_bias},
           {LinearSlot::kV, KV, H, c.attention_bias},
           {LinearSlot::kO, H, A, false},
           {LinearSlot::kGate, F, H, c.mlp_bias},
           {LinearSlot::kUp, F, H, c.mlp_bias},
           {LinearSlot::kDown, H, F, c.mlp_bias}}};
}

std::string layer_prefix(int64_t l) { return "model.layers." + std::to_string(l) + "."; }

std::unique_ptr<Weight> load_linear(Backend& be, const TensorStore& s, const ModelConfig& c, const std::string& prefix,
                                    int64_t out, int64_t in, bool has_bias) {
  std::vector<float> bias;
  if (s.has(prefix + ".bias")) {
    const TensorView& b = s.get(prefix + ".bias");
    check_shape(b, {out}, "bias of the output size");
    bias = to_f32(b);
  } else if (has_bias) {
    s.get(prefix + ".bias");  // throws "missing tensor"
  }
  const float* bp = bias.empty() ? nullptr : bias.data();
  if (c.quant && s.has(prefix + ".qweight")) return load_gptq(be, s, *c.quant, prefix, out, in, bp);
  const TensorView& w = s.get(prefix + ".weight");
  check_shape(w, {out, in}, "[out_features, in_features]");
  check_float(w);
  return be.dense_weight({w.data, w.dtype, out, in, bp, false});
}

// RoPE inverse frequencies as transformers computes them: in fp32, with linear or llama3 scaling.
std::vector<float> rope_inv_freq(const ModelConfig& c) {
  const int64_t half = c.head_dim / 2;
  std::vector<float> inv(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i)
    inv[size_t(i)] = float(1.0 / std::pow(c.rope_theta, double(float(2 * i) / float(c.head_dim))));
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
  return inv;
}

}  // namespace

Model::Model() = default;
Model::~Model() = default;

std::unique_ptr<Model> Model::load(const std::string& dir, const LoadOptions& opts) {
  std::unique_ptr<Model> m(new Model());
  m->dir_ = dir;
  m->config_ = ModelConfig::from_dir(dir);
  m->backend_ = opts.backend;
  m->kv_fp16_ = opts.kv_fp16;
  m->fuse_linears_ = opts.fuse_linears;
  if (!m->backend_) {
    CpuBackendOptions co;
    co.threads = opts.threads;
    m->backend_ = make_cpu_backend(co);
  }
  Backend& be = *m->backend_;
  const ModelConfig& c = m->config_;
  m->store_ = std::make_unique<TensorStore>(TensorStore::open_dir(dir));
  if (opts.replace) m->store_->replace(*opts.replace);
  const TensorStore& s = *m->store_;
  if (c.quant) {
    // Quantized linears are repacked into buffers of about their file size (dense weights stay
    // memory-mapped): refuse before the first one is taken, with the numbers.
    uint64_t packed = 0;
    for (const auto& [name, t] : s.all())
      for (const char* suffix : {".qweight", ".qzeros", ".scales", ".g_idx"})
        if (name.size() > std::strlen(suffix) && name.compare(name.size() - std::strlen(suffix), std::string::npos, suffix) == 0)
          packed += t->nbytes;
    check_memory(packed, be.available_bytes(), cat("loading the quantized weights of ", dir));
  }
  auto w = std::make_unique<LlamaWeights>();
  m->ws_ = std::make_unique<Workspace>();

  const int64_t H = c.hidden_size;
  const TensorView& emb = s.get("model.embed_tokens.weight");
  check_shape(emb, {c.vocab_size, H}, "[vocab_size, hidden_size]");
  check_float(emb);
  w->embed = be.dense_weight({emb.data, emb.dtype, c.vocab_size, H, nullptr, false});
  w->final_norm = load_norm(be, s, "model.norm.weight", H);
  w->inv_freq = device_vector(be, rope_inv_freq(c));
  // Tied: HF ignores a stored lm_head.weight and uses the embedding.
  if (!c.tie_word_embeddings) w->lm_head = load_linear(be, s, c, "lm_head", c.vocab_size, H, false);
  w->layers.resize(static_cast<size_t>(c.num_layers));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = layer_prefix(l);
    LlamaLayer& L = w->layers[size_t(l)];
    L.attn_norm = load_norm(be, s, p + "input_layernorm.weight", H);
    L.mlp_norm = load_norm(be, s, p + "post_attention_layernorm.weight", H);
  }
  m->w_ = std::move(w);
  if (!opts.defer_layers)
    for (int64_t l = 0; l < c.num_layers; ++l) m->load_layer(l);
  // Quantized layers were repacked into their own buffers: the file pages read for that need not
  // stay resident (those still used, like the embeddings, fault back in from the page cache).
  if (c.quant)
    for (const auto& f : s.files()) f->drop_pages();
  return m;
}

// ---- synthetic models

namespace {

ModelConfig llama_config(int64_t hidden, int64_t ffn, int64_t layers, int64_t heads, int64_t kv_heads, int64_t vocab,
                         int64_t ctx, double theta, int32_t bos, int32_t eos) {
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.model_type = "llama";
  c.hidden_size = hidden;
  c.intermediate_size = ffn;
  c.num_layers = layers;
  c.num_heads = heads;
  c.num_kv_heads = kv_heads;
  c.head_dim = hidden / heads;
  c.vocab_size = vocab;
  c.max_position_embeddings = ctx;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = theta;
  c.tie_word_embeddings = false;
  c.torch_dtype = "float16";
  c.bos_token_id = bos;
  c.eos_token_ids = {eos};
  return c;
}

// Weight `id` of a synthetic model gets the stream synthetic_bits(seed, id): 0 the embedding,
// 1 lm_head, 2 the final norm, then per layer l: 3 + 9l + slot (LinearSlot order), + 7 the
// attention norm, + 8 the MLP norm.
uint64_t weight_seed(uint64_t seed, int64_t id) { return synthetic_bits(seed, uint64_t(id)); }

DeviceVector synthetic_norm(Backend& be, int64_t n, uint64_t seed) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[size_t(i)] = 1.0f + synthetic_uniform(seed, uint64_t(i), 0.1f);
  return device_vector(be, v);
}

}  // namespace

const std::vector<std::string>& synthetic_model_names() {
  static const std::vector<std::string> names = {"llama2-7b", "llama2-13b", "llama2-70b", "llama3-8b", "tiny"};
  return names;
}

ModelConfig synthetic_config(const std::string& name) {
  // config.json of meta-llama/Llama-2-7b-hf, Llama-2-13b-hf, Llama-2-70b-hf, Meta-Llama-3-8B
  if (name == "llama2-7b") return llama_config(4096, 11008, 32, 32, 32, 32000, 4096, 10000.0, 1, 2);
  if (name == "llama2-13b") return llama_config(5120, 13824, 40, 40, 40, 32000, 4096, 10000.0, 1, 2);
  if (name == "llama2-70b") return llama_config(8192, 28672, 80, 64, 8, 32000, 4096, 10000.0, 1, 2);
  if (name == "llama3-8b") return llama_config(4096, 14336, 32, 32, 8, 128256, 8192, 500000.0, 128000, 128001);
  // GQA (4 heads over 2), and sizes every bit width packs (multiples of 32)
  if (name == "tiny") return llama_config(64, 192, 2, 4, 2, 512, 512, 10000.0, 1, 2);
  std::string known;
  for (const auto& n : synthetic_model_names()) known += (known.empty() ? "" : ", ") + n;
  fail("unknown synthetic model \"", name, "\" (known: ", known, ")");
}

constexpr float kSyntheticScale = 0.02f;  // embeddings and linears uniform in [-0.02, 0.02]

// The bytes of a synthetic out x in linear where the backend keeps it.
static uint64_t synthetic_linear_bytes(const SyntheticOptions& o, int64_t out, int64_t in) {
  if (o.bits == 0) return uint64_t(out * in) * dtype_size(o.dtype);
  const uint64_t gn = uint64_t(quant::num_groups(in, o.group_size) * out);
  return (uint64_t(out * in) + gn) * uint64_t(o.bits) / 8 + gn * 2 + uint64_t(in) * 4;  // codes, zeros, scales, g_idx
}

std::unique_ptr<Model> Model::synthetic(const std::string& name, const SyntheticOptions& o) {
  ModelConfig c = synthetic_config(name);
  if (o.layers < 0 || o.layers > c.num_layers)
    fail("synthetic ", name, " has ", c.num_layers, " decoder layers: cannot make ", o.layers, " of them");
  if (o.layers > 0) c.num_layers = o.layers;
  if (o.dtype != DType::kF16 && o.dtype != DType::kBF16 && o.dtype != DType::kF32)
    fail("synthetic ", name, ": weights are F16, BF16 or F32, not ", dtype_name(o.dtype));
  if (o.bits != 0) {
    if (!quant::is_supported_bits(o.bits)) fail("synthetic ", name, ": ", o.bits, "-bit GPTQ is not supported (2, 3, 4, 8)");
    if (o.group_size == 0 || o.group_size < -1)
      fail("synthetic ", name, ": group size ", o.group_size, " must be -1 or positive");
  }
  std::unique_ptr<Model> m(new Model());
  m->dir_ = "synthetic:" + name;
  m->config_ = c;
  m->backend_ = o.backend;
  m->kv_fp16_ = o.kv_fp16;
  m->fuse_linears_ = o.fuse_linears;
  if (!m->backend_) {
    CpuBackendOptions co;
    co.threads = o.threads;
    m->backend_ = make_cpu_backend(co);
  }
  Backend& be = *m->backend_;
  const int64_t H = c.hidden_size, V = c.vocab_size;
  const auto shapes = layer_linears(c);
  // Refuse up front, with the numbers, what would not fit.
  const uint64_t es = dtype_size(o.dtype);
  uint64_t need = 2 * uint64_t(V * H) * es;
  // Deferred, one decoder layer's linears at a time.
  for (const auto& sh : shapes) need += uint64_t(o.defer_layers ? 1 : c.num_layers) * synthetic_linear_bytes(o, sh.out, sh.in);
  check_memory(need, be.available_bytes(), cat("the weights of synthetic ", name));

  m->synthetic_ = o;
  m->synthetic_->backend = nullptr;  // the model holds it
  auto w = std::make_unique<LlamaWeights>();
  m->ws_ = std::make_unique<Workspace>();
  w->embed = be.random_dense_weight(V, H, o.dtype, kSyntheticScale, weight_seed(o.seed, 0));
  w->lm_head = be.random_dense_weight(V, H, o.dtype, kSyntheticScale, weight_seed(o.seed, 1));
  w->final_norm = synthetic_norm(be, H, weight_seed(o.seed, 2));
  w->inv_freq = device_vector(be, rope_inv_freq(c));
  w->layers.resize(static_cast<size_t>(c.num_layers));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    LlamaLayer& L = w->layers[size_t(l)];
    const int64_t base = 3 + 9 * l;
    L.attn_norm = synthetic_norm(be, H, weight_seed(o.seed, base + 7));
    L.mlp_norm = synthetic_norm(be, H, weight_seed(o.seed, base + 8));
  }
  m->w_ = std::move(w);
  if (!o.defer_layers)
    for (int64_t l = 0; l < c.num_layers; ++l) m->load_layer(l);
  return m;
}

// Layer l's linears of a synthetic model: weight ids 3 + 9l + slot (the norms are 3 + 9l + 7, + 8).
static std::array<std::unique_ptr<Weight>, 7> synthetic_linears(Backend& be, const ModelConfig& c,
                                                                  const SyntheticOptions& o, int64_t l) {
  std::array<std::unique_ptr<Weight>, 7> made;
  for (const auto& sh : layer_linears(c)) {
    const uint64_t seed = weight_seed(o.seed, 3 + 9 * l + int64_t(sh.slot));
    made[size_t(sh.slot)] = o.bits == 0 ? be.random_dense_weight(sh.out, sh.in, o.dtype, kSyntheticScale, seed)
                                        : be.random_gptq_weight(sh.out, sh.in, o.bits, o.group_size, kSyntheticScale, seed);
  }
  return made;
}

void Model::load_layer(int64_t l) {
  GPTQ_ASSERT(l >= 0 && l < config_.num_layers);
  LlamaLayer& L = w_->layers[size_t(l)];
  if (L.loaded()) return;
  std::array<std::unique_ptr<Weight>, 7> made;  // all or none (a bad tensor leaves the layer as it was)
  if (synthetic_) {
    made = synthetic_linears(*backend_, config_, *synthetic_, l);
  } else {
    const std::string p = layer_prefix(l);
    for (const auto& sh : layer_linears(config_))
      made[size_t(sh.slot)] =
          load_linear(*backend_, *store_, config_, p + linear_slot_name(sh.slot), sh.out, sh.in, sh.bias);
  }
  std::unique_ptr<Weight> qkv, gate_up;
  if (fuse_linears_) {
    auto part = [&](LinearSlot s) -> const Weight* { return made[size_t(s)].get(); };
    qkv = backend_->fuse({part(LinearSlot::kQ), part(LinearSlot::kK), part(LinearSlot::kV)});
    gate_up = backend_->fuse({part(LinearSlot::kGate), part(LinearSlot::kUp)});
    if (qkv)
      for (LinearSlot s : {LinearSlot::kQ, LinearSlot::kK, LinearSlot::kV}) made[size_t(s)].reset();
    if (gate_up)
      for (LinearSlot s : {LinearSlot::kGate, LinearSlot::kUp}) made[size_t(s)].reset();
  }
  L.linears = std::move(made);
  L.qkv = std::move(qkv);
  L.gate_up = std::move(gate_up);
  if (L.qkv || L.gate_up) ws_->fused_layers = true;
}

// Calls fn(view) for each of layer l's linears' tensors (weights and biases) in the files.
void Model::for_layer_tensors(int64_t l, const std::function<void(const TensorView&)>& fn) const {
  if (!store_) return;
  const std::string p = layer_prefix(l);
  for (const auto& sh : layer_linears(config_))
    for (const char* part : {".weight", ".bias"}) {
      const std::string name = p + linear_slot_name(sh.slot) + part;
      if (store_->has(name)) fn(store_->get(name));
    }
}

size_t Model::layer_file_bytes(int64_t l) const {
  size_t n = 0;
  if (synthetic_) {  // what load_layer(l) makes
    for (const auto& sh : layer_linears(config_)) n += size_t(synthetic_linear_bytes(*synthetic_, sh.out, sh.in));
    return n;
  }
  for_layer_tensors(l, [&](const TensorView& t) { n += t.nbytes; });
  return n;
}

void Model::prefetch_layer(int64_t l) const {
  GPTQ_ASSERT(l >= 0 && l < config_.num_layers);
  if (!synthetic_) for_layer_tensors(l, [](const TensorView& t) { prefetch_pages(t.data, t.nbytes); });
}

void Model::release_layer(int64_t l) {
  GPTQ_ASSERT(l >= 0 && l < config_.num_layers);
  LlamaLayer& L = w_->layers[size_t(l)];
  for (auto& lin : L.linears) lin.reset();
  L.qkv.reset();
  L.gate_up.reset();
}

bool Model::layer_loaded(int64_t l) const { return w_->layers.at(size_t(l)).loaded(); }

const Weight& Model::linear(int64_t layer, LinearSlot s) const {
  GPTQ_ASSERT(layer_loaded(layer), "layer ", layer, " is not loaded (LoadOptions::defer_layers)");
  const LlamaLayer& L = w_->layers.at(size_t(layer));
  if (!L.linears[size_t(s)])
    fail("layer ", layer, "'s ", linear_slot_name(s), " is fused with its neighbours (LoadOptions::fuse_linears)");
  return L.get(s);
}

void Model::set_linear(int64_t layer, LinearSlot s, std::unique_ptr<Weight> w) {
  GPTQ_ASSERT(layer_loaded(layer), "layer ", layer, " is not loaded (LoadOptions::defer_layers)");
  auto& slot = w_->layers.at(size_t(layer)).slot(s);
  if (!slot) fail("layer ", layer, "'s ", linear_slot_name(s), " is fused with its neighbours (LoadOptions::fuse_linears)");
  GPTQ_ASSERT(w && w->in_features() == slot->in_features() && w->out_features() == slot->out_features());
  slot = std::move(w);
}

// Decoder layers and final norm: read once per token, held once.
static size_t layer_bytes(const LlamaWeights& w) {
  size_t n = size_t(w.final_norm.t.cols) * 4;
  for (const auto& L : w.layers) {
    n += size_t(L.attn_norm.t.cols + L.mlp_norm.t.cols) * 4;
    for (const Weight* lin : L.weights()) n += lin->bytes();
  }
  return n;
}

size_t Model::weight_bytes() const {
  return layer_bytes(*w_) + w_->embed->bytes() + (w_->lm_head ? w_->lm_head->bytes() : 0);
}

size_t Model::bytes_per_token() const {
  // one embedding row, every layer, the whole lm_head (the embedding again when tied)
  return layer_bytes(*w_) + w_->embed->bytes() / size_t(config_.vocab_size) + w_->head().bytes();
}

size_t Model::file_bytes() const { return store_ ? store_->total_file_bytes() : 0; }

int Model::threads() const { return backend_->threads(); }

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
  kinds.insert(w_->embed->kind());
  for (const auto& L : w_->layers)
    for (const Weight* lin : L.weights()) kinds.insert(lin->kind());
  std::string out;
  for (const auto& k : kinds) out += (out.empty() ? "" : " + ") + k;
  return out;
}

}  // namespace gptq
