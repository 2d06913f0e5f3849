// `gptq quantize`: a Hugging Face Llama-family model folder in, a GPTQ checkpoint out (the
// AutoGPTQ/GPTQModel format of DESIGN.md that transformers, vLLM and ExLlamaV2 load).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace gptq {

class Backend;

struct QuantizeOptions {
  int bits = 4;                 // 2, 3, 4, 8
  int group_size = 128;         // -1, 32, 64, 128 (any positive size works)
  bool desc_act = false;        // act-order (= order "act", or "act-static" with static_groups)
  // Column order: "natural"; "act" (= desc_act: columns by decreasing Hessian diagonal, groups
  // formed in that order, a permuted g_idx); "act-static" (act-order with the groups fixed in the
  // natural order first: g_idx = k / G, the non-act-order layout every kernel runs fastest);
  // "group" (groups by Hessian mass, columns inside a group by the Hessian diagonal, g_idx = k / G).
  // "": act-static for gptq (measured best, docs/measurements.md), unless desc_act asks for "act"
  // (then static_groups picks act-static); natural for rtn.
  std::string order;
  bool static_groups = false;
  bool sym = true;
  // Each group's scale/zero: "minmax" (the GPTQ authors') or "mse" (best shrink of the min-max
  // range, quantizer.h). "": mse for gptq (measured better, docs/measurements.md), minmax for rtn
  // (the baseline stays the reference's RTN).
  std::string grid;
  // After the GPTQ solve: "none", or "hessian" (each row's group scales refit by least squares
  // under the full Hessian given the codes, quant/refit.h; same format). "": none. GPTQ only.
  std::string refit;
  double damp_percent = 0.01;
  bool true_sequential = true;  // [k,v,q] -> [o] -> [up,gate] -> [down], each on quantized inputs
  std::string method = "gptq";  // "gptq" or "rtn"
  std::string format = "gptq";  // checkpoint_format: "gptq" (zeros stored minus one) or "gptq_v2"
  std::string calibration_file; // text; required for gptq
  int64_t seqlen = 0;           // calibration window length; 0: min(context, 2048)
  int64_t nsamples = 128;       // calibration windows
  int64_t calib_offset = 0;     // first calibration window
  uint64_t max_shard_bytes = 0; // 0: one model.safetensors
  int threads = 0;              // 0: all cores
  std::shared_ptr<Backend> backend;  // runs the calibration forward passes; null: the CPU with `threads`
  bool force = false;           // replace an existing output folder (an earlier output of ours, or empty)
  std::string lora_adapter;     // a PEFT LoRA adapter folder, merged in memory first (gptq/lora.h)
  // Quantize a synthetic model of this architecture (Model::synthetic: its exact shapes, random fp16
  // weights made on the backend) instead of a folder, to measure the time and memory of a model
  // whose weights are not here: every phase runs, nothing is written (model_dir and out_dir ""),
  // the calibration text is read with the tokenizer of `tokenizer_dir`.
  std::string synthetic;
  int64_t synthetic_layers = 0;  // its first this many decoder layers; 0: all
  std::string tokenizer_dir;     // with synthetic: a model folder whose tokenizer reads the calibration text
  bool progress = true;         // progress bars on stderr
  // One decoder layer's weights in memory at a time (Model::load_layer / release_layer): 1 yes, 0 no,
  // -1 on a device backend only (the same bytes either way).
  int stream_layers = -1;
  // Where the calibration activations (every window's layer input and attention output) live: 0 on
  // the backend, 1 in host memory (a window at a time copied through the backend: slower, for a
  // device they do not fit on), -1 on the backend when they fit there, else in host memory. The
  // same bytes either way.
  int host_activations = -1;
  // True-sequential: down's inputs (silu(gate) * up of every window, windows x seqlen x
  // intermediate fp32) kept on the backend from the pass that accumulates down's Hessian, so that
  // the pass after down's solve runs down alone instead of the whole MLP again (gate and up are two
  // thirds of its work): 1 yes, 0 no, -1 when they take at most half of the backend memory left
  // beside the other activations and the layer (never with host activations). The same bytes either way.
  int keep_mlp_inputs = -1;
  // A stage's linears (k, v, q; up, gate: one input, one Hessian) solved as one stacked problem, or
  // one by one (for A/B timing). The same bytes on the CPU either way.
  bool stack_stages = true;
  const std::atomic<bool>* cancel = nullptr;  // set (e.g. by SIGINT) to stop; nothing is written
};

struct ModuleReport {
  std::string name;          // "model.layers.0.self_attn.q_proj"
  int64_t out_features = 0, in_features = 0;
  double loss = 0;           // the solver's sum (w-q)^2/d^2 (GPTQ only)
  double rel_error = 0;      // ||(W-Q)X||^2 / ||WX||^2 on the calibration inputs
  double damp_percent = 0;   // damping that succeeded (raised when the Cholesky failed)
  int64_t dead_columns = 0;
  double seconds = 0;         // its share (by rows) of its stage's stacked solve, and its own packing and error
};

struct QuantizeReport {
  std::vector<ModuleReport> modules;
  int64_t calibration_tokens = 0;
  double seconds_load = 0, seconds_forward = 0, seconds_hessian = 0, seconds_solve = 0, seconds_pack = 0,
         seconds_write = 0, seconds_total = 0;
  std::string out_dir;           // "" when nothing was written (synthetic)
  uint64_t out_bytes = 0;
  uint64_t peak_device_bytes = 0; // device memory held at most (0 on the CPU)
  uint64_t peak_rss_bytes = 0;    // the process's peak resident memory
  std::vector<std::string> warnings;
};

// Throws gptq::Error for bad options or inputs (calibration text too short, unsupported bits,
// an already-quantized model, an existing output folder without force, an output that is, holds or
// lies inside the model folder, or one that force may not replace: see io/checkpoint_writer.h);
// on any error or cancellation the output folder is left as it was and nothing this run created
// remains.
QuantizeReport quantize_model(const std::string& model_dir, const std::string& out_dir, const QuantizeOptions& opts);

// "5GB", "500MB", "2GiB", "1000000" -> bytes (HF's decimal GB / binary GiB convention).
uint64_t parse_size(const std::string& s);

}  // namespace gptq
