// Safetensors and config.json: good files load, every kind of bad file gives a gptq::Error whose
// one-line message names the file and the problem.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <thread>
#include <vector>

#include "core/fs.h"
#include "core/mapped_file.h"
#include "gptq/error.h"
#include "gptq/model.h"
#include "gptq/model_config.h"
#include "gptq/safetensors.h"
#include "shared_paths.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string temp_dir(const std::string& name) {
  const fs::path p = fs::path(testing::TempDir()) / ("gptq_io_" + name);
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

// A raw safetensors file from a header JSON and a data section.
std::string raw_safetensors(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  return out + header + data;
}

// Expects fn to throw gptq::Error whose message contains every needle and has no newline.
template <typename F>
void expect_error(F fn, std::vector<std::string> needles) {
  try {
    fn();
    FAIL() << "no error thrown";
  } catch (const gptq::Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
  }
}

TEST(Safetensors, WriteThenReadRoundTrip) {
  const std::string dir = temp_dir("roundtrip");
  const std::vector<float> a = {1, 2, 3, 4, 5, 6};
  const std::vector<uint16_t> b = {0x3c00, 0x4000};
  gptq::write_safetensors(dir + "/t.safetensors",
                          {{"b", gptq::DType::kF16, {2}, b.data(), 4}, {"a", gptq::DType::kF32, {2, 3}, a.data(), 24}});
  gptq::SafetensorsFile f(dir + "/t.safetensors");
  ASSERT_EQ(f.tensors().size(), 2u);
  const auto& ta = f.tensors().at("a");
  EXPECT_EQ(ta.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(gptq::load_float(ta, 5), 6.f);
  EXPECT_EQ(gptq::load_float(f.tensors().at("b"), 1), 2.f);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  // Deterministic bytes: writing again gives the same file.
  gptq::write_safetensors(dir + "/u.safetensors",
                          {{"a", gptq::DType::kF32, {2, 3}, a.data(), 24}, {"b", gptq::DType::kF16, {2}, b.data(), 4}});
  EXPECT_EQ(gptq::read_text_file(dir + "/t.safetensors"), gptq::read_text_file(dir + "/u.safetensors"));
}

TEST(Safetensors, BadFilesAreRejectedWithTheFileNamed) {
  const std::string dir = temp_dir("bad");
  const std::string p = dir + "/m.safetensors";
  const std::string good_header = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  write_bytes(p, "abc");
  expect_error([&] { gptq::SafetensorsFile f(p); }, {p, "truncated"});
  write_bytes(p, raw_safetensors(good_header, "").substr(0, 20));
  expect_error([&] { gptq::SafetensorsFile f(p); }, {p, "past the end"});
  write_bytes(p, raw_safetensors("{not json", std::string(8, 0)));
  expect_error([&] { gptq::SafetensorsFile f(p); }, {p, "malformed"});
  write_bytes(p, raw_safetensors(R"({"w":{"dtype":"F7","shape":[2],"data_offsets":[0,8]}})", std::string(8, 0)));
  expect_error([&] { gptq::SafetensorsFile f(p); }, {p, "unknown dtype", "F7"});
  write_bytes(p, raw_safetensors(good_header, std::string(4, 0)));
  expect_error([&] { gptq::SafetensorsFile f(p); }, {p, "w", "out of range"});
  write_bytes(p, raw_safetensors(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(8, 0)));
  expect_error([&] { gptq::SafetensorsFile f(p); }, {p, "w", "[3]", "needs 12 bytes"});
  write_bytes(p, raw_safetensors(
                     R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                     std::string(12, 0)));
  expect_error([&] { gptq::SafetensorsFile f(p); }, {p, "overlap"});
  write_bytes(p, raw_safetensors(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", std::string(8, 0)));
  expect_error([&] { gptq::SafetensorsFile f(p); }, {p, "shape"});
  expect_error([&] { gptq::SafetensorsFile f(dir + "/missing.safetensors"); }, {"missing.safetensors", "file not found"});
}

TEST(Safetensors, ShardedIndexNamesTheShard) {
  const std::string dir = temp_dir("sharded");
  const std::vector<float> a = {1, 2};
  gptq::write_safetensors(dir + "/model-00001-of-00002.safetensors", {{"a", gptq::DType::kF32, {2}, a.data(), 8}});
  gptq::write_safetensors(dir + "/model-00002-of-00002.safetensors", {{"b", gptq::DType::kF32, {2}, a.data(), 8}});
  json idx = {{"metadata", {{"total_size", 16}}},
              {"weight_map", {{"a", "model-00001-of-00002.safetensors"}, {"b", "model-00002-of-00002.safetensors"}}}};
  write_bytes(dir + "/model.safetensors.index.json", idx.dump());
  const auto store = gptq::TensorStore::open_dir(dir);
  EXPECT_EQ(store.files().size(), 2u);
  EXPECT_EQ(gptq::load_float(store.get("b"), 1), 2.f);
  expect_error([&] { store.get("c"); }, {"missing tensor c"});
  idx["weight_map"]["c"] = "model-00002-of-00002.safetensors";
  write_bytes(dir + "/model.safetensors.index.json", idx.dump());
  expect_error([&] { gptq::TensorStore::open_dir(dir); }, {"model-00002-of-00002.safetensors", "missing tensor c"});
}

const char* kLlamaConfig = R"({
  "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
  "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100,
  "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 512,
  "bos_token_id": 1, "eos_token_id": [2, 3], "tie_word_embeddings": false,
  "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192}})";

// prefetch_pages reads a mapping's pages in ahead of use (what a streaming quantize asks for the
// next layer): a file dropped from the page cache is resident again without being touched.
TEST(MappedFile, PrefetchReadsThePagesIn) {
  const std::string path = temp_dir("prefetch") + "/blob";
  const size_t n = size_t(64) << 20;  // more than one read-ahead window (8 MiB)
  {
    std::ofstream f(path, std::ios::binary);
    const std::string chunk(1 << 20, 'x');
    for (size_t i = 0; i < n; i += chunk.size()) f.write(chunk.data(), std::streamsize(chunk.size()));
  }
  const int fd = ::open(path.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  ::fsync(fd);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
  gptq::MappedFile m(path);
  const size_t page = size_t(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> in(n / page);
  auto resident = [&] {
    EXPECT_EQ(::mincore(const_cast<uint8_t*>(m.data()), n, in.data()), 0);
    size_t r = 0;
    for (unsigned char c : in) r += c & 1;
    return double(r) / double(in.size());
  };
  if (resident() > 0.5) GTEST_SKIP() << "this filesystem keeps the file's pages cached: nothing to prefetch";
  gptq::prefetch_pages(m.data() + 123, n - 123);
  double r = 0;
  for (int i = 0; i < 200 && (r = resident()) < 0.99; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_GE(r, 0.99);
  gptq::prefetch_pages(nullptr, 0);  // nothing to do
  std::vector<char> heap(1 << 16);
  gptq::prefetch_pages(heap.data(), heap.size());  // not a file mapping: a hint, ignored
}

TEST(ModelConfig, ParsesLlamaFields) {
  const auto c = gptq::ModelConfig::from_json_text(kLlamaConfig, "config.json");
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.type, "llama3");
  EXPECT_EQ(c.rope_scaling.factor, 8.0);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int32_t>{2, 3}));
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.quant.has_value());
}

TEST(ModelConfig, RopeParametersTransformers5AndQwen2Bias) {
  json j = json::parse(kLlamaConfig);
  j.erase("rope_theta");
  j.erase("rope_scaling");
  j["rope_parameters"] = {{"rope_theta", 1e6}, {"rope_type", "linear"}, {"factor", 2.0}};
  j["architectures"] = {"Qwen2ForCausalLM"};
  j["head_dim"] = 32;
  j["quantization_config"] = {{"quant_method", "gptq"}, {"bits", 3}, {"group_size", -1}, {"desc_act", true},
                              {"sym", false}, {"checkpoint_format", "gptq_v2"}};
  const auto c = gptq::ModelConfig::from_json_text(j.dump(), "config.json");
  EXPECT_EQ(c.rope_theta, 1e6);
  EXPECT_EQ(c.rope_scaling.type, "linear");
  EXPECT_EQ(c.rope_scaling.factor, 2.0);
  EXPECT_TRUE(c.attention_bias);
  EXPECT_EQ(c.head_dim, 32);
  ASSERT_TRUE(c.quant.has_value());
  EXPECT_EQ(c.quant->bits, 3);
  EXPECT_EQ(c.quant->group_size, -1);
  EXPECT_TRUE(c.quant->desc_act);
  EXPECT_FALSE(c.quant->sym);
  EXPECT_EQ(c.quant->checkpoint_format, "gptq_v2");
}

TEST(ModelConfig, BadConfigsAreRejected) {
  expect_error([] { gptq::ModelConfig::from_json_text("{oops", "x/config.json"); }, {"x/config.json", "malformed JSON"});
  json j = json::parse(kLlamaConfig);
  j["architectures"] = {"GPT2LMHeadModel"};
  expect_error([&] { gptq::ModelConfig::from_json_text(j.dump(), "c.json"); },
               {"c.json", "unsupported architecture GPT2LMHeadModel"});
  j = json::parse(kLlamaConfig);
  j.erase("hidden_size");
  expect_error([&] { gptq::ModelConfig::from_json_text(j.dump(), "c.json"); }, {"missing field \"hidden_size\""});
  j = json::parse(kLlamaConfig);
  j["num_key_value_heads"] = 3;
  expect_error([&] { gptq::ModelConfig::from_json_text(j.dump(), "c.json"); }, {"not a multiple"});
  j = json::parse(kLlamaConfig);
  j["vocab_size"] = "many";
  expect_error([&] { gptq::ModelConfig::from_json_text(j.dump(), "c.json"); }, {"vocab_size"});
  expect_error([] { gptq::ModelConfig::from_dir("/nonexistent/model"); }, {"/nonexistent/model", "no such model folder"});
}

// A copy of a shared model folder whose files a test then damages.
std::string copy_model(const std::string& name, const std::string& tag) {
  const std::string src = shared_path("models/" + name);
  const std::string dst = temp_dir(tag);
  for (const auto& e : fs::directory_iterator(src)) fs::copy_file(e.path(), fs::path(dst) / e.path().filename());
  for (const auto& e : fs::directory_iterator(dst)) fs::permissions(e.path(), fs::perms::owner_write, fs::perm_options::add);
  return dst;
}

TEST(ModelLoad, DamagedModelFoldersGiveClearErrors) {
  if (!gptq_test::is_dir(shared_path("models/babyllama-105"))) GTEST_SKIP() << "../shared/models not found: skipped";
  std::string dir = copy_model("babyllama-105", "damaged_cfg");
  json cfg = json::parse(gptq::read_text_file(dir + "/config.json"));
  cfg["intermediate_size"] = 353;  // disagrees with the tensors
  write_bytes(dir + "/config.json", cfg.dump());
  expect_error([&] { gptq::Model::load(dir); }, {"model.safetensors", "mlp", "[352, 128]", "[353, 128]"});

  dir = copy_model("babyllama-105", "damaged_trunc");
  const std::string st = gptq::read_text_file(dir + "/model.safetensors");
  write_bytes(dir + "/model.safetensors", st.substr(0, st.size() / 2));
  expect_error([&] { gptq::Model::load(dir); }, {"model.safetensors", "out of range"});

  // A missing tensor: rewrite the file without one layer norm.
  dir = copy_model("babyllama-105", "damaged_missing");
  {
    gptq::SafetensorsFile f(shared_path("models/babyllama-105/model.safetensors"));
    std::vector<gptq::TensorToWrite> ts;
    for (const auto& [name, t] : f.tensors())
      if (name != "model.layers.1.input_layernorm.weight") ts.push_back({name, t.dtype, t.shape, t.data, t.nbytes});
    gptq::write_safetensors(dir + "/model.safetensors", ts);
  }
  expect_error([&] { gptq::Model::load(dir); }, {"missing tensor model.layers.1.input_layernorm.weight"});

  dir = copy_model("babyllama-105", "damaged_arch");
  cfg = json::parse(gptq::read_text_file(dir + "/config.json"));
  cfg["architectures"] = {"MambaForCausalLM"};
  write_bytes(dir + "/config.json", cfg.dump());
  expect_error([&] { gptq::Model::load(dir); }, {"config.json", "unsupported architecture MambaForCausalLM"});

  fs::remove(dir + "/model.safetensors");
  cfg["architectures"] = {"LlamaForCausalLM"};
  write_bytes(dir + "/config.json", cfg.dump());
  expect_error([&] { gptq::Model::load(dir); }, {"no model.safetensors"});
}

TEST(ModelLoad, Bf16AndF32WeightsGiveTheSameLogits) {
  if (!gptq_test::is_dir(shared_path("models/babyllama-361"))) GTEST_SKIP() << "../shared/models not found: skipped";
  // babyllama is F32 on disk; write a BF16 copy and check the logits agree to bf16 precision.
  const std::string dir = copy_model("babyllama-361", "bf16");
  gptq::SafetensorsFile f(shared_path("models/babyllama-361/model.safetensors"));
  std::vector<std::vector<uint16_t>> keep;
  std::vector<gptq::TensorToWrite> ts;
  for (const auto& [name, t] : f.tensors()) {
    auto& v = keep.emplace_back(static_cast<size_t>(t.numel()));
    for (int64_t i = 0; i < t.numel(); ++i) {
      const float x = gptq::load_float(t, i);
      uint32_t bits;
      std::memcpy(&bits, &x, 4);
      v[static_cast<size_t>(i)] = uint16_t((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);
    }
    ts.push_back({name, gptq::DType::kBF16, t.shape, v.data(), v.size() * 2});
  }
  gptq::write_safetensors(dir + "/model.safetensors", ts);
  auto m32 = gptq::Model::load(shared_path("models/babyllama-361"));
  auto m16 = gptq::Model::load(dir);
  const std::vector<int32_t> ids = {1, 259, 289, 260, 270, 270, 263};
  std::vector<float> a, b;
  auto c1 = m32->new_cache(), c2 = m16->new_cache();
  m32->forward(*c1, ids.data(), int64_t(ids.size()), false, a);
  m16->forward(*c2, ids.data(), int64_t(ids.size()), false, b);
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += a[i] * a[i];
  }
  EXPECT_LT(std::sqrt(num / den), 0.05);
  // Really a different weight dtype: bf16 rounding moves the logits by ~1e-4 relative, not 0.
  EXPECT_GT(std::sqrt(num / den), 1e-6);
  EXPECT_EQ(m16->weight_dtype_summary(), "BF16");
}

}  // namespace
