// THE forward pass: one implementation for prefill, decode, mixed batches and calibration, over
// the backend interface.
#include <atomic>
#include <fstream>
#include <set>
#include <sstream>

#include "backend/backend.h"
#include "core/checked.h"
#include "core/memory.h"
#include "gptq/error.h"
#include "gptq/model.h"
#include "model/kv_cache.h"
#include "model/llama_weights.h"

namespace gptq {

const std::vector<LinearSlot>& stage_slots(Stage s) {
  // True-sequential order within a stage, as IST-DASLab/gptq's llama_sequential: k, v, q; up, gate.
  static const std::vector<LinearSlot> k[4] = {
      {LinearSlot::kK, LinearSlot::kV, LinearSlot::kQ},
      {LinearSlot::kO},
      {LinearSlot::kUp, LinearSlot::kGate},
      {LinearSlot::kDown},
  };
  static const std::vector<LinearSlot> none;
  return s == Stage::kDone ? none : k[int(s)];
}

std::unique_ptr<KVCache> Model::new_cache(int64_t ctx, const KVCacheOptions& o) const {
  if (ctx <= 0 || ctx > context_length()) ctx = context_length();
  KVCacheOptions oo = o;
  if (!oo.fp16) oo.fp16 = kv_fp16_;
  return std::unique_ptr<KVCache>(new KVCache(*backend_, config_, ctx, oo));
}

namespace {

std::string forward_what(int64_t rows, int64_t logit_rows) {
  return cat("a forward pass over ", rows, " tokens (", logit_rows, " logit rows)");
}

// The activations ensure_workspace allocates (below), checked for overflow.
uint64_t workspace_bytes(const ModelConfig& c, int64_t rows, int64_t logit_rows) {
  const std::string what = forward_what(rows, logit_rows);
  const int64_t H = c.hidden_size, A = c.num_heads * c.head_dim, KV = c.num_kv_heads * c.head_dim,
                F = c.intermediate_size;
  const int64_t per_row = 3 * H + 2 * A + 2 * KV + 2 * F + c.head_dim;
  const int64_t floats =
      checked_add(checked_mul(rows, per_row, what), checked_mul(logit_rows, H + c.vocab_size, what), what);
  return uint64_t(checked_mul<int64_t>(floats, 4, what));
}

void ensure_workspace(Backend& be, const ModelConfig& c, Workspace& ws, int64_t rows, int64_t logit_rows) {
  if (rows <= ws.rows && logit_rows <= ws.logit_rows && (ws.qkv.data != nullptr) == ws.fused_layers) return;
  rows = std::max(rows, ws.rows);
  logit_rows = std::max(logit_rows, ws.logit_rows);
  const int64_t H = c.hidden_size, A = c.num_heads * c.head_dim, KV = c.num_kv_heads * c.head_dim,
                F = c.intermediate_size;
  // Refused with the numbers before anything is taken.
  check_memory(workspace_bytes(c, rows, logit_rows), be.available_bytes(), forward_what(rows, logit_rows));
  // Unique over every model of the process: a backend shared by several models keeps each one's
  // recorded decode steps apart.
  static std::atomic<uint64_t> next_generation{1};
  const bool fused = ws.fused_layers;
  ws = Workspace{};
  ws.fused_layers = fused;
  ws.generation = next_generation++;
  ws.rows = rows;
  ws.logit_rows = logit_rows;
  auto make = [&](int64_t r, int64_t cols) {
    ws.mem.emplace_back();
    return be.alloc_f32(r, cols, ws.mem.back());
  };
  ws.x = make(rows, H);
  ws.h = make(rows, H);
  ws.tmp = make(rows, H);
  ws.att = make(rows, A);
  if (fused) {  // the same floats, as column ranges
    ws.qkv = make(rows, A + 2 * KV);
    ws.q = ws.qkv.slice_cols(0, A);
    ws.k = ws.qkv.slice_cols(A, KV);
    ws.v = ws.qkv.slice_cols(A + KV, KV);
    ws.gu = make(rows, 2 * F);
    ws.g = ws.gu.slice_cols(0, F);
    ws.u = ws.gu.slice_cols(F, F);
  } else {
    ws.q = make(rows, A);
    ws.k = make(rows, KV);
    ws.v = make(rows, KV);
    ws.g = make(rows, F);
    ws.u = make(rows, F);
  }
  ws.cs = make(rows, c.head_dim);
  ws.hl = make(logit_rows, H);
  ws.logits = make(logit_rows, c.vocab_size);
}

Tensor rows_of(const Tensor& t, int64_t T) { return t.slice_rows(0, T); }

}  // namespace

void Model::check_forward_memory(int64_t tokens, int64_t logit_rows) const {
  check_memory(workspace_bytes(config_, tokens, logit_rows), backend_->available_bytes(),
               forward_what(tokens, logit_rows));
}

BatchPlan Model::plan(const Batch& batch, KVCache& cache) {
  static std::atomic<uint64_t> next_id{1};
  if (batch.entries.empty()) fail("forward pass needs at least one sequence");
  BatchPlan p;
  p.id = next_id++;
  KVCache::Impl& I = *cache.impl_;
  const int64_t bs = cache.opt_.block_size;
  std::set<int64_t> seen;
  for (const auto& e : batch.entries) {
    if (e.tokens.empty()) fail("forward pass needs at least one token per sequence");
    if (!seen.insert(e.seq).second) fail("sequence ", e.seq, " appears twice in one batch");
    if (e.seq == 0 && !cache.has_sequence(0) && I.next_id == 0) cache.add_sequence();  // single-sequence use
    const int64_t pos0 = cache.seq_len(e.seq), n = int64_t(e.tokens.size());
    cache.ensure(e.seq, pos0 + n);
    for (int32_t id : e.tokens)
      if (id < 0 || id >= config_.vocab_size) fail("token id ", id, " is outside the vocabulary of ", config_.vocab_size);
  }
  for (const auto& e : batch.entries) {
    const KVCache::Impl::Seq& s = I.seq(e.seq);
    const int64_t row0 = p.n_tokens(), pos0 = s.len, n = int64_t(e.tokens.size());
    for (int64_t i = 0; i < n; ++i) {
      const int64_t pos = pos0 + i;
      p.tokens.push_back(e.tokens[size_t(i)]);
      p.positions.push_back(int32_t(pos));
      p.slots.push_back(int64_t(s.blocks[size_t(pos / bs)]) * bs + pos % bs);
    }
    p.seqs.push_back({row0, n, pos0, s.blocks.data(), int64_t(s.blocks.size())});
    if (e.logits == Logits::kLast) p.logit_rows.push_back(row0 + n - 1);
    if (e.logits == Logits::kAll)
      for (int64_t i = 0; i < n; ++i) p.logit_rows.push_back(row0 + i);
  }
  ensure_workspace(*backend_, config_, *ws_, p.n_tokens(), int64_t(p.logit_rows.size()));
  backend_->rope_angles(w_->inv_freq.t, p, rows_of(ws_->cs, p.n_tokens()));
  ws_->plan_id = p.id;
  return p;
}

void Model::commit(const Batch& batch, KVCache& cache) {
  for (const auto& e : batch.entries) cache.impl_->seq(e.seq).len += int64_t(e.tokens.size());
}

void Model::embed(const BatchPlan& plan, const Tensor& x) { backend_->embed(*w_->embed, plan, x); }

Stage Model::run_layer(int64_t l, const BatchPlan& plan, KVCache& cache, const Tensor& x, const Tensor& att, Stage from,
                       LayerObserver* obs) {
  GPTQ_ASSERT(ws_->plan_id == plan.id, "run_layer: the plan is not the model's latest (call plan() first)");
  GPTQ_ASSERT(from <= Stage::kMlpOut, "a layer resumes at kAttnIn, kAttnOut, kMlpIn or kMlpOut");
  const ModelConfig& c = config_;
  Backend& be = *backend_;
  const LlamaLayer& L = w_->layers.at(size_t(l));
  GPTQ_ASSERT(L.loaded(), "run_layer: layer ", l, " is not loaded (LoadOptions::defer_layers)");
  const int64_t T = plan.n_tokens();
  const float eps = float(c.rms_norm_eps);
  Workspace& ws = *ws_;
  const Tensor h = rows_of(ws.h, T), tmp = rows_of(ws.tmp, T);
  Stage s = from;
  if (s == Stage::kAttnIn) {
    be.rms_norm(x, L.attn_norm.t, eps, h);  // h: [T, H]
    if (obs && !obs->observe(l, Stage::kAttnIn, h)) return Stage::kAttnIn;
    const Tensor q = rows_of(ws.q, T), k = rows_of(ws.k, T), v = rows_of(ws.v, T), cs = rows_of(ws.cs, T);
    if (L.qkv) {
      be.linear(*L.qkv, h, rows_of(ws.qkv, T));  // q | k | v
    } else {
      be.linear(L.get(LinearSlot::kQ), h, q);  // q: [T, nh*hd]
      be.linear(L.get(LinearSlot::kK), h, k);  // k: [T, nkv*hd]
      be.linear(L.get(LinearSlot::kV), h, v);
    }
    be.rope_qk(q, c.num_heads, k, c.num_kv_heads, c.head_dim, cs);
    be.attention(l, q, k, v, cache.impl_->view(), plan, c.num_heads, att);  // att: [T, nh*hd]
    s = Stage::kAttnOut;
  }
  if (s == Stage::kAttnOut) {
    if (obs && !obs->observe(l, Stage::kAttnOut, att)) return Stage::kAttnOut;
    be.linear_add(L.get(LinearSlot::kO), att, x, tmp);  // x += o(att)
    s = Stage::kMlpIn;
  }
  Tensor act = att;  // resuming at kMlpOut: down's input, the caller's
  if (s == Stage::kMlpIn) {
    be.rms_norm(x, L.mlp_norm.t, eps, h);
    if (obs && !obs->observe(l, Stage::kMlpIn, h)) return Stage::kMlpIn;
    const Tensor g = rows_of(ws.g, T), u = rows_of(ws.u, T);
    if (L.gate_up) {
      be.linear(*L.gate_up, h, rows_of(ws.gu, T));  // g | u
    } else {
      be.linear(L.get(LinearSlot::kGate), h, g);  // g: [T, F]
      be.linear(L.get(LinearSlot::kUp), h, u);
    }
    be.silu_mul(g, u);  // g = silu(gate(h)) * up(h)
    if (obs && !obs->observe(l, Stage::kMlpOut, g)) return Stage::kMlpOut;
    act = g;
  }
  be.linear_add(L.get(LinearSlot::kDown), act, x, tmp);  // x += down(act)
  return Stage::kDone;
}

void Model::forward(const Batch& batch, KVCache& cache, std::vector<float>& logits) {
  const BatchPlan p = plan(batch, cache);
  const int64_t T = p.n_tokens(), R = int64_t(p.logit_rows.size());
  Workspace& ws = *ws_;
  const Tensor x = rows_of(ws.x, T), att = rows_of(ws.att, T);
  const Tensor hl = rows_of(ws.hl, R), out = rows_of(ws.logits, R);
  auto ops = [&] {
    embed(p, x);
    for (int64_t l = 0; l < config_.num_layers; ++l) run_layer(l, p, cache, x, att, Stage::kAttnIn, nullptr);
    if (R == 0) return;
    // Only the rows that want logits go through the final norm and lm_head.
    backend_->gather_rows(x, p, hl);
    backend_->rms_norm(hl, w_->final_norm.t, float(config_.rms_norm_eps), hl);
    backend_->linear(w_->head(), hl, out);
  };
  // A decode step (one new token and its logits per sequence) runs the same ops on the same
  // tensors every time for a given batch size: the backend may record it once and replay it.
  const KVView kv = cache.impl_->view();
  const bool decode_step = R == T && int64_t(batch.entries.size()) == T && T < (1 << 16) &&
                           ws.generation < (1u << 23) && kv.max_len < (1 << 23);
  if (decode_step) {  // the key packs what the recording depends on, exactly
    const uint64_t key = uint64_t(T) | ws.generation << 16 | uint64_t(kv.max_len) << 40 |
                         uint64_t(kv.layout.dtype == DType::kF16) << 63;
    backend_->run_recorded(key, p, kv, ops);
  } else {
    ops();
  }
  commit(batch, cache);
  logits.resize(size_t(R * config_.vocab_size));
  if (R > 0) backend_->to_host(out, logits.data());
}

void Model::forward(KVCache& cache, const int32_t* tokens, int64_t T, bool all_logits, std::vector<float>& logits) {
  if (T <= 0) fail("forward pass needs at least one token");
  Batch b;
  b.add(0, tokens, T, all_logits ? Logits::kAll : Logits::kLast);
  forward(b, cache, logits);
}

namespace {
size_t status_field_kb(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::string f = std::string(field) + ":";
  while (std::getline(in, line)) {
    if (line.rfind(f, 0) == 0) {
      std::istringstream ss(line.substr(f.size()));
      size_t kb = 0;
      ss >> kb;
      return kb;
    }
  }
  return 0;
}
}  // namespace

size_t current_rss_bytes() { return status_field_kb("VmRSS") * 1024; }
size_t peak_rss_bytes() { return status_field_kb("VmHWM") * 1024; }

}  // namespace gptq
