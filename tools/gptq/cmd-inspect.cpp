// gptq inspect: what a model folder holds.
#include <cstdio>
#include <map>

#include "common.h"
#include "core/fs.h"
#include "gptq/model.h"
#include "gptq/safetensors.h"
#include "gptq/tokenizer.h"

namespace gptq::cli {

Runner add_inspect(CLI::App& app) {
  struct Args {
    std::string model;
    bool json = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* c = app.add_subcommand("inspect", "Describe a model folder: architecture, sizes, dtypes, tokenizer, quantization");
  c->add_option("model,-m,--model", a->model, "Model folder")->required();
  c->add_flag("--json", a->json, "Print JSON");
  return [a]() {
    auto model = Model::load(a->model);  // validates config, files and shapes
    const ModelConfig& cfg = model->config();
    const TensorStore store = TensorStore::open_dir(a->model);
    std::map<std::string, int64_t> dtype_bytes;
    for (const auto& [name, t] : store.all()) dtype_bytes[dtype_name(t->dtype)] += int64_t(t->nbytes);
    std::string tok_kind = "none", tok_err;
    int64_t tok_vocab = 0;
    try {
      const Tokenizer tok = Tokenizer::from_model_dir(a->model);
      tok_kind = tok.kind();
      tok_vocab = tok.vocab_size();
    } catch (const std::exception& e) {
      tok_err = e.what();
    }
    nlohmann::json j;
    j["model"] = a->model;
    j["architecture"] = cfg.architecture;
    j["parameters"] = model->parameter_count();
    j["hidden_size"] = cfg.hidden_size;
    j["intermediate_size"] = cfg.intermediate_size;
    j["layers"] = cfg.num_layers;
    j["heads"] = cfg.num_heads;
    j["kv_heads"] = cfg.num_kv_heads;
    j["head_dim"] = cfg.head_dim;
    j["vocab_size"] = cfg.vocab_size;
    j["context_length"] = cfg.max_position_embeddings;
    j["rope_theta"] = cfg.rope_theta;
    j["rope_scaling"] = cfg.rope_scaling.type;
    j["tie_word_embeddings"] = cfg.tie_word_embeddings;
    j["tensors"] = store.all().size();
    j["files"] = store.files().size();
    j["file_bytes"] = store.total_file_bytes();
    j["weight_bytes"] = model->weight_bytes();
    j["dtypes"] = dtype_bytes;
    j["weights"] = model->weight_dtype_summary();
    j["tokenizer"] = tok_kind;
    if (tok_vocab) j["tokenizer_vocab"] = tok_vocab;
    if (!tok_err.empty()) j["tokenizer_error"] = tok_err;
    if (cfg.quant) {
      const QuantConfig& q = *cfg.quant;
      j["quantization"] = {{"quant_method", q.quant_method}, {"bits", q.bits}, {"group_size", q.group_size},
                           {"desc_act", q.desc_act}, {"sym", q.sym}, {"damp_percent", q.damp_percent},
                           {"true_sequential", q.true_sequential}, {"static_groups", q.static_groups},
                           {"checkpoint_format", q.checkpoint_format}};
    } else {
      j["quantization"] = nullptr;
    }
    if (a->json) {
      print_json(j);
      return 0;
    }
    auto row = [](const char* k, const std::string& v) { std::printf("  %-20s %s\n", k, v.c_str()); };
    std::printf("%s\n", a->model.c_str());
    row("architecture", cfg.architecture);
    row("parameters", human_count(double(model->parameter_count())));
    char buf[256];
    std::snprintf(buf, sizeof buf, "%lld layers, hidden %lld, ffn %lld, %lld heads (%lld kv) of %lld",
                  (long long)cfg.num_layers, (long long)cfg.hidden_size, (long long)cfg.intermediate_size,
                  (long long)cfg.num_heads, (long long)cfg.num_kv_heads, (long long)cfg.head_dim);
    row("shape", buf);
    row("vocabulary", std::to_string(cfg.vocab_size));
    std::snprintf(buf, sizeof buf, "%lld tokens, rope theta %g (%s)", (long long)cfg.max_position_embeddings,
                  cfg.rope_theta, cfg.rope_scaling.type.c_str());
    row("context", buf);
    row("tied embeddings", cfg.tie_word_embeddings ? "yes" : "no");
    row("weights", model->weight_dtype_summary());
    std::string dts;
    for (const auto& [k, v] : dtype_bytes) dts += (dts.empty() ? "" : ", ") + k + " " + human_bytes(double(v));
    row("tensor dtypes", dts);
    std::snprintf(buf, sizeof buf, "%s in %zu file(s), %zu tensors", human_bytes(double(store.total_file_bytes())).c_str(),
                  store.files().size(), store.all().size());
    row("on disk", buf);
    row("tokenizer", tok_err.empty() ? tok_kind + ", " + std::to_string(tok_vocab) + " tokens" : "error: " + tok_err);
    if (cfg.quant) {
      const QuantConfig& q = *cfg.quant;
      // act-order with static groups keeps the plain layout (g_idx = k / G): say so, since desc_act
      // alone reads as the slower act-order layout
      std::snprintf(buf, sizeof buf, "GPTQ %d-bit, group %d, desc_act %s, sym %s, format %s", q.bits, q.group_size,
                    q.desc_act ? (q.static_groups ? "yes (static groups)" : "yes") : "no", q.sym ? "yes" : "no",
                    q.checkpoint_format.c_str());
      row("quantization", buf);
    } else {
      row("quantization", "none");
    }
    return 0;
  };
}

}  // namespace gptq::cli
