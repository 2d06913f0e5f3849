// Safetensors header parser and the shard index. Input: a .safetensors file image (parsed from
// memory), or, when it starts with '{', a model.safetensors.index.json opened with
// TensorStore::open_dir next to two valid shards. GPTQ_FUZZ_WRITE_SEEDS=DIR writes the headers of
// the shared models (GPTQ_SHARED) with every dimension cut to at most 2, a few edge cases and
// index files as seeds.
#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "core/fs.h"
#include "fuzz_common.h"
#include "gptq/error.h"
#include "gptq/safetensors.h"
#include "io/safetensors_parse.h"

namespace {

std::string index_dir;

void check_views(const std::map<std::string, gptq::TensorView>& ts, const uint8_t* data, size_t size) {
  for (const auto& [name, t] : ts) {
    const auto* p = static_cast<const uint8_t*>(t.data);
    if (t.nbytes > 0 && (p < data || p + t.nbytes > data + size || size_t(p + t.nbytes - data) > size))
      gptq_fuzz::violated("tensor view outside the file", name);
    // Exact product (saturating far above any file size): a wrapped element count must not pass.
    unsigned __int128 bytes = gptq::dtype_size(t.dtype);
    for (int64_t d : t.shape) {
      if (d < 0) gptq_fuzz::violated("negative dimension", name);
      bytes = bytes > (unsigned __int128)1 << 64 ? bytes : bytes * uint64_t(d);
    }
    if (bytes != t.nbytes) gptq_fuzz::violated("byte size disagrees with shape", name + " " + t.shape_str());
    // Touch the bytes: ASan reports a view that reaches past the buffer.
    volatile uint8_t sink = 0;
    if (t.nbytes > 0) sink = sink ^ p[0] ^ p[t.nbytes - 1];
  }
}

void write_seeds(const std::string& out) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const std::vector<uint8_t> zeros(4096, 0);
  for (const auto& e : fs::directory_iterator(fs::path(gptq_fuzz::shared_dir()) / "models", ec)) {
    const fs::path st = e.path() / "model.safetensors";
    if (!fs::is_regular_file(st)) continue;
    const gptq::SafetensorsFile f(st.string());
    std::vector<gptq::TensorToWrite> ts;
    for (const auto& [name, t] : f.tensors()) {
      std::vector<int64_t> shape;
      size_t n = gptq::dtype_size(t.dtype);
      for (int64_t d : t.shape) {
        shape.push_back(std::min<int64_t>(d, 2));
        n *= size_t(shape.back());
      }
      ts.push_back({name, t.dtype, shape, zeros.data(), n});
    }
    gptq::write_safetensors(out + "/" + e.path().filename().string() + ".safetensors", ts, f.metadata());
  }
  const float a[6] = {1, 2, 3, 4, 5, 6};
  const uint16_t h[2] = {0x3C00, 0xBC00};
  gptq::write_safetensors(out + "/empty.safetensors", {}, {});
  gptq::write_safetensors(out + "/dtypes.safetensors",
                          {{"f32", gptq::DType::kF32, {2, 3}, a, 24}, {"f16", gptq::DType::kF16, {2}, h, 4},
                           {"bf16", gptq::DType::kBF16, {1, 2}, h, 4}, {"f64", gptq::DType::kF64, {3}, a, 24},
                           {"i64", gptq::DType::kI64, {1}, a, 8}, {"i32", gptq::DType::kI32, {2}, a, 8},
                           {"i16", gptq::DType::kI16, {2}, a, 4}, {"i8", gptq::DType::kI8, {3}, a, 3},
                           {"u8", gptq::DType::kU8, {1}, a, 1}, {"bool", gptq::DType::kBool, {2}, a, 2},
                           {"scalar", gptq::DType::kF32, {}, a, 4}, {"empty", gptq::DType::kF32, {0, 5}, a, 0}});
  gptq_fuzz::write_file(out + "/index.json", R"({"metadata": {"total_size": 40}, "weight_map": {
  "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
  "model.norm.weight": "model-00001-of-00002.safetensors",
  "lm_head.weight": "model-00002-of-00002.safetensors"}})");
  gptq_fuzz::write_file(out + "/index_missing.json",
                        R"({"weight_map": {"lm_head.weight": "model-00001-of-00002.safetensors", "x": "../x"}})");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  gptq_fuzz::write_seeds_if_asked(write_seeds);
  index_dir = gptq_fuzz::scratch_subdir("index");
  const float a[4] = {1, 2, 3, 4};
  gptq::write_safetensors(index_dir + "/model-00001-of-00002.safetensors",
                          {{"model.embed_tokens.weight", gptq::DType::kF32, {2, 2}, a, sizeof(a)},
                           {"model.norm.weight", gptq::DType::kF32, {2}, a, 8}});
  gptq::write_safetensors(index_dir + "/model-00002-of-00002.safetensors",
                          {{"lm_head.weight", gptq::DType::kF32, {2, 2}, a, sizeof(a)}});
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 0 && data[0] == '{') {
    gptq_fuzz::write_file(index_dir + "/model.safetensors.index.json",
                          std::string_view(reinterpret_cast<const char*>(data), size));
    try {
      const gptq::TensorStore s = gptq::TensorStore::open_dir(index_dir);
      for (const auto& [name, t] : s.all())
        if (&s.get(name) != t) gptq_fuzz::violated("get() disagrees with all()", name);
    } catch (const gptq::Error&) {
    }
    return 0;
  }
  // libFuzzer hands over a heap copy of exactly `size` bytes: ASan sees any read past the end.
  std::map<std::string, gptq::TensorView> tensors;
  std::map<std::string, std::string> metadata;
  try {
    gptq::parse_safetensors("fuzz.safetensors", data, size, tensors, metadata);
    check_views(tensors, data, size);
  } catch (const gptq::Error&) {
  }
  return 0;
}
