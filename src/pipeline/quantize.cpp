// The quantization pipeline: calibration inputs flow through the decoder layer by layer; each
// layer's linears are quantized in true-sequential groups from the Hessians of their inputs, the
// layer then runs with its quantized weights to produce the next layer's inputs (IST-DASLab/gptq
// llama_sequential, AutoGPTQ/GPTQModel).
#include <chrono>
#include <cmath>
#include <deque>
#include <map>
#include <optional>
#include <nlohmann/json.hpp>

#include "core/checked.h"
#include "core/fs.h"
#include "core/json.h"
#include "core/memory.h"
#include "core/half.h"
#include "core/progress.h"
#include "gptq/error.h"
#include "gptq/model.h"
#include "gptq/quantize.h"
#include "gptq/safetensors.h"
#include "gptq/tokenizer.h"
#include "gptq/version.h"
#include "io/checkpoint_writer.h"
#include "pipeline/merge_lora.h"
#include "backend/backend.h"
#include "backend/cpu/cpu_backend.h"
#include "quant/gptq.h"
#include "quant/refit.h"
#include "quant/solver.h"
#include "backend/cpu/hessian.h"

namespace gptq {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

void check_options(const QuantizeOptions& o) {
  quant::check_bits(o.bits);
  if (o.group_size == 0 || o.group_size < -1) fail("--group-size must be -1 or positive, got ", o.group_size);
  if (o.method != "gptq" && o.method != "rtn") fail("--method must be gptq or rtn, got \"", o.method, "\"");
  if (!o.grid.empty()) quant::parse_grid(o.grid);
  if (!o.refit.empty() && quant::parse_refit(o.refit) != quant::Refit::kNone && o.method != "gptq")
    fail("--refit ", o.refit, " needs the GPTQ Hessian: it cannot be combined with --method ", o.method);
  if (!o.order.empty() && o.order != "natural" && o.order != "act" && o.order != "act-static" && o.order != "group")
    fail("--order must be natural, act, act-static or group, got \"", o.order, "\"");
  if ((o.order == "group" || o.order == "natural") && o.desc_act)
    fail("--order ", o.order, " keeps the non-act-order layout: it cannot be combined with --desc-act");
  if ((o.order == "group" || o.order == "natural") && o.static_groups)
    fail("--static-groups is act-order's (--order act-static): it cannot be combined with --order ", o.order);
  if (o.format != "gptq" && o.format != "gptq_v2") fail("--format must be gptq or gptq_v2, got \"", o.format, "\"");
  if (!(o.damp_percent > 0 && o.damp_percent < 1)) fail("--damp must be in (0, 1), got ", o.damp_percent);
  if (o.method == "gptq") {
    if (o.calibration_file.empty()) fail("GPTQ needs calibration text: give --calibration FILE");
    if (o.nsamples <= 0) fail("--nsamples must be positive, got ", o.nsamples);
    if (o.seqlen < 0) fail("--seqlen must be positive, got ", o.seqlen);
    if (o.calib_offset < 0) fail("--calib-offset must be >= 0, got ", o.calib_offset);
    // The calibration tokens, (offset + n) x seqlen, are indexed as int64: refuse a product that wraps.
    checked_mul(checked_add(o.calib_offset, o.nsamples, "--calib-offset + --nsamples"), std::max<int64_t>(o.seqlen, 1),
                "(--calib-offset + --nsamples) x --seqlen");
  }
}

// adapters: the LoRA adapters merged into the model (merge_lora.h), recorded when there are any.
std::string quant_config_json(const QuantizeOptions& o, const nlohmann::ordered_json& adapters) {
  nlohmann::ordered_json q;
  q["bits"] = o.bits;
  q["group_size"] = o.group_size;
  q["damp_percent"] = o.damp_percent;
  q["desc_act"] = o.desc_act;
  q["static_groups"] = o.static_groups;
  q["sym"] = o.sym;
  q["true_sequential"] = o.true_sequential;
  q["quant_method"] = "gptq";
  q["checkpoint_format"] = o.format;
  q["model_name_or_path"] = nullptr;
  q["model_file_base_name"] = "model";
  q["meta"] = {{"quantizer", {std::string("gptq.cpp:") + version()}},
               {"method", o.method},
               {"grid", o.grid},
               {"refit", o.refit},
               {"order", o.order},
               {"calibration_windows", o.method == "gptq" ? o.nsamples : 0},
               {"calibration_seqlen", o.method == "gptq" ? o.seqlen : 0}};
  if (!adapters.empty()) q["meta"]["lora_adapters"] = adapters;
  return q.dump(2);
}

}  // namespace

uint64_t parse_size(const std::string& s) {
  size_t pos = 0;
  double v = 0;
  try {
    v = std::stod(s, &pos);
  } catch (const std::exception&) {
    fail("cannot read size \"", s, "\" (e.g. 5GB, 500MB, 2GiB)");
  }
  std::string unit = s.substr(pos);
  for (auto& c : unit) c = char(std::toupper(static_cast<unsigned char>(c)));
  static const std::map<std::string, double> units = {{"", 1},      {"B", 1},          {"KB", 1e3},
                                                      {"MB", 1e6},  {"GB", 1e9},       {"TB", 1e12},
                                                      {"KIB", 1024}, {"MIB", 1048576.}, {"GIB", 1073741824.}};
  auto it = units.find(unit);
  if (it == units.end() || !std::isfinite(v)) fail("cannot read size \"", s, "\" (e.g. 5GB, 500MB, 2GiB)");
  const double bytes = v * it->second;
  if (!(bytes >= 1) || bytes > 0x1p62) fail("size \"", s, "\" must be between 1 byte and 4 EiB");
  return uint64_t(bytes);
}

QuantizeReport quantize_model(const std::string& model_dir, const std::string& out_dir, const QuantizeOptions& opts_in) {
  const auto t_start = Clock::now();
  QuantizeOptions o = opts_in;
  check_options(o);
  if (o.grid.empty()) o.grid = o.method == "gptq" ? "mse" : "minmax";
  if (o.refit.empty()) o.refit = "none";
  const quant::Refit refit = quant::parse_refit(o.refit);
  // The order, resolved: desc_act and static_groups are what config.json records.
  if (o.order.empty())
    o.order = o.desc_act ? (o.static_groups ? "act-static" : "act") : o.method == "gptq" ? "act-static" : "natural";
  if (o.order == "act" && o.static_groups) o.order = "act-static";
  o.desc_act = o.order == "act" || o.order == "act-static";
  o.static_groups = o.order == "act-static";
  const bool synthetic = !o.synthetic.empty();
  if (synthetic) {
    if (!model_dir.empty() || !out_dir.empty())
      fail("--synthetic makes the model and writes nothing: give neither -m nor -o");
    if (!o.lora_adapter.empty()) fail("--lora cannot be combined with --synthetic (there are no base weights)");
    if (o.method == "gptq" && o.tokenizer_dir.empty())
      fail("--synthetic needs --tokenizer DIR: a model folder whose tokenizer reads the --calibration text");
  } else if (!o.tokenizer_dir.empty()) {
    fail("--tokenizer is for --synthetic: a model folder's own tokenizer reads its calibration text");
  }
  // -o is checked now and created only once the inputs have been read (CheckpointOutput::open).
  std::optional<CheckpointOutput> output;
  if (!synthetic) {
    std::vector<InputFolder> inputs = {{model_dir, "-m"}};
    if (!o.lora_adapter.empty()) inputs.push_back({o.lora_adapter, "--lora", "adapter folder"});
    output.emplace(out_dir, inputs, std::vector<std::string>{o.calibration_file}, o.force);
  }
  QuantizeReport rep;
  rep.out_dir = out_dir;
  auto cancelled = [&] {
    if (o.cancel && o.cancel->load()) fail("interrupted: nothing was written to ", out_dir);
  };

  // --lora: the adapter merged in memory, as gptq merge-lora would write it; the model and the
  // checkpoint's unquantized tensors read the merged tensors in place of the folder's.
  std::optional<MergedTensors> lora;
  if (!o.lora_adapter.empty()) {
    lora.emplace(merge_lora_in_memory(model_dir, o.lora_adapter));
    rep.warnings = lora->warnings;
  }
  // Recorded in quantize_config.json: what --lora merged, or what merge-lora merged into -m.
  const nlohmann::ordered_json adapters = lora ? lora->adapters : synthetic ? nlohmann::ordered_json() : merged_adapters(model_dir);
  // On a device, one decoder layer's weights at a time (made from the mapped files, or the
  // synthetic formula, when the layer starts; dropped when it is done): a model quantizes on a GPU
  // that could not hold it.
  const bool defer = o.stream_layers == 1 || (o.stream_layers < 0 && o.backend && o.backend->device() != Device::kCpu);
  std::unique_ptr<Model> model;
  if (synthetic) {
    SyntheticOptions so;
    so.threads = o.threads;
    so.layers = o.synthetic_layers;
    so.backend = o.backend;
    so.defer_layers = defer;
    so.fuse_linears = false;  // every linear on its own: calibrated and replaced one by one
    model = Model::synthetic(o.synthetic, so);
  } else {
    LoadOptions lo;
    lo.threads = o.threads;
    lo.backend = o.backend;
    lo.replace = lora ? &lora->tensors : nullptr;
    lo.defer_layers = defer;
    lo.fuse_linears = false;
    model = Model::load(model_dir, lo);
  }
  const std::string source = synthetic ? model->dir() : model_dir;  // names the model in messages
  Backend& be = model->backend();
  const ModelConfig& cfg = model->config();
  if (cfg.quant) fail(source, ": the model is already quantized (", cfg.quant->bits, "-bit GPTQ): quantize the original");
  quant::QuantSpec spec;
  spec.bits = o.bits;
  spec.group_size = o.group_size;
  spec.sym = o.sym;
  spec.desc_act = o.desc_act;
  spec.static_groups = o.static_groups;
  spec.grid = quant::parse_grid(o.grid);
  spec.group_order = o.order == "group";
  spec.damp_percent = o.damp_percent;
  for (int64_t N : {cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim,
                    cfg.intermediate_size}) {
    try {
      quant::qzeros_cols(N, o.bits);
    } catch (const Error& e) {
      fail(source, ": cannot quantize a layer with ", N, " outputs: ", e.what());
    }
  }
  for (int64_t K : {cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.intermediate_size}) {
    try {
      quant::check_spec(spec, K);
      quant::qweight_rows(K, o.bits);
    } catch (const Error& e) {
      fail(source, ": cannot quantize a layer with ", K, " inputs: ", e.what());
    }
  }
  const quant::QuantFormat fmt = o.format == "gptq_v2" ? quant::QuantFormat::kGptqV2 : quant::QuantFormat::kGptqV1;
  const int64_t H = cfg.hidden_size;

  // Calibration windows: the file tokenized once (BOS at the start), windows offset..offset+n-1.
  std::vector<int32_t> calib;
  if (o.method == "gptq") {
    if (o.seqlen == 0) o.seqlen = std::min<int64_t>(model->context_length(), 2048);
    if (o.seqlen > model->context_length())
      fail("--seqlen ", o.seqlen, " exceeds the model's context length ", model->context_length());
    const Tokenizer tok = Tokenizer::from_model_dir(synthetic ? o.tokenizer_dir : model_dir);
    const std::vector<int32_t> ids = tok.encode(read_text_file(o.calibration_file), true);
    for (int32_t id : ids)
      if (id < 0 || id >= model->vocab_size())
        fail(synthetic ? "--tokenizer " + o.tokenizer_dir : model_dir + "'s tokenizer", ": token id ", id,
             " of the calibration text is outside ", source, "'s vocabulary of ", model->vocab_size());
    const int64_t need = checked_mul(checked_add(o.calib_offset, o.nsamples, "--calib-offset + --nsamples"),
                                     o.seqlen, "(--calib-offset + --nsamples) x --seqlen");
    if (int64_t(ids.size()) < need)
      fail(o.calibration_file, ": ", ids.size(), " tokens, too short for windows ", o.calib_offset, "..",
           o.calib_offset + o.nsamples - 1, " of ", o.seqlen, " tokens (needs ", need, ")");
    calib.assign(ids.begin() + o.calib_offset * o.seqlen, ids.begin() + need);
    rep.calibration_tokens = int64_t(calib.size());
  }
  // The inputs are good: create the (locked, temporary) output folder before the long work, so an
  // output that cannot be written fails now, naming -o.
  if (output) output->open();
  rep.seconds_load = since(t_start);
  // Host work (packing, errors; the solver on the CPU) runs on the CPU backend's threads (or a
  // pool of its own); the solver runs where the backend keeps the Hessians (quant/solver.h).
  std::unique_ptr<ThreadPool> own_pool;
  auto* cpu_be = dynamic_cast<CpuBackend*>(&be);
  if (!cpu_be) own_pool = std::make_unique<ThreadPool>(o.threads);
  ThreadPool& pool = cpu_be ? cpu_be->pool() : *own_pool;
  const std::unique_ptr<quant::Solver> solver = quant::make_solver(be, pool, refit);
  // The calibration path runs fixed-order kernels: the same bytes on any CPU and thread count.
  be.set_deterministic(true);

  const int64_t n = o.method == "gptq" ? o.nsamples : 0, T = o.seqlen;
  const bool stream = !model->layer_loaded(0);  // LoadOptions::defer_layers: one layer at a time
  const int64_t A = cfg.num_heads * cfg.head_dim;
  // X: [n*T, H] the current layer's input for every window (true-sequential: updated in place to
  // x + o(att) once o_proj is quantized); ATT: [n*T, A] the attention outputs.
  std::shared_ptr<void> x_mem, att_mem, scratch_mem, act_mem;
  Tensor X, ATT, scratch;
  // ACT: [n*T, intermediate] down's inputs, when kept (QuantizeOptions::keep_mlp_inputs).
  Tensor ACT;
  bool keep_act = false;
  // Host mode (QuantizeOptions::host_activations): X and ATT are one window each on the backend,
  // every window's in Xh / ATTh.
  bool host_acts = false;
  std::vector<float> Xh, ATTh;
  auto cache = model->new_cache(std::max<int64_t>(T, 1));
  const int64_t seq = cache->add_sequence();
  // One window = one sequence at positions 0..T-1 (the cache is emptied before each).
  BatchPlan layer_plan;
  auto window_plan = [&](int64_t w) {
    cache->truncate(seq, 0);
    Batch b;
    b.add(seq, calib.data() + w * T, T, Logits::kNone);
    return model->plan(b, *cache);
  };
  if (n > 0) {
    // Every window's layer input and attention output stay resident: refuse up front, not after
    // minutes of calibration.
    // Streaming, the first layer is still to come: it must fit next to them.
    const uint64_t layer = stream ? model->layer_file_bytes(0) : 0;
    const uint64_t acts = uint64_t(n * T) * uint64_t(H + A) * 4;
    const std::string what = layer ? cat("calibration on ", n, " windows of ", T, " tokens and one decoder layer (",
                                         format_bytes(layer), ")")
                                   : cat("calibration on ", n, " windows of ", T, " tokens");
    const uint64_t avail = be.available_bytes();
    host_acts = o.host_activations == 1 ||
                (o.host_activations < 0 && be.device() != Device::kCpu && acts + layer > avail);
    const uint64_t act_bytes = uint64_t(n * T) * uint64_t(cfg.intermediate_size) * 4;
    keep_act = o.true_sequential && !host_acts &&
               (o.keep_mlp_inputs == 1 ||
                (o.keep_mlp_inputs < 0 && acts + layer <= avail && act_bytes <= (avail - acts - layer) / 2));
    if (host_acts) {  // the activations in host memory, one window and the layer on the backend
      check_memory(acts, available_memory(), cat(what, ": its activations in host memory"));
      check_memory(uint64_t(T) * uint64_t(H + A) * 4 + layer, be.available_bytes(), what);
      Xh.resize(size_t(n * T * H));
      ATTh.resize(size_t(n * T * A));
      X = be.alloc_f32(T, H, x_mem);
      ATT = be.alloc_f32(T, A, att_mem);
      if (o.progress)
        std::fprintf(stderr, "quantize: the calibration activations (%s) do not fit next to the layer on %s: "
                             "held in host memory, a window at a time on the device\n",
                     format_bytes(acts).c_str(), be.name().c_str());
    } else {
      check_memory(acts + layer + (keep_act ? act_bytes : 0), avail,
                   keep_act ? cat(what, ", keeping down's inputs") : what);
      X = be.alloc_f32(n * T, H, x_mem);
      ATT = be.alloc_f32(n * T, A, att_mem);
      if (keep_act) ACT = be.alloc_f32(n * T, cfg.intermediate_size, act_mem);
    }
    if (!o.true_sequential) scratch = be.alloc_f32(T, H, scratch_mem);
    for (int64_t w = 0; w < n; ++w) {
      if (!host_acts) {
        model->embed(window_plan(w), X.slice_rows(w * T, T));
        continue;
      }
      model->embed(window_plan(w), X);
      be.to_host(X, Xh.data() + w * T * H);
    }
    // Every window is positions 0..T-1 of the same sequence, never committed: one plan (and its
    // RoPE angles) serves every window of every layer; only the embedding above needs the tokens.
    layer_plan = window_plan(0);
  }

  // Accumulates the Hessians of the stages it is asked for and stops the layer after `stop`. On
  // a device (asynchronous ops) the work queued before and by each add is waited for, so that the
  // report's forward and Hessian times are the device's, not the host's launch times.
  struct Tap final : LayerObserver {
    explicit Tap(Backend& b) : be(b) {}
    Backend& be;
    std::unique_ptr<HessianAccumulator> acc[4];
    Stage stop = Stage::kDone;
    Tensor keep;  // set: where down's input (kMlpOut) is copied
    double seconds = 0;
    bool observe(int64_t, Stage s, const Tensor& x) override {
      if (s == Stage::kMlpOut && keep.data) be.copy(x, keep);
      if (acc[int(s)]) {
        be.synchronize();  // a no-op on the CPU
        const auto t0 = Clock::now();
        acc[int(s)]->add(x, 1);
        be.synchronize();
        seconds += since(t0);
      }
      return s != stop;
    }
  } tap(be);
  // Runs layer l over every window from stage `from`, through the tap.
  auto run_windows = [&](int64_t l, Stage from, bool on_copy) {
    const auto t0 = Clock::now();
    tap.seconds = 0;
    for (int64_t w = 0; w < n; ++w) {
      cancelled();
      float* xh = host_acts ? Xh.data() + w * T * H : nullptr;
      float* atth = host_acts ? ATTh.data() + w * T * A : nullptr;
      Tensor x = host_acts ? X : X.slice_rows(w * T, T), att = host_acts ? ATT : ATT.slice_rows(w * T, T);
      if (from == Stage::kMlpOut) att = ACT.slice_rows(w * T, T);  // down's input, kept
      tap.keep = keep_act && tap.stop == Stage::kMlpOut ? ACT.slice_rows(w * T, T) : Tensor{};
      if (host_acts) {
        be.from_host(xh, x);
        if (from == Stage::kAttnOut) be.from_host(atth, att);  // read only when resuming there
      } else if (on_copy) {  // leaves X as it was
        be.copy(x, scratch);
        x = scratch;
      }
      model->run_layer(l, layer_plan, *cache, x, att, from, &tap);
      if (host_acts) {  // back what the run changed: att when it ran attention, x past the o add
        if (from == Stage::kAttnIn && tap.stop != Stage::kAttnIn) be.to_host(att, atth);
        if (!on_copy && tap.stop >= Stage::kMlpIn) be.to_host(x, xh);
      }
    }
    be.synchronize();
    rep.seconds_hessian += tap.seconds;
    rep.seconds_forward += since(t0) - tap.seconds;
  };

  std::map<std::string, quant::PackedQuant> packed;
  Progress bar("quantize", cfg.num_layers * 7, o.progress);
  int64_t done = 0;
  // Quantizes the linears `slots` of layer l from the Hessian in `acc` (null for RTN) and swaps
  // them for their dequantized versions, so that what runs next sees the quantized outputs.
  // A stage's linears read one input, so they share the Hessian, and GPTQ's (and RTN's) rows are
  // independent given it: they are solved stacked, as one [sum N, K] problem (q, k, v of
  // Llama-2-7B: one factorization instead of three, 12288 rows for the GPU instead of 4096), and
  // each part's rows sliced out of the result (quant::slice_rows; on the CPU exactly the bytes of
  // separate solves).
  auto quantize_slots = [&](int64_t l, const std::vector<LinearSlot>& slots, HessianAccumulator* acc) {
    cancelled();
    const auto t0 = Clock::now();
    const std::string layer = "model.layers." + std::to_string(l) + ".";
    const int64_t K = model->linear(l, slots[0]).in_features();
    std::vector<int64_t> first{0};  // each part's first row in the stack
    std::string names;              // "model.layers.0.self_attn.k_proj, v_proj, q_proj": the stage in messages
    for (LinearSlot s : slots) {
      const Weight& lin = model->linear(l, s);
      GPTQ_ASSERT(lin.in_features() == K, "the linears of one stage read inputs of one width");
      first.push_back(first.back() + lin.out_features());
      const std::string name = linear_slot_name(s);
      names += names.empty() ? layer + name : ", " + name.substr(name.rfind('.') + 1);
    }
    const int64_t N_all = first.back();
    bar.update(done, names);
    std::vector<float> W(size_t(N_all * K));  // [sum N, K] the parts' rows, stacked
    for (size_t i = 0; i < slots.size(); ++i) {
      const std::vector<float> w = model->linear(l, slots[i]).dense();
      std::copy(w.begin(), w.end(), W.begin() + first[i] * K);
    }
    quant::QuantResult all;
    if (o.method == "gptq") {
      try {
        all = solver->solve(W.data(), *acc, N_all, K, spec, false);  // Wq is not read here
      } catch (const Error& e) {
        fail(names, ": ", e.what());
      }
    } else {
      all = quant::rtn_quantize(pool, W.data(), N_all, K, spec);
    }
    const double solve_seconds = since(t0);
    rep.seconds_solve += solve_seconds;
    for (size_t i = 0; i < slots.size(); ++i) {
      const LinearSlot s = slots[i];
      const auto tp = Clock::now();
      const Weight& lin = model->linear(l, s);
      const int64_t N = lin.out_features();
      const std::string name = layer + linear_slot_name(s);
      const quant::QuantResult r = slots.size() == 1 ? std::move(all) : quant::slice_rows(all, first[i], N);
      const float* w = W.data() + first[i] * K;  // the part's original rows
      if (r.damp_retries > 0)
        rep.warnings.push_back(name + ": Hessian not positive definite at damp " + std::to_string(o.damp_percent) +
                               ", succeeded at " + std::to_string(r.damp_percent));
      const std::vector<float> bias = lin.bias();
      quant::PackedQuant pq = quant::pack_result(r, fmt, bias.empty() ? nullptr : bias.data(), &pool);
      if (pq.wrapped_zeros > 0)
        rep.warnings.push_back(name + ": " + std::to_string(pq.wrapped_zeros) +
                               " zero points of 0 wrap in the v1 format (loaders read them as 2^bits); "
                               "--format gptq_v2 stores them exactly");
      ModuleReport m;
      m.name = name;
      m.out_features = N;
      m.in_features = K;
      m.loss = r.loss;
      m.damp_percent = r.damp_percent;
      m.dead_columns = r.dead_columns;
      // ‖(W - Q)Xᵀ‖² / ‖W Xᵀ‖² with Q exactly what the checkpoint computes, where the Hessian is.
      if (acc) m.rel_error = solver->module_error(w, pq.view(), *acc);
      // What runs next sees the quantized outputs: on the CPU the exact dequantized W in fp32 (the
      // reference's arithmetic, bit-reproducible); on a device the checkpoint's own GPTQ weight, so
      // that device memory shrinks as the model is quantized (Llama-2-7B's linears: 12.6 GB in fp16,
      // 3.5 GB in 4 bits) instead of growing to fp32 (25 GB).
      const float* b = bias.empty() ? nullptr : bias.data();
      if (be.device() == Device::kCpu) {
        const std::vector<float> Q = quant::dequantize(pq.view(), &pool);  // exactly what the checkpoint computes
        model->set_linear(l, s, be.dense_weight({Q.data(), DType::kF32, N, K, b, true}));
      } else {
        model->set_linear(l, s, be.gptq_weight(pq.view(), b));
      }
      packed.emplace(name, std::move(pq));
      rep.seconds_pack += since(tp);
      // The stacked solve's time shared by rows, and the part's own packing.
      m.seconds = solve_seconds * double(N) / double(N_all) + since(tp);
      rep.modules.push_back(m);
      bar.update(++done, name);
    }
  };

  auto quantize_stage = [&](int64_t l, Stage st, HessianAccumulator* acc) {
    if (o.stack_stages) return quantize_slots(l, stage_slots(st), acc);
    for (LinearSlot s : stage_slots(st)) quantize_slots(l, {s}, acc);
  };

  const int64_t stage_k[4] = {H, A, H, cfg.intermediate_size};
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    if (stream) {
      model->load_layer(l);
      // The next layer's file pages are read in while this one works.
      if (l + 1 < cfg.num_layers) model->prefetch_layer(l + 1);
    }
    if (n == 0) {  // RTN needs no inputs
      for (int s = 0; s < 4; ++s) quantize_stage(l, Stage(s), nullptr);
      if (stream) model->release_layer(l);
      continue;
    }
    if (o.true_sequential) {
      // Each stage's linears are quantized before the next stage reads their outputs. A stage
      // resumes where the previous one stopped: kAttnIn → (q,k,v) → kAttnOut → (o, x += o(att)) →
      // kMlpIn → (gate, up) → kMlpOut.
      const Stage from[4] = {Stage::kAttnIn, Stage::kAttnIn, Stage::kAttnOut, Stage::kMlpIn};
      for (int s = 0; s < 4; ++s) {
        for (auto& a : tap.acc) a.reset();
        tap.acc[s] = be.hessian(stage_k[s]);
        tap.stop = Stage(s);
        run_windows(l, from[s], false);
        quantize_stage(l, Stage(s), tap.acc[s].get());
      }
      // x already holds x + o(att): the quantized MLP completes the layer (down alone, from its
      // inputs kept by the last pass, when they were).
      for (auto& a : tap.acc) a.reset();
      tap.stop = Stage::kDone;
      if (l + 1 < cfg.num_layers) run_windows(l, keep_act ? Stage::kMlpOut : Stage::kMlpIn, false);
    } else {
      // All Hessians from the original layer (on a copy of x), then everything is quantized.
      for (int s = 0; s < 4; ++s) tap.acc[s] = be.hessian(stage_k[s]);
      tap.stop = Stage::kDone;
      run_windows(l, Stage::kAttnIn, true);
      for (int s = 0; s < 4; ++s) quantize_stage(l, Stage(s), tap.acc[s].get());
      for (auto& a : tap.acc) a.reset();
      if (l + 1 < cfg.num_layers) run_windows(l, Stage::kAttnIn, false);
    }
    if (stream) model->release_layer(l);  // what the checkpoint needs is in `packed`
  }
  bar.finish();
  cancelled();
  rep.peak_device_bytes = be.device_bytes_peak();
  rep.peak_rss_bytes = peak_rss_bytes();
  if (synthetic) {  // timed, nothing to write
    rep.seconds_total = since(t_start);
    return rep;
  }

  // The checkpoint: quantized linears as qweight/qzeros/scales/g_idx(/bias), everything else fp16.
  const auto tw = Clock::now();
  CheckpointFiles files;
  std::deque<std::vector<uint16_t>> fp16;
  TensorStore store = TensorStore::open_dir(model_dir);
  if (lora) store.replace(lora->tensors);
  for (const auto& [name, t] : store.all()) {
    const size_t dot = name.rfind('.');
    const std::string prefix = name.substr(0, dot);
    if (packed.count(prefix) && (name.substr(dot + 1) == "weight" || name.substr(dot + 1) == "bias")) continue;
    if (t->dtype == DType::kF32 || t->dtype == DType::kBF16) {
      auto& v = fp16.emplace_back(static_cast<size_t>(t->numel()));
      for (int64_t i = 0; i < t->numel(); ++i) v[size_t(i)] = fp32_to_fp16(load_float(*t, i));
      files.tensors.push_back({name, DType::kF16, t->shape, v.data(), v.size() * 2});
    } else {
      files.tensors.push_back({name, t->dtype, t->shape, t->data, t->nbytes});
    }
  }
  for (const auto& [name, p] : packed) {
    const int64_t G = int64_t(p.scales.size()) / p.N;
    files.tensors.push_back({name + ".qweight", DType::kI32, {p.K * p.bits / 32, p.N}, p.qweight.data(), p.qweight.size() * 4});
    files.tensors.push_back({name + ".qzeros", DType::kI32, {G, p.N * p.bits / 32}, p.qzeros.data(), p.qzeros.size() * 4});
    files.tensors.push_back({name + ".scales", DType::kF16, {G, p.N}, p.scales.data(), p.scales.size() * 2});
    files.tensors.push_back({name + ".g_idx", DType::kI32, {p.K}, p.g_idx.data(), p.g_idx.size() * 4});
    if (!p.bias.empty()) files.tensors.push_back({name + ".bias", DType::kF16, {p.N}, p.bias.data(), p.bias.size() * 2});
  }
  nlohmann::ordered_json config = parse_ordered_json(read_text_file(path_join(model_dir, "config.json")), path_join(model_dir, "config.json"));
  const std::string qc = quant_config_json(o, adapters);
  config["quantization_config"] = nlohmann::ordered_json::parse(qc);
  config[config.contains("dtype") ? "dtype" : "torch_dtype"] = "float16";
  files.text_files = {{"config.json", config.dump(2) + "\n"}, {"quantize_config.json", qc + "\n"}};
  files.source_dir = model_dir;
  files.copy_from_source = copied_model_files();
  files.max_shard_bytes = o.max_shard_bytes;
  rep.out_bytes = output->commit(files, cancelled);  // Ctrl-C while writing: nothing replaced
  rep.seconds_write = since(tw);
  rep.seconds_total = since(t_start);
  return rep;
}

}  // namespace gptq
