// gptq merge-lora: PEFT's merge_and_unload for a LoRA adapter over a Llama-family base, in double
// precision, written as a model folder by the checkpoint writer.
#include "pipeline/merge_lora.h"

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <set>

#include "core/checked.h"
#include "core/fs.h"
#include "core/half.h"
#include "core/json.h"
#include "core/memory.h"
#include "gptq/error.h"
#include "gptq/lora.h"
#include "gptq/model.h"
#include "gptq/model_config.h"
#include "gptq/safetensors.h"
#include "gptq/version.h"
#include "io/checkpoint_writer.h"
#include "io/lora_adapter.h"

namespace gptq {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kPeftPrefix = "base_model.model.";

bool is_float(DType t) { return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16; }

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// v as a float rounded to odd (truncated, lowest bit set when inexact): rounding that float to 16
// bits then rounds v correctly, where rounding through a nearest float could round twice.
float round_to_odd(double v) {
  float f = float(v);
  if (double(f) == v || !std::isfinite(f)) return f;
  if (std::fabs(double(f)) > std::fabs(v)) f = std::nextafter(f, 0.0f);
  uint32_t b;
  std::memcpy(&b, &f, 4);
  b |= 1;
  std::memcpy(&f, &b, 4);
  return f;
}

// Element i of a `dt` buffer := v rounded once to dt; false when that is not finite (overflow).
bool store_rounded(DType dt, uint8_t* data, size_t i, double v) {
  if (dt == DType::kF32) {
    const float f = float(v);
    std::memcpy(data + 4 * i, &f, 4);
    return std::isfinite(f);
  }
  const uint16_t h = dt == DType::kF16 ? fp32_to_fp16(round_to_odd(v)) : fp32_to_bf16(round_to_odd(v));
  std::memcpy(data + 2 * i, &h, 2);
  return (h & (dt == DType::kF16 ? 0x7c00 : 0x7f80)) != (dt == DType::kF16 ? 0x7c00 : 0x7f80);
}

std::vector<double> doubles_of(const TensorView& t) {
  std::vector<double> v(static_cast<size_t>(t.numel()));
  for (size_t i = 0; i < v.size(); ++i) {
    v[i] = load_float(t, int64_t(i));
    if (!std::isfinite(v[i])) fail(t.file, ": tensor ", t.name, " holds ", v[i], " at index ", i);
  }
  return v;
}

std::string shape_text(std::vector<int64_t> shape) {
  TensorView t;
  t.shape = std::move(shape);
  return t.shape_str();
}

std::optional<DType> dtype_option(const std::string& s) {
  if (s.empty()) return std::nullopt;
  if (s == "fp16") return DType::kF16;
  if (s == "bf16") return DType::kBF16;
  if (s == "fp32") return DType::kF32;
  fail("--dtype must be fp16, bf16 or fp32, got \"", s, "\"");
}

const char* hf_dtype_name(DType t) {
  return t == DType::kF16 ? "float16" : t == DType::kBF16 ? "bfloat16" : "float32";
}

struct Slot {
  TensorView view;
  std::vector<uint8_t>* buffer;
};

// A replacement tensor for `base` of dtype dt, in a new buffer of m.
Slot new_tensor(MergedTensors& m, const TensorView& base, DType dt) {
  auto& buf = m.buffers.emplace_back(static_cast<size_t>(base.numel()) * dtype_size(dt));
  TensorView v;
  v.name = base.name;
  v.dtype = dt;
  v.shape = base.shape;
  v.data = buf.data();
  v.nbytes = buf.size();
  v.file = base.file + " (merged with a LoRA adapter)";
  return {v, &buf};
}

}  // namespace

nlohmann::ordered_json merged_adapters(const std::string& model_dir) {
  const std::string path = path_join(model_dir, kLoraMergeFile);
  if (!file_exists(path)) return nlohmann::ordered_json::array();
  const nlohmann::ordered_json j = parse_ordered_json(read_text_file(path, size_t(1) << 20), path);
  if (!j.is_object() || !j.contains("adapters") || !j["adapters"].is_array())
    fail(path, ": no \"adapters\" list (written by gptq merge-lora)");
  size_t n = 0;
  for (const auto& a : j["adapters"]) {
    bool ok = a.is_object() && a.contains("path") && a["path"].is_string() && a.contains("sha256") &&
              a["sha256"].is_object();
    if (ok)
      for (const auto& h : a["sha256"]) ok &= h.is_string();
    if (!ok) fail(path, ": adapter entry ", n, " needs a \"path\" string and a \"sha256\" object of strings");
    ++n;
  }
  return j["adapters"];
}

MergedTensors merge_lora_in_memory(const std::string& base_dir, const std::string& adapter_dir, std::optional<DType> out) {
  const ModelConfig cfg = ModelConfig::from_dir(base_dir);
  if (cfg.quant)
    fail("--base ", base_dir, ": a GPTQ checkpoint (", cfg.quant->bits,
         "-bit): a LoRA adapter is trained against the unquantized weights, and W + s*B*A is not on the ",
         cfg.quant->bits, "-bit grid, so merging would mean re-quantizing without calibration (or keeping the "
         "result unquantized); merge into the original fp16/bf16 base, then quantize the merged model "
         "(or run gptq quantize --lora)");
  const LoraAdapter a(adapter_dir);
  const TensorStore base = TensorStore::open_dir(base_dir);
  const std::string& afile = a.weights().path();
  MergedTensors m;

  // The modules of the base PEFT would look at: every module with a weight (+ a tied lm_head).
  std::set<std::string> decoder_linears, modules;
  for (int64_t l = 0; l < cfg.num_layers; ++l)
    for (LinearSlot s : kAllLinearSlots) decoder_linears.insert(cat("model.layers.", l, ".", linear_slot_name(s)));
  for (const auto& [name, t] : base.all())
    if (ends_with(name, ".weight")) modules.insert(name.substr(0, name.size() - 7));
  modules.insert("lm_head");
  std::set<std::string> targeted;
  for (const auto& mod : modules) {
    if (!a.targets(mod, decoder_linears.count(mod) != 0)) continue;
    if (mod == "lm_head" && cfg.tie_word_embeddings)
      fail(a.config_path(), ": target_modules selects lm_head, which shares its weights with model.embed_tokens "
                            "(tie_word_embeddings): merging would change the embeddings too; not supported");
    if (!decoder_linears.count(mod) && mod != "lm_head")
      fail(a.config_path(), ": target_modules selects ", mod,
           ", which is not a linear layer (LoRA merges into the q/k/v/o/gate/up/down projections and lm_head)");
    targeted.insert(mod);
  }
  if (targeted.empty())
    fail(a.config_path(), ": target_modules ", a.targets_text(), " (with layers_to_transform, exclude_modules) "
                          "matches no module of the base ", base_dir, " (its modules are named like "
                          "model.layers.0.self_attn.q_proj): is the adapter for another model?");

  // The adapter's tensors: lora_A / lora_B of targeted modules, and modules_to_save tensors.
  std::map<std::string, const TensorView*> lora_a, lora_b, saved;
  for (const auto& [name, t] : a.weights().tensors()) {
    if (name.rfind(kPeftPrefix, 0) != 0)
      fail(afile, ": tensor ", name, " is not named as PEFT names a LoRA adapter's (base_model.model.<module>.lora_A.weight)");
    const std::string rest = name.substr(std::strlen(kPeftPrefix));
    bool is_lora = false;
    for (auto [suffix, map] : {std::pair{".lora_A.weight", &lora_a}, std::pair{".lora_B.weight", &lora_b}})
      if (ends_with(rest, suffix)) {
        const std::string mod = rest.substr(0, rest.size() - std::strlen(suffix));
        if (!modules.count(mod))
          fail(afile, ": tensor ", name, " is for ", mod, ", which the base ", base_dir,
               " does not have: is the adapter for another model?");
        if (!targeted.count(mod))
          fail(afile, ": tensor ", name, " is for ", mod, ", which target_modules ", a.targets_text(),
               " does not select (adapter_config.json and the weights disagree)");
        (*map)[mod] = &t;
        is_lora = true;
      }
    if (is_lora) continue;
    // modules_to_save: "<module>.<param>" (PEFT's name) or "<module>.modules_to_save.default.<param>"
    std::string x = rest;
    if (const size_t p = x.find(".modules_to_save.default."); p != std::string::npos)
      x.erase(p, std::strlen(".modules_to_save.default"));
    bool is_saved = false;
    for (size_t dot = x.rfind('.'); dot != std::string::npos && dot > 0 && !is_saved; dot = x.rfind('.', dot - 1))
      is_saved = a.saves(x.substr(0, dot));
    if (is_saved && cfg.tie_word_embeddings && x.rfind("lm_head.", 0) == 0)
      fail(afile, ": tensor ", name, ": modules_to_save holds lm_head, which this base ties to model.embed_tokens; "
                                     "a separate lm_head would untie them (not supported)");
    if (!is_saved || !base.has(x))
      fail(afile, ": tensor ", name,
           rest.find("lora_magnitude_vector") != std::string::npos ? " is a DoRA magnitude (DoRA is not supported)"
           : rest.find("lora_embedding_") != std::string::npos    ? ": LoRA on embeddings is not supported"
           : is_saved ? cat(" has no counterpart ", x, " in the base ", base_dir)
                      : std::string(" is neither lora_A/lora_B of a targeted module nor a modules_to_save tensor"));
    if (!saved.emplace(x, &t).second) fail(afile, ": two tensors for ", x, " (modules_to_save)");
  }
  for (const auto& entry : a.modules_to_save()) {
    bool found = false;
    for (const auto& [x, t] : saved)
      for (size_t dot = x.rfind('.'); dot != std::string::npos && dot > 0 && !found; dot = x.rfind('.', dot - 1))
        found = ends_with(x.substr(0, dot), entry);
    if (!found) fail(afile, ": modules_to_save lists \"", entry, "\", but the adapter holds no tensor of such a module");
  }

  // Shapes, and the memory for the results.
  uint64_t need = 0;
  for (const auto& mod : targeted) {
    const TensorView& w = base.get(mod + ".weight");
    if (w.shape.size() != 2 || !is_float(w.dtype)) fail(w.file, ": ", w.name, " is not a 2-D float weight");
    const int64_t r = a.rank(mod);
    const auto ia = lora_a.find(mod), ib = lora_b.find(mod);
    if (ia == lora_a.end() || ib == lora_b.end())
      fail(afile, ": no ", ia == lora_a.end() ? "lora_A" : "lora_B", " weight for ", mod,
           ", which adapter_config.json targets (", kPeftPrefix, mod, ia == lora_a.end() ? ".lora_A" : ".lora_B",
           ".weight)");
    const std::vector<int64_t> want_a = {r, w.dim(1)}, want_b = {w.dim(0), r};
    if (ia->second->shape != want_a || ib->second->shape != want_b)
      fail(afile, ": ", mod, ": lora_A ", ia->second->shape_str(), " and lora_B ", ib->second->shape_str(),
           " do not fit the base weight ", w.shape_str(), " with r = ", r, " (expected lora_A ", shape_text(want_a),
           ", lora_B ", shape_text(want_b), "): is the adapter for another model?");
    need = checked_add(need, checked_mul<uint64_t>(uint64_t(w.numel()), dtype_size(out.value_or(w.dtype)), "merged size"),
                       "merged size");
    need = checked_add(need, uint64_t(ia->second->numel() + ib->second->numel()) * 8, "merged size");
  }
  for (const auto& [x, t] : saved) {
    const TensorView& b = base.get(x);
    if (t->shape != b.shape || !is_float(t->dtype) || !is_float(b.dtype))
      fail(afile, ": ", t->name, " (", dtype_name(t->dtype), " ", t->shape_str(), ") does not fit the base's ", x, " (",
           dtype_name(b.dtype), " ", b.shape_str(), ")");
    need = checked_add(need, checked_mul<uint64_t>(uint64_t(b.numel()), dtype_size(out.value_or(b.dtype)), "merged size"),
                       "merged size");
  }
  check_memory(need, available_memory(), cat("merging the LoRA adapter ", adapter_dir));

  if (a.fan_in_fan_out())
    m.warnings.push_back(a.config_path() +
                         ": fan_in_fan_out is set, but every target is a torch.nn.Linear (weights stored [out, in]); "
                         "PEFT resets it to false for those, and so does this merge");

  // W' = W + s * (B A), each element rounded once from double.
  for (const auto& mod : targeted) {
    const TensorView& w = base.get(mod + ".weight");
    const int64_t rows = w.dim(0), cols = w.dim(1), r = a.rank(mod);
    const double s = a.scale(mod);
    const std::vector<double> A = doubles_of(*lora_a[mod]), B = doubles_of(*lora_b[mod]);  // A: [r, cols], B: [rows, r]
    Slot out_t = new_tensor(m, w, out.value_or(w.dtype));
    std::vector<double> acc(static_cast<size_t>(cols));
    for (int64_t o = 0; o < rows; ++o) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t k = 0; k < r; ++k) {
        const double b = B[size_t(o * r + k)];
        const double* ak = A.data() + k * cols;
        for (int64_t i = 0; i < cols; ++i) acc[size_t(i)] += b * ak[i];
      }
      for (int64_t i = 0; i < cols; ++i) {
        const int64_t e = o * cols + i;
        if (!store_rounded(out_t.view.dtype, out_t.buffer->data(), size_t(e), double(load_float(w, e)) + s * acc[size_t(i)]))
          fail(mod, ": the merged weight at [", o, ", ", i, "] overflows ", dtype_name(out_t.view.dtype),
               " (adapter scale ", s, ")");
      }
    }
    m.tensors.emplace(w.name, out_t.view);
    m.merged_modules.push_back(mod);
  }
  for (const auto& [x, t] : saved) {
    Slot out_t = new_tensor(m, base.get(x), out.value_or(base.get(x).dtype));
    for (int64_t i = 0; i < t->numel(); ++i)
      if (!store_rounded(out_t.view.dtype, out_t.buffer->data(), size_t(i), load_float(*t, i)))
        fail(afile, ": ", t->name, " at index ", i, " is not finite in ", dtype_name(out_t.view.dtype));
    m.tensors.emplace(x, out_t.view);
    m.saved_tensors.push_back(x);
  }

  m.adapters = merged_adapters(base_dir);
  nlohmann::ordered_json hashes = nlohmann::ordered_json::object();
  for (const auto& [file, sha] : a.file_hashes()) hashes[file] = sha;
  m.adapters.push_back({{"path", fs::canonical(adapter_dir).string()}, {"sha256", hashes}});
  return m;
}

MergeLoraReport merge_lora(const std::string& base_dir, const std::string& adapter_dir, const std::string& out_dir,
                           const MergeLoraOptions& opts) {
  const auto t0 = Clock::now();
  const std::optional<DType> out = dtype_option(opts.dtype);
  // -o is checked now and created only once the inputs have been read and merged.
  CheckpointOutput output(out_dir, {{base_dir, "--base"}, {adapter_dir, "--adapter", "adapter folder"}}, {}, opts.force);
  MergedTensors m = merge_lora_in_memory(base_dir, adapter_dir, out);
  MergeLoraReport rep;
  rep.seconds_merge = std::chrono::duration<double>(Clock::now() - t0).count();

  TensorStore store = TensorStore::open_dir(base_dir);
  CheckpointFiles files;
  // The base's shards, in file-name order, keep their tensors.
  if (store.files().size() > 1) {
    std::vector<std::string> names;
    for (const auto& f : store.files()) names.push_back(f->path());
    std::sort(names.begin(), names.end());
    for (const auto& [name, t] : store.all())
      files.shard_of[name] = size_t(std::find(names.begin(), names.end(), t->file) - names.begin());
  }
  store.replace(m.tensors);
  // --dtype: every other float tensor converted too.
  std::deque<std::vector<uint8_t>> converted;
  uint64_t need = 0;
  for (const auto& [name, t] : store.all())
    if (out && is_float(t->dtype) && t->dtype != *out)
      need = checked_add(need, checked_mul<uint64_t>(uint64_t(t->numel()), dtype_size(*out), "converted size"),
                         "converted size");
  check_memory(need, available_memory(), cat("converting the base to --dtype ", opts.dtype));
  for (const auto& [name, t] : store.all()) {
    if (out && is_float(t->dtype) && t->dtype != *out) {
      auto& buf = converted.emplace_back(static_cast<size_t>(t->numel()) * dtype_size(*out));
      for (int64_t i = 0; i < t->numel(); ++i)
        if (!store_rounded(*out, buf.data(), size_t(i), load_float(*t, i)))
          fail(t->file, ": ", name, " at index ", i, " is not finite in ", dtype_name(*out));
      files.tensors.push_back({name, *out, t->shape, buf.data(), buf.size()});
    } else {
      files.tensors.push_back({name, t->dtype, t->shape, t->data, t->nbytes});
    }
  }
  const std::string cfg_path = path_join(base_dir, "config.json");
  std::string cfg_text = read_text_file(cfg_path);
  if (out) {
    nlohmann::ordered_json c = parse_ordered_json(cfg_text, cfg_path);
    c[c.contains("dtype") ? "dtype" : "torch_dtype"] = hf_dtype_name(*out);
    cfg_text = c.dump(2) + "\n";
  }
  nlohmann::ordered_json marker;
  marker["adapters"] = m.adapters;
  marker["meta"] = {{"merger", {std::string("gptq.cpp:") + version()}}};
  files.text_files = {{"config.json", cfg_text}, {kLoraMergeFile, marker.dump(2) + "\n"}};
  files.source_dir = base_dir;
  files.copy_from_source = copied_model_files();
  output.open();
  rep.out_bytes = output.commit(files);
  rep.merged_modules = std::move(m.merged_modules);
  rep.saved_tensors = std::move(m.saved_tensors);
  rep.warnings = std::move(m.warnings);
  rep.out_dir = out_dir;
  rep.seconds_total = std::chrono::duration<double>(Clock::now() - t0).count();
  return rep;
}

}  // namespace gptq
