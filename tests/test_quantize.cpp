// gptq quantize end to end: the checkpoint's format and files, determinism, bad input, and quality
// against the GPTQ authors' solver (../shared/golden/<model>/reference_gptq.json).
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cmath>
#include <deque>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "cli_runner.h"
#include "cuda_test.h"
#include "core/fs.h"
#include "gptq/error.h"
#include "gptq/model.h"
#include "gptq/perplexity.h"
#include "gptq/quantize.h"
#include "gptq/safetensors.h"
#include "gptq/tokenizer.h"
#include "shared_paths.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

struct Calib {
  const char* model;
  const char* file;
  int64_t ctx;
};
const Calib kBaby = {"babyllama-361", "data/tinystories-sample/tiny.utf8", 256};
const Calib kGutenberg = {"llama-gutenberg-22m", "data/gutenberg-heldout/heldout.txt", 1024};

std::string out_dir(const std::string& tag) {
  const fs::path p = fs::path(testing::TempDir()) / ("gptq_q_" + tag);
  fs::remove_all(p);
  return p.string();
}

gptq::QuantizeOptions calib_options(const Calib& c) {
  gptq::QuantizeOptions o;
  o.calibration_file = shared_path(c.file);
  o.seqlen = c.ctx;
  o.nsamples = 128;
  o.progress = false;
  return o;
}

// In-domain perplexity on windows 128..191, which calibration never sees.
double calib_ppl(const std::string& dir, const Calib& c) {
  auto m = gptq::Model::load(dir);
  const auto tok = gptq::Tokenizer::from_model_dir(dir);
  const auto ids = tok.encode(gptq::read_text_file(shared_path(c.file)));
  gptq::PerplexityOptions p;
  p.ctx = c.ctx;
  p.window_begin = 128;
  p.window_end = 192;
  p.progress = false;
  return gptq::perplexity(*m, ids, p).ppl;
}

#define NEED_SHARED(c)                                                                   \
  if (!gptq_test::is_dir(shared_path(std::string("models/") + (c).model)))              \
  GTEST_SKIP() << "../shared/models/" << (c).model << " not found: skipped"

template <typename F>
std::string error_of(F fn) {
  try {
    fn();
  } catch (const gptq::Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Quantize, CheckpointFormatFilesAndDeterminism) {
  NEED_SHARED(kBaby);
  const std::string src = shared_path("models/babyllama-361");
  const std::string a = out_dir("fmt_a"), b = out_dir("fmt_b");
  auto o = calib_options(kBaby);
  o.nsamples = 16;
  o.bits = 3;
  o.group_size = 32;
  o.desc_act = true;
  const auto rep = gptq::quantize_model(src, a, o);
  gptq::quantize_model(src, b, o);
  EXPECT_EQ(gptq::read_text_file(a + "/model.safetensors"), gptq::read_text_file(b + "/model.safetensors"));
  EXPECT_EQ(rep.modules.size(), 5u * 7u);
  for (const char* f : {"config.json", "quantize_config.json", "tokenizer.json", "tokenizer_config.json",
                        "tokenizer.model", "generation_config.json", "special_tokens_map.json"})
    EXPECT_TRUE(fs::exists(fs::path(a) / f)) << f;
  const json cfg = json::parse(gptq::read_text_file(a + "/config.json"));
  const json& q = cfg["quantization_config"];
  EXPECT_EQ(q["quant_method"], "gptq");
  EXPECT_EQ(q["bits"], 3);
  EXPECT_EQ(q["group_size"], 32);
  EXPECT_EQ(q["desc_act"], true);
  EXPECT_EQ(q["sym"], true);
  EXPECT_EQ(q["checkpoint_format"], "gptq");
  EXPECT_EQ(q["meta"]["grid"], "mse");  // GPTQ's default grid
  EXPECT_EQ(json::parse(gptq::read_text_file(a + "/quantize_config.json")), q);
  gptq::SafetensorsFile st(a + "/model.safetensors");
  EXPECT_EQ(st.metadata().at("format"), "pt");
  const auto& t = st.tensors();
  const std::string p = "model.layers.0.mlp.down_proj";  // K = 352, N = 128
  EXPECT_EQ(t.count(p + ".weight"), 0u);
  EXPECT_EQ(t.at(p + ".qweight").shape, (std::vector<int64_t>{352 * 3 / 32, 128}));
  EXPECT_EQ(t.at(p + ".qweight").dtype, gptq::DType::kI32);
  EXPECT_EQ(t.at(p + ".qzeros").shape, (std::vector<int64_t>{11, 128 * 3 / 32}));
  EXPECT_EQ(t.at(p + ".scales").shape, (std::vector<int64_t>{11, 128}));
  EXPECT_EQ(t.at(p + ".scales").dtype, gptq::DType::kF16);
  EXPECT_EQ(t.at(p + ".g_idx").shape, (std::vector<int64_t>{352}));
  EXPECT_EQ(t.at("model.embed_tokens.weight").dtype, gptq::DType::kF16);
  EXPECT_EQ(t.at("model.norm.weight").dtype, gptq::DType::kF16);
  // Symmetric v1: every stored zero is 2^(b-1) - 1.
  const auto& qz = t.at("model.layers.0.self_attn.q_proj.qzeros");
  const uint32_t* z = static_cast<const uint32_t*>(qz.data);
  // 3-bit packing of 32 copies of 3 (0b011): the three words of a run
  EXPECT_EQ(z[0], 0xDB6DB6DBu);
  EXPECT_EQ(z[1], 0xB6DB6DB6u);
  EXPECT_EQ(z[2], 0x6DB6DB6Du);
  // act-order: g_idx is a permuted group map
  const auto& gi = t.at(p + ".g_idx");
  const int32_t* g = static_cast<const int32_t*>(gi.data);
  bool monotone = true;
  for (int i = 1; i < 352; ++i) monotone &= g[i] >= g[i - 1];
  EXPECT_FALSE(monotone);
  // the checkpoint runs
  auto m = gptq::Model::load(a);
  EXPECT_NE(m->weight_dtype_summary().find("GPTQ 3-bit g32"), std::string::npos);
}

// --grid: recorded in quantize_config.json's meta only (loaders see the same fields and tensors),
// changes the scales, and a bad value is one line naming the flag.
TEST(Quantize, GridFlagIsRecordedInMetaAndBadValuesAreRefused) {
  NEED_SHARED(kBaby);
  const std::string src = shared_path("models/babyllama-361");
  const std::string calib = shared_path(kBaby.file);
  std::map<std::string, std::string> scales;
  for (const std::string grid : {"minmax", "mse"}) {
    const std::string out = out_dir("grid_" + grid);
    const auto r = gptq_test::run_cli(
        {"quantize", "-m", src, "-o", out, "--calibration", calib, "--seqlen", "256", "--nsamples", "8", "--grid", grid, "-q"});
    ASSERT_EQ(r.rc, 0) << r.err;
    const json q = json::parse(gptq::read_text_file(out + "/quantize_config.json"));
    EXPECT_EQ(q["meta"]["grid"], grid);
    EXPECT_FALSE(q.contains("grid"));
    EXPECT_EQ(json::parse(gptq::read_text_file(out + "/config.json"))["quantization_config"], q);
    gptq::SafetensorsFile st(out + "/model.safetensors");
    const auto& t = st.tensors().at("model.layers.0.mlp.down_proj.scales");
    scales[grid].assign(static_cast<const char*>(t.data), t.nbytes);
    EXPECT_LT(calib_ppl(out, kBaby), 3.3) << grid;  // a working 4-bit checkpoint (reference GPTQ: 3.025)
    fs::remove_all(out);
  }
  EXPECT_NE(scales["minmax"], scales["mse"]);
  gptq_test::expect_cli_error(
      gptq_test::run_cli({"quantize", "-m", src, "-o", out_dir("grid_bad"), "--method", "rtn", "--grid", "l2"}),
      {"--grid", "l2"});
  auto o = calib_options(kBaby);
  o.grid = "MSE";
  EXPECT_NE(error_of([&] { gptq::quantize_model(src, out_dir("grid_bad"), o); }).find("--grid must be minmax or mse"),
            std::string::npos);
  EXPECT_FALSE(fs::exists(out_dir("grid_bad")));
}

TEST(Quantize, RefitFlagIsRecordedInMetaAndBadValuesAreRefused) {
  NEED_SHARED(kBaby);
  const std::string src = shared_path("models/babyllama-361");
  const std::string calib = shared_path(kBaby.file);
  std::map<std::string, std::string> scales, qweight;
  std::map<std::string, double> rel;
  for (const std::string refit : {"none", "hessian"}) {
    const std::string out = out_dir("refit_" + refit);
    const auto r = gptq_test::run_cli({"quantize", "-m", src, "-o", out, "--calibration", calib, "--seqlen", "256",
                                       "--nsamples", "8", "--refit", refit, "-q", "--json"});
    ASSERT_EQ(r.rc, 0) << r.err;
    const json rep = json::parse(r.out);
    for (const auto& m : rep["modules"]) rel[refit] += m["rel_error"].get<double>();
    const json q = json::parse(gptq::read_text_file(out + "/quantize_config.json"));
    EXPECT_EQ(q["meta"]["refit"], refit);
    EXPECT_EQ(q["meta"]["grid"], "mse");
    EXPECT_FALSE(q.contains("refit"));
    gptq::SafetensorsFile st(out + "/model.safetensors");
    const auto& t = st.tensors().at("model.layers.0.mlp.down_proj.scales");
    scales[refit].assign(static_cast<const char*>(t.data), t.nbytes);
    const auto& w = st.tensors().at("model.layers.0.mlp.down_proj.qweight");
    qweight[refit].assign(static_cast<const char*>(w.data), w.nbytes);
    EXPECT_LT(calib_ppl(out, kBaby), 3.3) << refit;
    fs::remove_all(out);
  }
  EXPECT_NE(scales["none"], scales["hessian"]);
  EXPECT_LT(rel["hessian"], rel["none"]);  // the modules' output error on the calibration inputs drops
  gptq_test::expect_cli_error(
      gptq_test::run_cli({"quantize", "-m", src, "-o", out_dir("refit_bad"), "--calibration", calib, "--refit", "diag"}),
      {"--refit", "diag"});
  auto o = calib_options(kBaby);
  o.method = "rtn";
  o.refit = "hessian";
  EXPECT_NE(error_of([&] { gptq::quantize_model(src, out_dir("refit_bad"), o); }).find("--refit hessian needs"),
            std::string::npos);
  EXPECT_FALSE(fs::exists(out_dir("refit_bad")));
}

// --order group: written as a plain (desc_act false, g_idx = k / G) checkpoint; bad combinations
// and values are one line.
TEST(Quantize, OrderGroupKeepsTheNonActOrderLayout) {
  NEED_SHARED(kBaby);
  const std::string src = shared_path("models/babyllama-361");
  const std::string out = out_dir("order_group");
  const auto r = gptq_test::run_cli({"quantize", "-m", src, "-o", out, "--calibration", shared_path(kBaby.file), "--seqlen",
                                     "256", "--nsamples", "8", "--group-size", "32", "--order", "group", "-q"});
  ASSERT_EQ(r.rc, 0) << r.err;
  const json q = json::parse(gptq::read_text_file(out + "/quantize_config.json"));
  EXPECT_EQ(q["desc_act"], false);
  EXPECT_EQ(q["meta"]["order"], "group");
  gptq::SafetensorsFile st(out + "/model.safetensors");
  const auto& gi = st.tensors().at("model.layers.0.mlp.down_proj.g_idx");
  const int32_t* g = static_cast<const int32_t*>(gi.data);
  for (int k = 0; k < 352; ++k) EXPECT_EQ(g[k], k / 32);
  EXPECT_LT(calib_ppl(out, kBaby), 3.3);
  fs::remove_all(out);
  gptq_test::expect_cli_error(gptq_test::run_cli({"quantize", "-m", src, "-o", out, "--method", "rtn", "--order", "random"}),
                              {"--order", "random"});
  gptq_test::expect_cli_error(
      gptq_test::run_cli({"quantize", "-m", src, "-o", out, "--method", "rtn", "--order", "group", "--desc-act"}),
      {"--order group", "--desc-act"});
  gptq_test::expect_cli_error(
      gptq_test::run_cli({"quantize", "-m", src, "-o", out, "--method", "rtn", "--order", "natural", "--static-groups"}),
      {"--static-groups", "--order natural"});
  EXPECT_FALSE(fs::exists(out));
}

// One decoder layer at a time (what a GPU run does by default) gives the same checkpoint, and the
// deferred model refuses to run a layer that is not loaded.
TEST(Quantize, StreamingLayersGivesTheSameBytes) {
  NEED_SHARED(kBaby);
  const std::string src = shared_path("models/babyllama-361");
  auto o = calib_options(kBaby);
  o.nsamples = 8;
  std::string bytes[2];
  for (int stream : {0, 1}) {
    o.stream_layers = stream;
    const std::string out = out_dir("stream_" + std::to_string(stream));
    gptq::quantize_model(src, out, o);
    bytes[stream] = gptq::read_text_file(out + "/model.safetensors");
    fs::remove_all(out);
  }
  EXPECT_EQ(bytes[0], bytes[1]);
  gptq::LoadOptions lo;
  lo.defer_layers = true;
  auto m = gptq::Model::load(src, lo);
  EXPECT_FALSE(m->layer_loaded(0));
  const size_t bare = m->weight_bytes();
  m->load_layer(1);
  EXPECT_TRUE(m->layer_loaded(1));
  EXPECT_GT(m->weight_bytes(), bare);
  m->release_layer(1);
  EXPECT_EQ(m->weight_bytes(), bare);
  for (int64_t l = 0; l < m->config().num_layers; ++l) m->load_layer(l);
  auto full = gptq::Model::load(src);
  auto c1 = m->new_cache(), c2 = full->new_cache();
  const std::vector<int32_t> ids = {1, 20, 30, 40};
  std::vector<float> a, b;
  m->forward(*c1, ids.data(), 4, true, a);
  full->forward(*c2, ids.data(), 4, true, b);
  EXPECT_EQ(a, b);
}

// Calibration activations held in host memory, a window at a time on the backend (what a device
// too small for them gets): the same checkpoint bytes, on the CPU and (when there is one) the GPU,
// in both calibration orders.
TEST(Quantize, HostActivationsGiveTheSameBytes) {
  NEED_SHARED(kBaby);
  const std::string src = shared_path("models/babyllama-361");
  std::vector<std::pair<std::string, std::shared_ptr<gptq::Backend>>> backends = {{"cpu", nullptr}};
  if (auto g = gptq_test::gpu()) backends.push_back({"cuda", g});
  for (const auto& [name, be] : backends)
    for (bool sequential : {true, false}) {
      auto o = calib_options(kBaby);
      o.nsamples = 6;
      o.backend = be;
      o.true_sequential = sequential;
      std::string bytes[2];
      for (int host : {0, 1}) {
        o.host_activations = host;
        const std::string out = out_dir(gptq::cat("hostacts_", name, sequential, host));
        gptq::quantize_model(src, out, o);
        bytes[host] = gptq::read_text_file(out + "/model.safetensors");
        fs::remove_all(out);
      }
      EXPECT_EQ(bytes[0], bytes[1]) << name << (sequential ? " true-sequential" : " all Hessians first");
    }
}

// Down's inputs kept from the pass that accumulates its Hessian (the pass after down's solve then
// runs down alone) or the MLP run again, and a stage's linears solved stacked or one by one: the
// same checkpoint bytes on the CPU (on the GPU, keeping or not, stacked); and the report names every
// module in the true-sequential order with its time and error.
TEST(Quantize, KeepingDownsInputsAndStackingGiveTheSameBytes) {
  NEED_SHARED(kBaby);
  const std::string src = shared_path("models/babyllama-361");
  std::vector<std::pair<std::string, std::shared_ptr<gptq::Backend>>> backends = {{"cpu", nullptr}};
  if (auto g = gptq_test::gpu()) backends.push_back({"cuda", g});
  for (const auto& [name, be] : backends) {
    auto o = calib_options(kBaby);
    o.nsamples = 6;
    o.backend = be;
    std::string bytes[3];
    for (int run = 0; run < (name == "cpu" ? 3 : 2); ++run) {
      o.keep_mlp_inputs = run == 1 ? 1 : 0;
      o.stack_stages = run != 2;
      const std::string out = out_dir(gptq::cat("keepmlp_", name, run));
      const gptq::QuantizeReport r = gptq::quantize_model(src, out, o);
      bytes[run] = gptq::read_text_file(out + "/model.safetensors");
      fs::remove_all(out);
      ASSERT_EQ(r.modules.size() % 7, 0u);
      const char* order[7] = {"k_proj", "v_proj", "q_proj", "o_proj", "up_proj", "gate_proj", "down_proj"};
      for (size_t i = 0; i < r.modules.size(); ++i) {
        EXPECT_NE(r.modules[i].name.find(gptq::cat("layers.", i / 7, ".")), std::string::npos) << r.modules[i].name;
        EXPECT_NE(r.modules[i].name.find(order[i % 7]), std::string::npos) << r.modules[i].name;
        EXPECT_GT(r.modules[i].seconds, 0) << r.modules[i].name;
        EXPECT_GT(r.modules[i].rel_error, 0) << r.modules[i].name;
      }
    }
    EXPECT_EQ(bytes[0], bytes[1]) << name << ": down's inputs kept or not";
    if (name == "cpu") {
      EXPECT_EQ(bytes[0], bytes[2]) << "stacked or one by one";
    }
  }
}

// A synthetic model streams the same way (its layers made on demand from the seed): the same report.
TEST(Quantize, StreamingASyntheticModelGivesTheSameErrors) {
  NEED_SHARED(kBaby);
  gptq::QuantizeOptions o;
  o.synthetic = "tiny";
  o.tokenizer_dir = shared_path("models/babyllama-361");
  o.calibration_file = shared_path("data/tinystories-sample/tiny.utf8");
  o.seqlen = 64;
  o.nsamples = 4;
  o.progress = false;
  std::vector<double> err[2];
  for (int stream : {0, 1}) {
    o.stream_layers = stream;
    for (const auto& m : gptq::quantize_model("", "", o).modules) err[stream].push_back(m.rel_error);
  }
  ASSERT_EQ(err[0].size(), 14u);
  EXPECT_EQ(err[0], err[1]);
}

// The default order for gptq is act-static: act-order with the groups fixed first, recorded as
// desc_act + static_groups, with the non-act-order layout g_idx = k / G; --desc-act alone keeps the
// permuted g_idx of act-order groups; rtn stays in the natural order.
TEST(Quantize, DefaultOrderIsActOrderWithStaticGroups) {
  NEED_SHARED(kBaby);
  const std::string src = shared_path("models/babyllama-361");
  auto g_idx_of = [](const std::string& dir) {
    gptq::SafetensorsFile st(dir + "/model.safetensors");
    const auto& gi = st.tensors().at("model.layers.0.mlp.down_proj.g_idx");
    const int32_t* g = static_cast<const int32_t*>(gi.data);
    return std::vector<int32_t>(g, g + gi.numel());
  };
  auto quantize = [&](const std::string& name, std::vector<std::string> extra) {
    const std::string out = out_dir(name);
    std::vector<std::string> args = {"quantize", "-m", src, "-o", out, "--calibration", shared_path(kBaby.file),
                                     "--seqlen", "256", "--nsamples", "8", "--group-size", "32", "-q"};
    args.insert(args.end(), extra.begin(), extra.end());
    const auto r = gptq_test::run_cli(args);
    EXPECT_EQ(r.rc, 0) << r.err;
    return out;
  };
  const std::string def = quantize("order_default", {}), act = quantize("order_act", {"--desc-act"});
  const std::string stat = quantize("order_act_static", {"--desc-act", "--static-groups"}),
                    rtn = quantize("order_rtn", {"--method", "rtn"});
  json q = json::parse(gptq::read_text_file(def + "/quantize_config.json"));
  EXPECT_EQ(q["desc_act"], true);
  EXPECT_EQ(q["static_groups"], true);
  EXPECT_EQ(q["meta"]["order"], "act-static");
  const std::vector<int32_t> g = g_idx_of(def);
  ASSERT_EQ(g.size(), 352u);
  for (int k = 0; k < 352; ++k) EXPECT_EQ(g[size_t(k)], k / 32);
  const auto insp = gptq_test::run_cli({"inspect", def});
  EXPECT_NE(insp.out.find("desc_act yes (static groups)"), std::string::npos) << insp.out;
  // the same checkpoint as spelling it out
  EXPECT_EQ(gptq::read_text_file(def + "/model.safetensors"), gptq::read_text_file(stat + "/model.safetensors"));
  q = json::parse(gptq::read_text_file(act + "/quantize_config.json"));
  EXPECT_EQ(q["desc_act"], true);
  EXPECT_EQ(q["static_groups"], false);
  EXPECT_EQ(q["meta"]["order"], "act");
  const std::vector<int32_t> ga = g_idx_of(act);
  EXPECT_FALSE(std::is_sorted(ga.begin(), ga.end()));
  q = json::parse(gptq::read_text_file(rtn + "/quantize_config.json"));
  EXPECT_EQ(q["desc_act"], false);
  EXPECT_EQ(q["meta"]["order"], "natural");
  for (const auto& d : {def, act, stat, rtn}) fs::remove_all(d);
}

TEST(Quantize, ShardsAndV2FormatAndRtn) {
  NEED_SHARED(kBaby);
  const std::string src = shared_path("models/babyllama-361");
  const std::string a = out_dir("shards");
  gptq::QuantizeOptions o;
  o.method = "rtn";
  o.format = "gptq_v2";
  o.sym = false;
  o.max_shard_bytes = 300000;
  o.progress = false;
  gptq::quantize_model(src, a, o);
  EXPECT_FALSE(fs::exists(a + "/model.safetensors"));
  const json idx = json::parse(gptq::read_text_file(a + "/model.safetensors.index.json"));
  EXPECT_GE(idx["weight_map"].size(), 100u);
  const auto store = gptq::TensorStore::open_dir(a);
  EXPECT_GT(store.files().size(), 1u);
  for (const auto& f : store.files()) EXPECT_LE(f->file_size(), 300000u + 64u * 1024u);
  const json q = json::parse(gptq::read_text_file(a + "/config.json"))["quantization_config"];
  EXPECT_EQ(q["checkpoint_format"], "gptq_v2");
  EXPECT_EQ(q["sym"], false);
  EXPECT_EQ(q["meta"]["grid"], "minmax");  // RTN's default grid: the reference's baseline
  const double ppl = calib_ppl(a, kBaby);
  EXPECT_LT(ppl, 3.3);  // reference RTN 4-bit g128 sym: 3.116
}

TEST(Quantize, BadInputIsRefusedAndNothingIsWritten) {
  NEED_SHARED(kBaby);
  const std::string src = shared_path("models/babyllama-361");
  const std::string out = out_dir("bad");
  auto o = calib_options(kBaby);
  o.nsamples = 5000;  // tiny.utf8 has ~1019 windows of 256
  EXPECT_NE(error_of([&] { gptq::quantize_model(src, out, o); }).find("too short"), std::string::npos);
  o = calib_options(kBaby);
  o.bits = 5;
  EXPECT_NE(error_of([&] { gptq::quantize_model(src, out, o); }).find("bits"), std::string::npos);
  o = calib_options(kBaby);
  o.group_size = 0;
  EXPECT_NE(error_of([&] { gptq::quantize_model(src, out, o); }).find("group"), std::string::npos);
  o = calib_options(kBaby);
  o.calibration_file.clear();
  EXPECT_NE(error_of([&] { gptq::quantize_model(src, out, o); }).find("--calibration"), std::string::npos);
  EXPECT_FALSE(fs::exists(out));

  // interrupted: nothing at out, no partial folder left beside it
  o = calib_options(kBaby);
  o.nsamples = 8;
  std::atomic<bool> cancel{true};
  o.cancel = &cancel;
  EXPECT_NE(error_of([&] { gptq::quantize_model(src, out, o); }).find("interrupted"), std::string::npos);
  EXPECT_FALSE(fs::exists(out));
  for (const auto& e : fs::directory_iterator(fs::path(out).parent_path()))
    EXPECT_EQ(e.path().filename().string().find(".gptq_q_bad"), std::string::npos) << e.path();

  // an existing output folder without --force; a quantized model as input
  o.cancel = nullptr;
  o.method = "rtn";
  gptq::quantize_model(src, out, o);
  EXPECT_NE(error_of([&] { gptq::quantize_model(src, out, o); }).find("exists"), std::string::npos);
  EXPECT_NE(error_of([&] { gptq::quantize_model(out, out_dir("bad2"), o); }).find("already quantized"),
            std::string::npos);
  o.force = true;
  gptq::quantize_model(src, out, o);  // replaced

  // the CLI: one line, exit code 2
  gptq_test::expect_cli_error(
      gptq_test::run_cli({"quantize", "-m", src, "-o", out, "--method", "rtn"}), {"exists", "--force"});
  gptq_test::expect_cli_error(gptq_test::run_cli({"quantize", "-m", src, "-o", out_dir("bad3"), "--bits", "5"}),
                              {"--bits"});
}

// ---- quality against reference_gptq.json ----------------------------------------------------

struct RefConfig {
  const char* model;
  const char* method;
  int bits, group;
  bool desc_act, sym;
  bool slow;   // left out of the default (CI) run: see scripts/test.sh --all
  double tol;  // ours <= reference * (1 + tol): measured per configuration, see ref_configs()
};

const Calib& calib_of(const std::string& model) { return model == kBaby.model ? kBaby : kGutenberg; }

std::string ref_name(const RefConfig& c) {
  std::string n = std::string(c.slow ? "Slow_" : "") + c.model + "_" + c.method + std::to_string(c.bits) + "b_g" +
                  (c.group < 0 ? std::string("all") : std::to_string(c.group)) + (c.desc_act ? "_actorder" : "") +
                  (c.sym ? "_sym" : "_asym");
  for (auto& ch : n)
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return n;
}

// The reference's calib_ppl for a configuration, or 0 when absent.
double reference_ppl(const RefConfig& c, const std::string& method) {
  const std::string p = shared_path(std::string("golden/") + c.model + "/reference_gptq.json");
  const json ref = json::parse(gptq::read_text_file(p));
  for (const auto& r : ref["results"])
    if (r["method"] == method && r["bits"] == c.bits && r["group_size"] == c.group && r["desc_act"] == c.desc_act &&
        r["sym"] == c.sym)
      return r["calib_ppl"].get<double>();
  return 0;
}

// With the reference's order and grid (whatever the defaults), or with our defaults.
enum class QuantWith { kReference, kDefaults };

double quantized_ppl(const RefConfig& c, const std::string& method, QuantWith with = QuantWith::kReference) {
  const Calib& cal = calib_of(c.model);
  auto o = calib_options(cal);
  o.method = method;
  o.bits = c.bits;
  o.group_size = c.group;
  o.sym = c.sym;
  if (with == QuantWith::kReference) {
    o.order = c.desc_act ? "act" : "natural";
    o.grid = "minmax";
  }
  const std::string dir = out_dir(ref_name(c) + "_" + method + (with == QuantWith::kDefaults ? "_defaults" : ""));
  gptq::quantize_model(shared_path(std::string("models/") + c.model), dir, o);
  const double ppl = calib_ppl(dir, cal);
  fs::remove_all(dir);
  return ppl;
}

void PrintTo(const RefConfig& c, std::ostream* os) { *os << ref_name(c); }

class ReferenceQuality : public ::testing::TestWithParam<RefConfig> {};

// Each configuration of the reference lands within its own measured tolerance of the reference's
// perplexity (or below it: the check is one-sided). The tolerances and how they were measured are in
// ref_configs().
TEST_P(ReferenceQuality, WithinMeasuredSpreadOfTheGptqAuthorsSolver) {
  const RefConfig& c = GetParam();
  if (!gptq_test::is_dir(shared_path(std::string("models/") + c.model)))
    GTEST_SKIP() << "../shared/models/" << c.model << " not found: skipped";
  const double want = reference_ppl(c, c.method);
  ASSERT_GT(want, 0) << "configuration not in reference_gptq.json";
  const double got = quantized_ppl(c, c.method);
  std::printf("[ quality  ] %s: ppl %.4f, reference %.4f (%+.2f %%, tolerance %.1f %%)\n", ref_name(c).c_str(), got,
              want, 100 * (got / want - 1), 100 * c.tol);
  EXPECT_LE(got, want * (1 + c.tol));
  if (std::string(c.method) == "gptq" && (c.bits == 3 || c.bits == 4) && c.group == 128 && !c.desc_act && c.sym) {
    // GPTQ beats round-to-nearest on the same grid.
    const double rtn = quantized_ppl(c, "rtn");
    std::printf("[ quality  ] %s: RTN ppl %.4f\n", ref_name(c).c_str(), rtn);
    EXPECT_LT(got, rtn);
  }
}

// The configurations of reference_gptq.json (both models have the same list), each with its tolerance.
//
// How the tolerances were measured: scripts/quality_spread.sh, 2026-12-01, at commit 4476853 (quantization
// reproducible: the same bytes on any CPU and thread count). Repeating a run measures nothing, so each
// configuration was quantized with the damping perturbed around the default 0.01, a small change to the
// arithmetic that moves the solver's rounding decisions the way another floating-point summation order
// does: babyllama-361 at damp 0.0095, 0.0098, 0.01, 0.0102, 0.0105 (n = 5); llama-gutenberg-22m at 0.0098,
// 0.01, 0.0102 (n = 3). RTN uses no Hessian: one run. tol = max(1 %, (mean + 3 sd) / ref - 1), rounded up to
// 0.1 % (sd: sample sd; one-sided because the check is). The numbers after each entry are mean and sd of
// ours relative to the reference's calib_ppl; the full tables are in docs/quality-spread.md. Entries marked
// "not measured" keep the 1 % floor the test had before.
std::vector<RefConfig> ref_configs() {
  const char* b = "babyllama-361";
  const char* g = "llama-gutenberg-22m";
  return {
      // babyllama-361: cheap (seconds per configuration), all run by default but 2-bit.
      {b, "rtn", 4, 128, false, true, false, 0.010},  // one run (RTN): -0.00 %
      {b, "gptq", 4, 128, false, true, false, 0.011},  // n 5: mean +0.17 %, sd 0.28 %, max +0.52 %
      {b, "gptq", 4, 128, true, true, false, 0.010},  // n 5: mean +0.25 %, sd 0.04 %, max +0.30 %
      {b, "gptq", 4, -1, false, true, false, 0.010},  // n 5: mean -0.41 %, sd 0.44 %, max +0.09 %
      {b, "gptq", 4, 128, false, false, false, 0.018},  // n 5: mean +0.73 %, sd 0.33 %, max +0.96 %
      {b, "rtn", 3, 128, false, true, false, 0.010},  // one run (RTN): +0.00 %
      {b, "gptq", 3, 128, false, true, false, 0.047},  // n 5: mean +2.60 %, sd 0.67 %, max +3.44 %
      {b, "gptq", 3, 128, true, true, false, 0.034},  // n 5: mean +1.19 %, sd 0.73 %, max +2.11 %
      {b, "gptq", 8, 128, false, true, false, 0.010},  // n 5: mean -0.02 %, sd 0.01 %, max -0.01 %
      // Slow_: its spread (sd 2 % of the value, runs from -0.7 % to +4.2 %) is too wide to judge 2-bit
      // quality by; llama-gutenberg-22m's 2-bit case does that by default.
      {b, "gptq", 2, 64, true, true, true, 0.082},  // n 5: mean +1.79 %, sd 2.12 %, max +4.21 %
      {b, "gptq", 4, 32, false, true, false, 0.010},  // n 5: mean -0.24 %, sd 0.38 %, max +0.22 %
      // llama-gutenberg-22m: minutes per configuration; 4-bit and 3-bit g128 (with the RTN comparison) and
      // 2-bit g64 act-order run by default, where the 2-bit quality is judged.
      {g, "rtn", 4, 128, false, true, true, 0.010},  // not measured
      {g, "gptq", 4, 128, false, true, false, 0.010},  // n 3: mean -0.04 %, sd 0.10 %, max +0.05 %
      {g, "gptq", 4, 128, true, true, true, 0.010},  // not measured
      {g, "gptq", 4, -1, false, true, true, 0.010},  // not measured
      {g, "gptq", 4, 128, false, false, true, 0.010},  // not measured
      {g, "rtn", 3, 128, false, true, true, 0.010},  // not measured
      {g, "gptq", 3, 128, false, true, false, 0.010},  // n 3: mean -0.43 %, sd 0.07 %, max -0.38 %
      {g, "gptq", 3, 128, true, true, true, 0.010},  // not measured
      {g, "gptq", 8, 128, false, true, true, 0.010},  // not measured
      {g, "gptq", 2, 64, true, true, false, 0.019},  // n 3: mean +0.24 %, sd 0.52 %, max +0.74 %
      {g, "gptq", 4, 32, false, true, true, 0.010},  // not measured
  };
}

INSTANTIATE_TEST_SUITE_P(Reference, ReferenceQuality, ::testing::ValuesIn(ref_configs()),
                         [](const auto& info) { return ref_name(info.param); });

// Issue 13: with our defaults (mse grid, act-order with static groups) no configuration of the
// reference table lands worse than the reference by more than its measured spread. babyllama-361's
// configurations (seconds each) run by default; llama-gutenberg-22m's, where the gains are measured
// (docs/measurements.md), with the Slow_ ones.
class DefaultQuality : public ::testing::TestWithParam<RefConfig> {};

TEST_P(DefaultQuality, NoWorseThanTheReferenceBeyondItsSpread) {
  const RefConfig& c = GetParam();
  if (!gptq_test::is_dir(shared_path(std::string("models/") + c.model)))
    GTEST_SKIP() << "../shared/models/" << c.model << " not found: skipped";
  const double want = reference_ppl(c, c.method);
  ASSERT_GT(want, 0) << "configuration not in reference_gptq.json";
  const double got = quantized_ppl(c, c.method, QuantWith::kDefaults);
  std::printf("[ quality  ] %s with the defaults: ppl %.4f, reference %.4f (%+.2f %%, tolerance %.1f %%)\n",
              ref_name(c).c_str(), got, want, 100 * (got / want - 1), 100 * c.tol);
  EXPECT_LE(got, want * (1 + c.tol));
}

std::vector<RefConfig> default_configs() {
  std::vector<RefConfig> v;
  for (RefConfig c : ref_configs()) {
    if (std::string(c.method) != "gptq") continue;  // RTN has no order, and its grid stays minmax
    c.slow = c.slow || std::string(c.model) != kBaby.model;
    v.push_back(c);
  }
  return v;
}

INSTANTIATE_TEST_SUITE_P(Defaults, DefaultQuality, ::testing::ValuesIn(default_configs()),
                         [](const auto& info) { return ref_name(info.param); });

// quantize on the GPU (calibration, Hessians, solver): the perplexity within the CPU's tolerance
// of the reference's (and of the CPU quantizer's own on babyllama-361, which is cheap), the same
// bytes twice (the library, then `gptq quantize --device cuda`). The GPU's calibration activations differ from the CPU's (cuBLASLt, fp16 inputs of
// the fp16 layers), so the checkpoints are not the CPU's; their quality is.
TEST(CudaQuantize, SameQualityAsTheCpuQuantizer) {
  NEED_GPU();
  for (const RefConfig& c : ref_configs()) {
    const bool baby = std::string(c.model) == kBaby.model;
    if (std::string(c.method) != "gptq" || c.bits != 4 || c.group != 128 || c.desc_act || !c.sym) continue;
    if (!gptq_test::is_dir(shared_path(std::string("models/") + c.model))) continue;
    const Calib& cal = calib_of(c.model);
    auto o = calib_options(cal);
    o.grid = "minmax";  // the reference's grid and order
    o.order = "natural";
    o.backend = gptq_test::gpu();
    const std::string src = shared_path(std::string("models/") + c.model), a = out_dir("cuda_a"), b = out_dir("cuda_b");
    const auto rep = gptq::quantize_model(src, a, o);
    EXPECT_EQ(rep.modules.size(), size_t(7 * gptq::ModelConfig::from_dir(src).num_layers));
    const double got = calib_ppl(a, cal), want = reference_ppl(c, "gptq");
    std::printf("[ quality  ] %s on the GPU: ppl %.4f, reference %.4f (%+.2f %%, tolerance %.1f %%)\n",
                ref_name(c).c_str(), got, want, 100 * (got / want - 1), 100 * c.tol);
    EXPECT_LE(got, want * (1 + c.tol)) << c.model;
    if (baby) {
      // The same bytes again, and from the command line (--device cuda, the same options).
      const auto r = gptq_test::run_cli({"quantize", "-m", src, "-o", b, "--calibration", shared_path(cal.file), "--seqlen",
                                         std::to_string(cal.ctx), "--nsamples", "128", "--grid", "minmax", "--order",
                                         "natural", "--device", "cuda", "-q"});
      ASSERT_EQ(r.rc, 0) << r.err;
      EXPECT_EQ(gptq::read_text_file(a + "/model.safetensors"), gptq::read_text_file(b + "/model.safetensors"));
      o.backend = nullptr;
      fs::remove_all(b);
      gptq::quantize_model(src, b, o);
      const double cpu = calib_ppl(b, cal);
      std::printf("[ quality  ] %s on the CPU: ppl %.4f\n", ref_name(c).c_str(), cpu);
      EXPECT_LE(std::abs(got / cpu - 1), c.tol) << "GPU " << got << " CPU " << cpu;
    }
    fs::remove_all(a);
    fs::remove_all(b);
  }
}

}  // namespace

namespace {

// A Qwen2-style model (q/k/v biases) made from babyllama-361 with random biases: the biases must
// survive quantization (stored fp16 next to qweight) and be applied when the checkpoint runs.
TEST(Quantize, Qwen2BiasesSurviveQuantization) {
  NEED_SHARED(kBaby);
  const std::string src = shared_path("models/babyllama-361");
  const fs::path dir = fs::path(testing::TempDir()) / "gptq_q_qwen2";
  fs::remove_all(dir);
  fs::create_directories(dir);
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) fs::copy_file(fs::path(src) / f, dir / f);
  json cfg = json::parse(gptq::read_text_file(src + "/config.json"));
  cfg["architectures"] = {"Qwen2ForCausalLM"};
  cfg["model_type"] = "qwen2";
  gptq::write_file_atomic((dir / "config.json").string(), cfg.dump());
  gptq::SafetensorsFile f(src + "/model.safetensors");
  std::vector<gptq::TensorToWrite> ts;
  for (const auto& [name, t] : f.tensors()) ts.push_back({name, t.dtype, t.shape, t.data, t.nbytes});
  std::deque<std::vector<float>> biases;
  uint32_t seed = 1;
  for (int l = 0; l < 5; ++l)
    for (const char* p : {"q_proj", "k_proj", "v_proj"}) {
      const int64_t n = std::string(p) == "q_proj" ? 128 : 64;
      auto& b = biases.emplace_back(static_cast<size_t>(n));
      for (auto& v : b) v = float((seed = seed * 1664525u + 1013904223u) >> 8) / float(1 << 24) - 0.5f;
      ts.push_back({"model.layers." + std::to_string(l) + ".self_attn." + p + ".bias", gptq::DType::kF32, {n},
                    b.data(), b.size() * 4});
    }
  gptq::write_safetensors((dir / "model.safetensors").string(), ts);

  gptq::QuantizeOptions o;
  o.method = "rtn";
  o.bits = 8;
  o.progress = false;
  const std::string out = out_dir("qwen2_q");
  gptq::quantize_model(dir.string(), out, o);
  gptq::SafetensorsFile q(out + "/model.safetensors");
  ASSERT_TRUE(q.tensors().count("model.layers.2.self_attn.k_proj.bias"));
  EXPECT_EQ(q.tensors().at("model.layers.2.self_attn.k_proj.bias").dtype, gptq::DType::kF16);

  auto run = [](const std::string& d) {
    auto m = gptq::Model::load(d);
    const std::vector<int32_t> ids = {1, 259, 289, 260, 270, 270, 263, 259, 273};
    auto c = m->new_cache();
    std::vector<float> logits;
    m->forward(*c, ids.data(), int64_t(ids.size()), false, logits);
    return logits;
  };
  const auto with_bias = run(dir.string()), quantized = run(out), original = run(src);
  auto rel = [](const std::vector<float>& a, const std::vector<float>& b) {
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); ++i) num += (a[i] - b[i]) * (a[i] - b[i]), den += a[i] * a[i];
    return std::sqrt(num / den);
  };
  EXPECT_GT(rel(with_bias, original), 0.05);   // the biases matter
  EXPECT_LT(rel(with_bias, quantized), 0.02);  // and the 8-bit checkpoint keeps them
}

}  // namespace
