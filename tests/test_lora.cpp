// gptq merge-lora and quantize --lora on adapters these tests build for babyllama-361: the merged
// weights against W + s·B·A in double (PEFT's module selection and scales spelled out per case),
// the merged model's logits against the base with the adapter applied on the fly, quantize --lora
// against merge-lora + quantize byte for byte, and every refusal.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "backend/backend.h"
#include "cli_runner.h"
#include "core/fs.h"
#include "core/half.h"
#include "gptq/error.h"
#include "gptq/lora.h"
#include "gptq/model.h"
#include "gptq/quantize.h"
#include "gptq/safetensors.h"
#include "io/checkpoint_writer.h"
#include "shared_paths.h"

namespace fs = std::filesystem;
using nlohmann::json;
using gptq_test::expect_cli_error;
using gptq_test::run_cli;

namespace {

const char* const kModel = "models/babyllama-361";  // fp32, 5 layers, hidden 128, 8/4 heads of 16, ffn 352, tied
const char* const kCalib = "data/tinystories-sample/tiny.utf8";

#define NEED_MODEL() \
  if (!gptq_test::is_dir(shared_path(kModel))) GTEST_SKIP() << "../shared/" << kModel << " not found: skipped"

fs::path scratch(const std::string& tag) {
  const fs::path p = fs::path(testing::TempDir()) / ("gptq_lora_" + tag + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

const char* const kSlots[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                              "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};

std::string mod(int layer, const char* slot) { return "model.layers." + std::to_string(layer) + "." + slot; }

// The modules of layers `layers` whose slot names end with one of `slots`.
std::set<std::string> modules(const std::vector<int>& layers, const std::vector<std::string>& slots) {
  std::set<std::string> out;
  for (int l : layers)
    for (const char* s : kSlots)
      for (const auto& want : slots)
        if (std::string(s).size() >= want.size() && std::string(s).compare(std::string(s).size() - want.size(), want.size(), want) == 0)
          out.insert(mod(l, s));
  return out;
}
const std::vector<int> kAllLayers = {0, 1, 2, 3, 4};

// An adapter as PEFT saves it: adapter_config.json and adapter_model.safetensors with random
// lora_A [r, in] / lora_B [out, r] for the modules the test expects the config to select.
struct Adapter {
  json config;
  std::map<std::string, int64_t> rank;    // module -> r (the test's own reading of the config)
  std::map<std::string, double> scale;    // module -> s
  std::map<std::string, std::pair<std::vector<int64_t>, std::vector<float>>> tensors;  // name -> shape, values
  gptq::DType dtype = gptq::DType::kF32;  // of the stored tensors
};

std::vector<float> random_values(size_t n, uint32_t seed, float amp) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(-amp, amp);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Adds lora_A/lora_B of `module` (base weight shape from the model) with rank r and scale s.
void add_lora(Adapter& a, const gptq::TensorStore& base, const std::string& module, int64_t r, double s) {
  const auto& w = base.get(module + ".weight");
  const uint32_t seed = uint32_t(std::hash<std::string>()(module) & 0xffffff);
  a.tensors["base_model.model." + module + ".lora_A.weight"] = {{r, w.dim(1)}, random_values(size_t(r * w.dim(1)), seed, 0.2f)};
  a.tensors["base_model.model." + module + ".lora_B.weight"] = {{w.dim(0), r}, random_values(size_t(w.dim(0) * r), seed + 1, 0.2f)};
  a.rank[module] = r;
  a.scale[module] = s;
}

Adapter make_adapter(const gptq::TensorStore& base, json config, const std::set<std::string>& mods, int64_t r, double s) {
  Adapter a;
  config["peft_type"] = "LORA";
  config["task_type"] = "CAUSAL_LM";
  config["base_model_name_or_path"] = "babyllama-361";
  if (!config.contains("r")) config["r"] = r;
  a.config = config;
  for (const auto& m : mods) add_lora(a, base, m, r, s);
  return a;
}

void write_adapter(const Adapter& a, const fs::path& dir) {
  fs::create_directories(dir);
  gptq::write_file_atomic((dir / "adapter_config.json").string(), a.config.dump(2));
  std::vector<gptq::TensorToWrite> t;
  std::deque<std::vector<uint16_t>> halves;
  for (const auto& [name, sv] : a.tensors) {
    if (a.dtype == gptq::DType::kF32) {
      t.push_back({name, gptq::DType::kF32, sv.first, sv.second.data(), sv.second.size() * 4});
    } else {
      auto& h = halves.emplace_back();
      for (float x : sv.second) h.push_back(a.dtype == gptq::DType::kF16 ? gptq::fp32_to_fp16(x) : gptq::fp32_to_bf16(x));
      t.push_back({name, a.dtype, sv.first, h.data(), h.size() * 2});
    }
  }
  gptq::write_safetensors((dir / "adapter_model.safetensors").string(), t);
}

// One ulp of dtype at |v| (the spacing of representable values there).
double ulp(gptq::DType dt, double v) {
  const float f = std::fabs(float(v));
  if (dt == gptq::DType::kF32) return double(std::nextafter(f, INFINITY)) - f;
  if (dt == gptq::DType::kF16) {
    const uint16_t h = gptq::fp32_to_fp16(f);
    return double(gptq::fp16_to_fp32(uint16_t(h + 1))) - gptq::fp16_to_fp32(h);
  }
  const uint16_t b = gptq::fp32_to_bf16(f);
  return double(gptq::bf16_to_fp32(uint16_t(b + 1))) - gptq::bf16_to_fp32(b);
}

// The value the adapter's stored (maybe 16-bit) tensor holds at i.
double stored(const Adapter& a, const std::string& name, size_t i) {
  const float x = a.tensors.at(name).second[i];
  if (a.dtype == gptq::DType::kF16) return gptq::fp16_to_fp32(gptq::fp32_to_fp16(x));
  if (a.dtype == gptq::DType::kBF16) return gptq::bf16_to_fp32(gptq::fp32_to_bf16(x));
  return x;
}

// Every tensor of `out` against the base: merged modules = W + s·B·A in double within half an ulp
// of out_dtype (plus the double's own error), saved ones = the adapter's, the rest = the base's,
// all in out_dtype (or the base's dtype when out_dtype is F32 here: babyllama is fp32).
void expect_merged(const std::string& base_dir, const std::string& out, const Adapter& a, gptq::DType out_dtype,
                   const std::map<std::string, std::string>& saved = {}) {
  const auto base = gptq::TensorStore::open_dir(base_dir);
  const auto merged = gptq::TensorStore::open_dir(out);
  ASSERT_EQ(merged.all().size(), base.all().size());
  int64_t checked = 0;
  for (const auto& [name, bt] : base.all()) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(merged.has(name));
    const gptq::TensorView& mt = merged.get(name);
    ASSERT_EQ(mt.shape, bt->shape);
    ASSERT_EQ(mt.dtype, out_dtype);
    const std::string module = name.substr(0, name.rfind('.'));
    const bool is_merged = a.rank.count(module) != 0;
    const int64_t rows = bt->shape[0], cols = bt->shape.size() > 1 ? bt->shape[1] : 1;
    for (int64_t o = 0; o < rows; ++o) {
      for (int64_t i = 0; i < cols; ++i) {
        const int64_t e = o * cols + i;
        double want = gptq::load_float(*bt, e);
        if (is_merged) {
          const int64_t r = a.rank.at(module);
          const std::string pa = "base_model.model." + module + ".lora_A.weight";
          const std::string pb = "base_model.model." + module + ".lora_B.weight";
          double d = 0;
          for (int64_t k = 0; k < r; ++k) d += stored(a, pb, size_t(o * r + k)) * stored(a, pa, size_t(k * cols + i));
          want += a.scale.at(module) * d;
        } else if (saved.count(name)) {
          want = stored(a, saved.at(name), size_t(e));
        }
        const double got = gptq::load_float(mt, e);
        ASSERT_LE(std::fabs(got - want), 0.5 * ulp(out_dtype, want) * (1 + 1e-9) + 1e-12 * std::fabs(want))
            << "at [" << o << ", " << i << "]";
        ++checked;
      }
    }
  }
  EXPECT_GT(checked, 1000);
}

std::vector<std::string> sorted(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  return v;
}
std::vector<std::string> keys(const Adapter& a) {
  std::vector<std::string> k;
  for (const auto& [m, r] : a.rank) k.push_back(m);
  return k;
}

struct Case {
  const char* name;
  json config;
  std::set<std::string> mods;  // what PEFT selects with this config, spelled out
  int64_t r;
  double s;                    // alpha / r, or alpha / sqrt(r) with rsLoRA
};

std::vector<Case> cases() {
  return {
      {"list_qv", {{"target_modules", {"q_proj", "v_proj"}}, {"lora_alpha", 8}}, modules(kAllLayers, {"q_proj", "v_proj"}), 4, 2.0},
      {"all_seven_rslora",
       {{"target_modules", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}},
        {"lora_alpha", 8},
        {"use_rslora", true}},
       modules(kAllLayers, {"proj"}), 4, 8.0 / 2.0},
      {"all_linear", {{"target_modules", "all-linear"}, {"lora_alpha", 16}, {"use_rslora", false}}, modules(kAllLayers, {"proj"}), 8, 2.0},
      // a string is re.fullmatch'ed against the whole name, and layers_to_transform does not apply to it
      {"regex", {{"target_modules", ".*\\.(k_proj|down_proj)"}, {"lora_alpha", 3}, {"layers_to_transform", {0}}},
       modules(kAllLayers, {"k_proj", "down_proj"}), 2, 1.5},
      // ... from the start of the name: a pattern that re.search would find matches nothing here
      {"regex_not_search", {{"target_modules", "layers\\.[12]\\..*\\.up_proj"}, {"lora_alpha", 2}}, {}, 2, 1.0},
      {"layers_to_transform",
       {{"target_modules", {"o_proj", "gate_proj"}}, {"lora_alpha", 4}, {"layers_to_transform", {1, 3}}, {"layers_pattern", "layers"}},
       modules({1, 3}, {"o_proj", "gate_proj"}), 4, 1.0},
      {"layers_to_transform_int", {{"target_modules", {"up_proj"}}, {"lora_alpha", 4}, {"layers_to_transform", 4}}, modules({4}, {"up_proj"}), 2, 2.0},
      // a full module name in the list matches exactly, past layers_to_transform (PEFT's order of checks)
      {"exact_name_and_exclude",
       {{"target_modules", {"model.layers.0.mlp.down_proj", "v_proj"}},
        {"exclude_modules", {"layers.2.self_attn.v_proj"}},
        {"layers_to_transform", {2, 3}},
        {"lora_alpha", 4}},
       {"model.layers.0.mlp.down_proj", "model.layers.3.self_attn.v_proj"}, 4, 1.0},
      {"fan_in_fan_out", {{"target_modules", {"q_proj"}}, {"lora_alpha", 4}, {"fan_in_fan_out", true}}, modules(kAllLayers, {"q_proj"}), 4, 1.0},
  };
}

void PrintTo(const Case& c, std::ostream* os) { *os << c.name << ": " << c.config.dump(); }

class MergeLora : public testing::TestWithParam<Case> {};

TEST_P(MergeLora, MergedWeightsAreWPlusScaledBA) {
  NEED_MODEL();
  const Case& c = GetParam();
  const std::string base_dir = shared_path(kModel);
  const auto base = gptq::TensorStore::open_dir(base_dir);
  const std::set<std::string>& mods = c.mods;
  Adapter a = make_adapter(base, c.config, mods, c.r, c.s);
  const fs::path root = scratch(c.name);
  write_adapter(a, root / "adapter");
  if (mods.empty()) {
    expect_cli_error(run_cli({"merge-lora", "--base", base_dir, "--adapter", (root / "adapter").string(), "-o",
                              (root / "out").string()}),
                     {"matches no module"});
    EXPECT_FALSE(fs::exists(root / "out"));
    return;
  }
  const auto rep = gptq::merge_lora(base_dir, (root / "adapter").string(), (root / "out").string(), {});
  EXPECT_EQ(sorted(rep.merged_modules), keys(a));
  EXPECT_EQ(rep.warnings.size(), std::string(c.name) == "fan_in_fan_out" ? 1u : 0u);
  expect_merged(base_dir, (root / "out").string(), a, gptq::DType::kF32);
  // A complete model folder: the base's config and tokenizer files, and the record of the merge.
  for (const char* f : {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                        "tokenizer.model", "special_tokens_map.json"})
    EXPECT_EQ(gptq::read_text_file((root / "out" / f).string()), gptq::read_text_file(base_dir + "/" + f)) << f;
  const json rec = json::parse(gptq::read_text_file((root / "out" / "lora_merge.json").string()));
  ASSERT_EQ(rec["adapters"].size(), 1u);
  EXPECT_EQ(rec["adapters"][0]["path"], fs::canonical(root / "adapter").string());
  EXPECT_EQ(rec["adapters"][0]["sha256"]["adapter_model.safetensors"].get<std::string>().size(), 64u);
  fs::remove_all(root);
}

INSTANTIATE_TEST_SUITE_P(Lora, MergeLora, testing::ValuesIn(cases()),
                         [](const testing::TestParamInfo<Case>& i) { return std::string(i.param.name); });

// rank_pattern / alpha_pattern: PEFT takes the first key, in the file's order, that matches
// "(.*\.)?(KEY)$"; here "q_proj" comes before the more specific key, which then never applies.
TEST(LoraMerge, RankAndAlphaPatternsFollowPeftsKeyOrder) {
  NEED_MODEL();
  const std::string base_dir = shared_path(kModel);
  const auto base = gptq::TensorStore::open_dir(base_dir);
  const fs::path root = scratch("patterns");
  Adapter a;
  // Written by hand so that the key order is the file's: "q_proj" first, then "layers.0.self_attn.q_proj".
  const std::string cfg = R"({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_rslora": false,
    "target_modules": ["q_proj", "v_proj"],
    "rank_pattern": {"q_proj": 2, "layers.0.self_attn.q_proj": 6, "model.layers.2.self_attn.v_proj": 8},
    "alpha_pattern": {"v_proj": 3}})";
  a.config = json::parse(cfg);
  for (int l : kAllLayers) {
    add_lora(a, base, mod(l, "self_attn.q_proj"), 2, 8.0 / 2);
    add_lora(a, base, mod(l, "self_attn.v_proj"), l == 2 ? 8 : 4, l == 2 ? 3.0 / 8 : 3.0 / 4);
  }
  write_adapter(a, root / "adapter");
  gptq::write_file_atomic((root / "adapter" / "adapter_config.json").string(), cfg);
  gptq::merge_lora(base_dir, (root / "adapter").string(), (root / "out").string(), {});
  expect_merged(base_dir, (root / "out").string(), a, gptq::DType::kF32);
  // rsLoRA with the same patterns: alpha / sqrt(r) per module.
  std::string rs = cfg;
  rs.replace(rs.find("\"use_rslora\": false"), 19, "\"use_rslora\": true ");
  gptq::write_file_atomic((root / "adapter" / "adapter_config.json").string(), rs);
  for (auto& [m, s] : a.scale) s = (m.find("v_proj") != std::string::npos ? 3.0 : 8.0) / std::sqrt(double(a.rank[m]));
  gptq::merge_lora(base_dir, (root / "adapter").string(), (root / "out2").string(), {});
  expect_merged(base_dir, (root / "out2").string(), a, gptq::DType::kF32);
  fs::remove_all(root);
}

// modules_to_save: tensors saved whole, under PEFT's name (<module>.weight) or the wrapper's
// (<module>.modules_to_save.default.weight); a 16-bit adapter; fp16 and bf16 outputs.
TEST(LoraMerge, ModulesToSaveAndOutputDtypes) {
  NEED_MODEL();
  const std::string base_dir = shared_path(kModel);
  const auto base = gptq::TensorStore::open_dir(base_dir);
  const fs::path root = scratch("save");
  Adapter a = make_adapter(base, {{"target_modules", {"v_proj", "down_proj"}}, {"lora_alpha", 8}, {"modules_to_save", {"embed_tokens", "model.norm"}}},
                           modules(kAllLayers, {"v_proj", "down_proj"}), 4, 2.0);
  a.dtype = gptq::DType::kBF16;
  const auto& emb = base.get("model.embed_tokens.weight");
  a.tensors["base_model.model.model.embed_tokens.weight"] = {emb.shape, random_values(size_t(emb.numel()), 7, 0.5f)};
  a.tensors["base_model.model.model.norm.modules_to_save.default.weight"] = {{128}, random_values(128, 8, 2.f)};
  write_adapter(a, root / "adapter");
  const std::map<std::string, std::string> saved = {
      {"model.embed_tokens.weight", "base_model.model.model.embed_tokens.weight"},
      {"model.norm.weight", "base_model.model.model.norm.modules_to_save.default.weight"}};
  for (auto [flag, dt] : {std::pair{"fp32", gptq::DType::kF32}, std::pair{"fp16", gptq::DType::kF16},
                          std::pair{"bf16", gptq::DType::kBF16}}) {
    SCOPED_TRACE(flag);
    const fs::path out = root / flag;
    gptq::MergeLoraOptions o;
    o.dtype = flag;
    const auto rep = gptq::merge_lora(base_dir, (root / "adapter").string(), out.string(), o);
    EXPECT_EQ(sorted(rep.saved_tensors), (std::vector<std::string>{"model.embed_tokens.weight", "model.norm.weight"}));
    expect_merged(base_dir, out.string(), a, dt, saved);
    const json cfg = json::parse(gptq::read_text_file((out / "config.json").string()));
    EXPECT_EQ(cfg["torch_dtype"], dt == gptq::DType::kF16 ? "float16" : dt == gptq::DType::kBF16 ? "bfloat16" : "float32");
    EXPECT_EQ(cfg["hidden_size"], 128);
  }
  fs::remove_all(root);
}

// A sharded base keeps its split: the same shard files holding the same tensors.
TEST(LoraMerge, ShardsAsTheBaseHadThem) {
  NEED_MODEL();
  const std::string base_dir = shared_path(kModel);
  const fs::path root = scratch("shards");
  const auto base = gptq::TensorStore::open_dir(base_dir);
  gptq::CheckpointFiles f;
  for (const auto& [name, t] : base.all()) f.tensors.push_back({name, t->dtype, t->shape, t->data, t->nbytes});
  f.max_shard_bytes = 1000000;
  f.source_dir = base_dir;
  f.copy_from_source = gptq::copied_model_files();
  f.text_files = {{"config.json", gptq::read_text_file(base_dir + "/config.json")}};
  gptq::write_checkpoint((root / "base").string(), f, false);
  const json index = json::parse(gptq::read_text_file((root / "base" / "model.safetensors.index.json").string()));
  std::set<std::string> shard_files;
  for (const auto& f : index["weight_map"]) shard_files.insert(f.get<std::string>());
  ASSERT_GT(shard_files.size(), 2u);
  Adapter a = make_adapter(base, {{"target_modules", {"gate_proj"}}, {"lora_alpha", 4}}, modules(kAllLayers, {"gate_proj"}), 2, 2.0);
  write_adapter(a, root / "adapter");
  gptq::merge_lora((root / "base").string(), (root / "adapter").string(), (root / "out").string(), {});
  const json out_index = json::parse(gptq::read_text_file((root / "out" / "model.safetensors.index.json").string()));
  EXPECT_EQ(out_index["weight_map"], index["weight_map"]);
  EXPECT_FALSE(fs::exists(root / "out" / "model.safetensors"));
  expect_merged((root / "base").string(), (root / "out").string(), a, gptq::DType::kF32);
  fs::remove_all(root);
}

// ---- the merged model against the base with the adapter applied on the fly

// A linear that computes y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ, the LoRA layer PEFT runs before merging.
class LoraLinear final : public gptq::Weight {
 public:
  LoraLinear(std::unique_ptr<gptq::Weight> base, std::vector<double> A, std::vector<double> B, int64_t r, double s)
      : Weight(base->in_features(), base->out_features()), base_(std::move(base)), A_(std::move(A)), B_(std::move(B)), r_(r), s_(s) {}
  std::string kind() const override { return base_->kind() + " + LoRA"; }
  size_t bytes() const override { return base_->bytes(); }
  std::vector<float> dense() const override { return base_->dense(); }
  const gptq::Weight& base() const { return *base_; }
  // y[t, :] += s · B (A x[t, :]), in double
  void add_lora(const gptq::Tensor& x, const gptq::Tensor& y) const {
    std::vector<double> ax(static_cast<size_t>(r_));
    for (int64_t t = 0; t < x.rows; ++t) {
      const float* xt = x.f32() + t * x.stride;
      for (int64_t k = 0; k < r_; ++k) {
        double acc = 0;
        for (int64_t i = 0; i < in_; ++i) acc += A_[size_t(k * in_ + i)] * xt[i];
        ax[size_t(k)] = acc;
      }
      float* yt = y.f32() + t * y.stride;
      for (int64_t o = 0; o < out_; ++o) {
        double acc = 0;
        for (int64_t k = 0; k < r_; ++k) acc += B_[size_t(o * r_ + k)] * ax[size_t(k)];
        yt[o] = float(yt[o] + s_ * acc);
      }
    }
  }

 private:
  std::unique_ptr<gptq::Weight> base_;
  std::vector<double> A_, B_;
  int64_t r_;
  double s_;
};

// The CPU backend, except that a LoraLinear runs as base linear + its LoRA path.
class LoraBackend final : public gptq::Backend {
 public:
  LoraBackend() : cpu_(gptq::make_cpu_backend({})) {}
  gptq::Device device() const override { return cpu_->device(); }
  std::string name() const override { return "cpu + on-the-fly LoRA"; }
  int threads() const override { return cpu_->threads(); }
  uint64_t available_bytes() const override { return cpu_->available_bytes(); }
  std::shared_ptr<void> alloc(size_t b) override { return cpu_->alloc(b); }
  void upload(void* d, const void* s, size_t b) override { cpu_->upload(d, s, b); }
  void to_host(const gptq::Tensor& s, float* d) override { cpu_->to_host(s, d); }
  void from_host(const float* s, const gptq::Tensor& d) override { cpu_->from_host(s, d); }
  void fill_zero(const gptq::Tensor& t) override { cpu_->fill_zero(t); }
  void copy(const gptq::Tensor& s, const gptq::Tensor& d) override { cpu_->copy(s, d); }
  std::unique_ptr<gptq::Weight> dense_weight(const gptq::DenseWeightDesc& d) override { return cpu_->dense_weight(d); }
  std::unique_ptr<gptq::Weight> gptq_weight(const gptq::quant::QuantMatrix& m, const float* b) override {
    return cpu_->gptq_weight(m, b);
  }
  void embed(const gptq::Weight& t, const gptq::BatchPlan& p, const gptq::Tensor& y) override { cpu_->embed(t, p, y); }
  void linear(const gptq::Weight& w, const gptq::Tensor& x, const gptq::Tensor& y) override {
    if (const auto* l = dynamic_cast<const LoraLinear*>(&w)) {
      cpu_->linear(l->base(), x, y);
      l->add_lora(x, y);
      ++lora_calls;
    } else {
      cpu_->linear(w, x, y);
    }
  }
  void rms_norm(const gptq::Tensor& x, const gptq::Tensor& w, float eps, const gptq::Tensor& y) override {
    cpu_->rms_norm(x, w, eps, y);
  }
  void rope_angles(const gptq::Tensor& f, const gptq::BatchPlan& p, const gptq::Tensor& cs) override {
    cpu_->rope_angles(f, p, cs);
  }
  void rope(const gptq::Tensor& x, int64_t n, int64_t hd, const gptq::Tensor& cs) override { cpu_->rope(x, n, hd, cs); }
  void attention(int64_t l, const gptq::Tensor& q, const gptq::Tensor& k, const gptq::Tensor& v, const gptq::KVView& kv,
                 const gptq::BatchPlan& p, int64_t n, const gptq::Tensor& out) override {
    cpu_->attention(l, q, k, v, kv, p, n, out);
  }
  void silu_mul(const gptq::Tensor& g, const gptq::Tensor& u) override { cpu_->silu_mul(g, u); }
  void add(const gptq::Tensor& x, const gptq::Tensor& y) override { cpu_->add(x, y); }
  void gather_rows(const gptq::Tensor& x, const gptq::BatchPlan& p, const gptq::Tensor& y) override {
    cpu_->gather_rows(x, p, y);
  }
  std::unique_ptr<gptq::HessianAccumulator> hessian(int64_t K) override { return cpu_->hessian(K); }
  int64_t lora_calls = 0;

 private:
  std::unique_ptr<gptq::Backend> cpu_;
};

std::vector<float> logits_of(gptq::Model& m, const std::vector<int32_t>& ids) {
  auto cache = m.new_cache();
  std::vector<float> logits;
  m.forward(*cache, ids.data(), int64_t(ids.size()), true, logits);
  return logits;
}

TEST(LoraMerge, MergedLogitsEqualTheBaseWithTheAdapterOnTheFly) {
  NEED_MODEL();
  const std::string base_dir = shared_path(kModel);
  const auto base = gptq::TensorStore::open_dir(base_dir);
  const fs::path root = scratch("logits");
  Adapter a = make_adapter(base, {{"target_modules", "all-linear"}, {"lora_alpha", 8}, {"use_rslora", true}},
                           modules(kAllLayers, {"proj"}), 4, 8.0 / 2);
  write_adapter(a, root / "adapter");
  gptq::merge_lora(base_dir, (root / "adapter").string(), (root / "out").string(), {});

  std::vector<int32_t> ids;
  for (int i = 0; i < 48; ++i) ids.push_back(int32_t((i * 37 + 5) % 361));
  auto merged = gptq::Model::load((root / "out").string());
  auto plain = gptq::Model::load(base_dir);
  gptq::LoadOptions lo;
  auto be = std::make_shared<LoraBackend>();
  lo.backend = be;
  auto fly = gptq::Model::load(base_dir, lo);
  for (int l : kAllLayers)
    for (gptq::LinearSlot s : gptq::kAllLinearSlots) {
      const std::string m = mod(l, gptq::linear_slot_name(s));
      const auto& w = base.get(m + ".weight");
      std::vector<double> A, B;
      for (const float v : a.tensors.at("base_model.model." + m + ".lora_A.weight").second) A.push_back(v);
      for (const float v : a.tensors.at("base_model.model." + m + ".lora_B.weight").second) B.push_back(v);
      fly->set_linear(l, s, std::make_unique<LoraLinear>(be->dense_weight({w.data, w.dtype, w.dim(0), w.dim(1), nullptr, false}),
                                                         std::move(A), std::move(B), a.rank.at(m), a.scale.at(m)));
    }
  const auto lm = logits_of(*merged, ids), lf = logits_of(*fly, ids), lp = logits_of(*plain, ids);
  EXPECT_EQ(be->lora_calls, 35);
  ASSERT_EQ(lm.size(), lf.size());
  double max_abs = 0, max_diff = 0, moved = 0;
  for (size_t i = 0; i < lm.size(); ++i) {
    max_abs = std::max(max_abs, double(std::fabs(lf[i])));
    max_diff = std::max(max_diff, double(std::fabs(lm[i] - lf[i])));
    moved = std::max(moved, double(std::fabs(lp[i] - lf[i])));
  }
  EXPECT_LE(max_diff, 1e-4 * max_abs) << "max |logit| " << max_abs;
  EXPECT_GT(moved, 1000 * max_diff + 1e-2 * max_abs) << "the adapter barely changes the logits: a weak test";
  fs::remove_all(root);
}

// ---- quantize --lora

std::map<std::string, std::string> files_of(const fs::path& dir) {
  std::map<std::string, std::string> m;
  for (const auto& e : fs::directory_iterator(dir)) m[e.path().filename().string()] = gptq_test::slurp(e.path().string());
  return m;
}

TEST(LoraQuantize, SameBytesAsMergeLoraThenQuantize) {
  NEED_MODEL();
  const std::string base_dir = shared_path(kModel);
  const auto base = gptq::TensorStore::open_dir(base_dir);
  const fs::path root = scratch("quantize");
  Adapter a = make_adapter(base, {{"target_modules", {"q_proj", "o_proj", "up_proj"}}, {"lora_alpha", 8}, {"modules_to_save", {"embed_tokens"}}},
                           modules(kAllLayers, {"q_proj", "o_proj", "up_proj"}), 4, 2.0);
  const auto& emb = base.get("model.embed_tokens.weight");
  a.tensors["base_model.model.model.embed_tokens.weight"] = {emb.shape, random_values(size_t(emb.numel()), 9, 0.3f)};
  write_adapter(a, root / "adapter");
  const std::vector<std::string> q = {"--calibration", shared_path(kCalib), "--seqlen", "128", "--nsamples", "8", "-q"};
  auto with = [](std::vector<std::string> a, const std::vector<std::string>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  };
  const auto r1 = run_cli(with({"quantize", "-m", base_dir, "--lora", (root / "adapter").string(), "-o", (root / "direct").string()}, q));
  ASSERT_EQ(r1.rc, 0) << r1.err;
  const auto r2 = run_cli({"merge-lora", "--base", base_dir, "--adapter", (root / "adapter").string(), "-o", (root / "merged").string()});
  ASSERT_EQ(r2.rc, 0) << r2.err;
  const auto r3 = run_cli(with({"quantize", "-m", (root / "merged").string(), "-o", (root / "two_step").string()}, q));
  ASSERT_EQ(r3.rc, 0) << r3.err;
  const auto direct = files_of(root / "direct"), two = files_of(root / "two_step");
  EXPECT_EQ(direct.size(), two.size());
  for (const auto& [name, bytes] : direct) EXPECT_TRUE(two.count(name) && two.at(name) == bytes) << name << " differs";
  // The checkpoint records the adapter (both ways), and differs from the base's own quantization.
  const json meta = json::parse(direct.at("quantize_config.json"))["meta"];
  ASSERT_EQ(meta["lora_adapters"].size(), 1u);
  EXPECT_EQ(meta["lora_adapters"][0]["path"], fs::canonical(root / "adapter").string());
  EXPECT_EQ(meta["lora_adapters"][0]["sha256"]["adapter_config.json"].get<std::string>().size(), 64u);
  const auto r4 = run_cli(with({"quantize", "-m", base_dir, "-o", (root / "plain").string()}, q));
  ASSERT_EQ(r4.rc, 0) << r4.err;
  EXPECT_NE(files_of(root / "plain").at("model.safetensors"), direct.at("model.safetensors"));
  EXPECT_FALSE(json::parse(files_of(root / "plain").at("quantize_config.json"))["meta"].contains("lora_adapters"));
  fs::remove_all(root);
}

// ---- refusals: one line, exit 2, nothing written

struct Refusal {
  const char* name;
  std::function<void(const fs::path& adapter)> spoil;  // applied to a valid adapter folder
  std::vector<std::string> needles;
};

TEST(LoraRefusals, BadAdaptersAreRefusedAndNothingIsWritten) {
  NEED_MODEL();
  const std::string base_dir = shared_path(kModel);
  const auto base = gptq::TensorStore::open_dir(base_dir);
  const fs::path root = scratch("refuse");
  const Adapter good = make_adapter(base, {{"target_modules", {"q_proj", "v_proj"}}, {"lora_alpha", 8}},
                                    modules(kAllLayers, {"q_proj", "v_proj"}), 4, 2.0);
  auto set_config = [&](const fs::path& dir, const std::function<void(json&)>& f) {
    json c = good.config;
    f(c);
    gptq::write_file_atomic((dir / "adapter_config.json").string(), c.dump());
  };
  auto with_tensors = [&](const fs::path& dir, const std::function<void(Adapter&)>& f) {
    Adapter a = good;
    f(a);
    write_adapter(a, dir);
  };
  const std::string qa = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
  const std::vector<Refusal> refusals = {
      {"pickle",
       [](const fs::path& d) {
         fs::remove(d / "adapter_model.safetensors");
         gptq::write_file_atomic((d / "adapter_model.bin").string(), "PK\x03\x04 pickle");
       },
       {"adapter_model.bin", "pickle", "safe_serialization=True"}},
      {"no_weights", [](const fs::path& d) { fs::remove(d / "adapter_model.safetensors"); }, {"no adapter_model.safetensors"}},
      {"no_config", [](const fs::path& d) { fs::remove(d / "adapter_config.json"); }, {"no adapter_config.json"}},
      {"dora", [&](const fs::path& d) { set_config(d, [](json& c) { c["use_dora"] = true; }); }, {"use_dora", "DoRA"}},
      {"bias", [&](const fs::path& d) { set_config(d, [](json& c) { c["bias"] = "all"; }); }, {"bias \"all\""}},
      {"lora_bias", [&](const fs::path& d) { set_config(d, [](json& c) { c["lora_bias"] = true; }); }, {"lora_bias"}},
      {"pissa", [&](const fs::path& d) { set_config(d, [](json& c) { c["init_lora_weights"] = "pissa_niter_4"; }); },
       {"init_lora_weights", "residual model"}},
      {"unknown_field", [&](const fs::path& d) { set_config(d, [](json& c) { c["layer_replication"] = {{0, 2}}; }); },
       {"layer_replication", "not supported"}},
      {"not_lora", [&](const fs::path& d) { set_config(d, [](json& c) { c["peft_type"] = "LOHA"; }); }, {"LOHA"}},
      {"bad_regex", [&](const fs::path& d) { set_config(d, [](json& c) { c["target_modules"] = "(q_proj"; }); },
       {"target_modules", "does not compile"}},
      {"bad_rank", [&](const fs::path& d) { set_config(d, [](json& c) { c["r"] = 2.5; }); }, {"\"r\"", "integer"}},
      {"nothing_matches", [&](const fs::path& d) { set_config(d, [](json& c) { c["target_modules"] = {"qkv_proj"}; }); },
       {"matches no module"}},
      {"not_a_linear", [&](const fs::path& d) { set_config(d, [](json& c) { c["target_modules"] = {"q_proj", "input_layernorm"}; }); },
       {"input_layernorm", "not a linear layer"}},
      {"tied_lm_head", [&](const fs::path& d) { set_config(d, [](json& c) { c["target_modules"] = {"q_proj", "v_proj", "lm_head"}; }); },
       {"lm_head", "tie_word_embeddings"}},
      {"rank_disagrees", [&](const fs::path& d) { set_config(d, [](json& c) { c["r"] = 8; }); }, {"do not fit", "r = 8"}},
      {"shape", [&](const fs::path& d) { with_tensors(d, [&](Adapter& a) { a.tensors[qa] = {{4, 64}, std::vector<float>(256, 0.1f)}; }); },
       {"do not fit the base weight [128, 128]", "another model"}},
      {"missing_b", [&](const fs::path& d) {
         with_tensors(d, [](Adapter& a) { a.tensors.erase("base_model.model.model.layers.3.self_attn.v_proj.lora_B.weight"); });
       },
       {"no lora_B weight for model.layers.3.self_attn.v_proj"}},
      {"untargeted_tensor", [&](const fs::path& d) {
         with_tensors(d, [&](Adapter& a) { add_lora(a, base, "model.layers.1.mlp.up_proj", 4, 2.0); });
       },
       {"model.layers.1.mlp.up_proj", "does not select"}},
      {"another_model", [&](const fs::path& d) {
         with_tensors(d, [](Adapter& a) {
           a.tensors["base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight"] = {{4, 128}, std::vector<float>(512, 0.1f)};
         });
       },
       {"model.layers.7.self_attn.q_proj", "does not have", "another model"}},
      {"dora_tensor", [&](const fs::path& d) {
         with_tensors(d, [](Adapter& a) {
           a.tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"] = {{128}, std::vector<float>(128, 1.f)};
         });
       },
       {"DoRA"}},
      {"nan", [&](const fs::path& d) { with_tensors(d, [&](Adapter& a) { a.tensors[qa].second[5] = NAN; }); }, {"nan"}},
      {"missing_save", [&](const fs::path& d) { set_config(d, [](json& c) { c["modules_to_save"] = {"embed_tokens"}; }); },
       {"modules_to_save", "embed_tokens"}},
  };
  for (const auto& r : refusals) {
    SCOPED_TRACE(r.name);
    const fs::path dir = root / r.name;
    write_adapter(good, dir / "adapter");
    r.spoil(dir / "adapter");
    expect_cli_error(run_cli({"merge-lora", "--base", base_dir, "--adapter", (dir / "adapter").string(), "-o", (dir / "out").string()}),
                     r.needles);
    // quantize --lora refuses the same adapter, before any work
    expect_cli_error(run_cli({"quantize", "-m", base_dir, "--lora", (dir / "adapter").string(), "-o", (dir / "q").string(),
                              "--method", "rtn", "-q"}),
                     r.needles);
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
    EXPECT_EQ(names, std::vector<std::string>{"adapter"});
  }
  expect_cli_error(run_cli({"merge-lora", "--base", base_dir, "--adapter", (root / "nowhere").string(), "-o", (root / "out").string()}),
                   {"nowhere", "no such folder"});
  fs::remove_all(root);
}

TEST(LoraRefusals, QuantizedBaseOutputFoldersAndForce) {
  NEED_MODEL();
  const std::string base_dir = shared_path(kModel);
  const auto base = gptq::TensorStore::open_dir(base_dir);
  const fs::path root = scratch("outdir");
  const Adapter a = make_adapter(base, {{"target_modules", {"v_proj"}}, {"lora_alpha", 8}}, modules(kAllLayers, {"v_proj"}), 4, 2.0);
  const fs::path ad = root / "adapter";
  write_adapter(a, ad);
  auto merge = [&](const std::string& b, const fs::path& out, bool force = false) {
    std::vector<std::string> args = {"merge-lora", "--base", b, "--adapter", ad.string(), "-o", out.string()};
    if (force) args.push_back("--force");
    return run_cli(args);
  };
  // A GPTQ base: refused, saying why and what to do instead.
  ASSERT_EQ(run_cli({"quantize", "-m", base_dir, "-o", (root / "q4").string(), "--method", "rtn", "-q"}).rc, 0);
  expect_cli_error(merge((root / "q4").string(), root / "m"), {"GPTQ checkpoint", "4-bit grid", "merge into the original"});
  EXPECT_FALSE(fs::exists(root / "m"));

  // -o is, holds or lies inside the adapter (or the base).
  fs::copy(base_dir, root / "base");
  fs::permissions(root / "base", fs::perms::owner_write, fs::perm_options::add);
  for (const auto& e : fs::directory_iterator(root / "base")) fs::permissions(e.path(), fs::perms::owner_write, fs::perm_options::add);
  const std::string b = (root / "base").string();
  expect_cli_error(merge(b, ad, true), {"is the input adapter folder (--adapter "});
  expect_cli_error(merge(b, ad / "merged"), {"lies inside the input adapter folder"});
  expect_cli_error(merge(b, root, true), {"contains the input"});
  expect_cli_error(merge(b, root / "base", true), {"is the input model folder (--base "});
  expect_cli_error(merge(b, root / "base" / "m"), {"lies inside the input model folder"});
  expect_cli_error(run_cli({"quantize", "-m", b, "--lora", ad.string(), "-o", (ad / "q").string(), "--method", "rtn", "-q"}),
                   {"lies inside the input adapter folder (--lora "});
  EXPECT_FALSE(fs::exists(ad / "merged"));
  EXPECT_FALSE(fs::exists(ad / "q"));
  EXPECT_FALSE(fs::exists(root / "base" / "m"));

  // --force: an earlier merge output is replaced (same bytes), anything else refused.
  ASSERT_EQ(merge(b, root / "m").rc, 0);
  const auto first = files_of(root / "m");
  expect_cli_error(merge(b, root / "m"), {"exists", "--force"});
  ASSERT_EQ(merge(b, root / "m", true).rc, 0);
  EXPECT_EQ(files_of(root / "m"), first);
  // quantize --force may replace a merge output too, and merge-lora a quantize output.
  ASSERT_EQ(run_cli({"quantize", "-m", b, "-o", (root / "m").string(), "--method", "rtn", "-q", "--force"}).rc, 0);
  ASSERT_EQ(merge(b, root / "m", true).rc, 0);
  EXPECT_EQ(files_of(root / "m"), first);
  gptq::write_file_atomic((root / "m" / "notes.txt").string(), "mine");
  expect_cli_error(merge(b, root / "m", true), {"holds notes.txt"});
  fs::remove(root / "m" / "notes.txt");
  gptq::write_file_atomic((root / "m" / "lora_merge.json").string(), R"({"meta": {"merger": ["someone-else"]}})");
  expect_cli_error(merge(b, root / "m", true), {"is not an output of gptq quantize or merge-lora"});
  fs::remove_all(root);
}

}  // namespace
