// A GPTQ checkpoint folder as Model::load reads it: quantization_config (from config.json) checked
// and turned into layer layouts, every qweight/qzeros/scales/g_idx tensor checked against it, then
// repacked by the CPU backend, and one forward pass. The model is a micro Llama (hidden 32,
// 1 layer, vocabulary 16). Input: the quantization_config JSON object, a NUL byte, and
// model.safetensors. GPTQ_FUZZ_WRITE_SEEDS=DIR writes valid checkpoints of every bit width,
// group size and format as seeds.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/fs.h"
#include "fuzz_common.h"
#include "gptq/error.h"
#include "gptq/model.h"
#include "gptq/safetensors.h"
#include "io/gptq_format.h"

namespace {

namespace quant = gptq::quant;

std::string dir;
std::shared_ptr<gptq::Backend> backend;

constexpr int64_t kHidden = 32, kInter = 64, kVocab = 16;
// Everything but quantization_config, which the input supplies.
constexpr const char* kConfigHead = R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
  "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
  "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 16, "max_position_embeddings": 32,
  "rms_norm_eps": 1e-5, "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2,
  "quantization_config": )";

uint32_t lcg(uint32_t& s) { return s = s * 1664525u + 1013904223u; }

// One valid checkpoint: the input this target expects, for seeds.
std::string make_seed(int bits, int group, bool desc_act, bool v2, uint32_t seed) {
  std::vector<uint16_t> emb(size_t(kVocab * kHidden)), norm(size_t(kHidden), 0x3C00 /* 1.0 */);
  for (auto& e : emb) e = uint16_t(0x2000 + lcg(seed) % 0x1800);  // small positive fp16
  std::vector<quant::PackedQuant> packed;
  std::vector<gptq::TensorToWrite> ts = {
      {"model.embed_tokens.weight", gptq::DType::kF16, {kVocab, kHidden}, emb.data(), emb.size() * 2},
      {"model.norm.weight", gptq::DType::kF16, {kHidden}, norm.data(), norm.size() * 2},
      {"model.layers.0.input_layernorm.weight", gptq::DType::kF16, {kHidden}, norm.data(), norm.size() * 2},
      {"model.layers.0.post_attention_layernorm.weight", gptq::DType::kF16, {kHidden}, norm.data(), norm.size() * 2}};
  const struct { const char* name; int64_t out, in; } linears[] = {
      {"self_attn.q_proj", kHidden, kHidden}, {"self_attn.k_proj", kHidden, kHidden},
      {"self_attn.v_proj", kHidden, kHidden}, {"self_attn.o_proj", kHidden, kHidden},
      {"mlp.gate_proj", kInter, kHidden},     {"mlp.up_proj", kInter, kHidden},
      {"mlp.down_proj", kHidden, kInter}};
  packed.reserve(std::size(linears));
  std::vector<std::string> names;
  for (const auto& l : linears) {
    const int64_t K = l.in, N = l.out, ng = quant::num_groups(K, group), G = quant::resolve_group_size(K, group);
    std::vector<uint8_t> codes(size_t(N * K));
    for (auto& c : codes) c = uint8_t(lcg(seed) % (1u << bits));
    std::vector<float> scales(size_t(ng * N));
    for (auto& s : scales) s = 0.001f * float(1 + lcg(seed) % 50);
    std::vector<int32_t> zeros(size_t(ng * N));
    for (auto& z : zeros) z = int32_t(lcg(seed) % (1u << bits));
    std::vector<int32_t> g_idx(static_cast<size_t>(K));
    for (int64_t k = 0; k < K; ++k) g_idx[size_t(k)] = int32_t((desc_act ? (k * 7 + 3) % K : k) / G);
    packed.push_back(quant::pack_quantized(codes.data(), scales.data(), zeros.data(), g_idx.data(), nullptr, bits,
                                           group, K, N, v2 ? quant::QuantFormat::kGptqV2 : quant::QuantFormat::kGptqV1));
    const quant::PackedQuant& p = packed.back();
    const std::string pre = std::string("model.layers.0.") + l.name;
    ts.push_back({pre + ".qweight", gptq::DType::kI32, {K * bits / 32, N}, p.qweight.data(), p.qweight.size() * 4});
    ts.push_back({pre + ".qzeros", gptq::DType::kI32, {ng, N * bits / 32}, p.qzeros.data(), p.qzeros.size() * 4});
    ts.push_back({pre + ".scales", gptq::DType::kF16, {ng, N}, p.scales.data(), p.scales.size() * 2});
    ts.push_back({pre + ".g_idx", gptq::DType::kI32, {K}, p.g_idx.data(), p.g_idx.size() * 4});
  }
  const std::string st = gptq_fuzz::scratch_dir() + "/seed.safetensors";
  gptq::write_safetensors(st, ts);
  const std::string qc = gptq::cat(R"({"quant_method": "gptq", "bits": )", bits, R"(, "group_size": )", group,
                                   R"(, "desc_act": )", desc_act ? "true" : "false", R"(, "sym": true, )",
                                   R"("checkpoint_format": ")", v2 ? "gptq_v2" : "gptq", R"("})");
  return qc + std::string(1, '\0') + gptq::read_text_file(st);
}

void write_seeds(const std::string& out) {
  int n = 0;
  for (int bits : {2, 3, 4, 8})
    for (int group : {-1, 16, 32})
      for (bool desc_act : {false, true}) {
        const bool v2 = (n % 2) == 1;
        gptq_fuzz::write_file(gptq::cat(out, "/seed_", bits, "bit_g", group, desc_act ? "_act" : "", v2 ? "_v2" : "", ".bin"),
                              make_seed(bits, group, desc_act, v2, uint32_t(n + 1)));
        ++n;
      }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  gptq_fuzz::write_seeds_if_asked(write_seeds);
  dir = gptq_fuzz::scratch_subdir("ckpt");
  gptq::CpuBackendOptions o;
  o.threads = 1;
  backend = gptq::make_cpu_backend(o);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const size_t nul = in.find('\0');
  if (nul == std::string_view::npos) return 0;
  gptq_fuzz::write_file(dir + "/config.json", std::string(kConfigHead) + std::string(in.substr(0, nul)) + "}");
  gptq_fuzz::write_file(dir + "/model.safetensors", in.substr(nul + 1));
  try {
    gptq::LoadOptions lo;
    lo.backend = backend;
    const auto model = gptq::Model::load(dir, lo);
    auto cache = model->new_cache(8);
    const int32_t tokens[] = {1, 5, 15};
    std::vector<float> logits;
    model->forward(*cache, tokens, 3, true, logits);
    if (logits.size() != size_t(3 * kVocab)) gptq_fuzz::violated("forward() returned the wrong logits size");
  } catch (const gptq::Error&) {
  }
  return 0;
}
