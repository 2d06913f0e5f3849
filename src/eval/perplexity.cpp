#include "gptq/perplexity.h"

#include <chrono>
#include <algorithm>
#include <cmath>

#include "core/progress.h"
#include "backend/cpu/cpu_backend.h"
#include "core/thread_pool.h"
#include "gptq/error.h"

namespace gptq {

std::string wikitext_join(const std::string& raw) {
  std::string out;
  out.reserve(raw.size() * 2);
  size_t pos = 0;
  bool first = true;
  while (pos < raw.size()) {
    size_t nl = raw.find('\n', pos);
    const size_t end = nl == std::string::npos ? raw.size() : nl + 1;
    const std::string_view line(raw.data() + pos, end - pos);
    bool blank = true;
    for (char ch : line) blank &= (ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\v' || ch == '\f');
    if (!first) out += "\n\n";
    first = false;
    if (!blank) out.append(line);
    pos = end;
  }
  return out;
}

double quantile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double h = p * double(v.size() - 1);
  const size_t lo = size_t(h);
  if (lo + 1 >= v.size()) return v.back();
  return v[lo] + (h - double(lo)) * (v[lo + 1] - v[lo]);
}

namespace {

// NLL of the target under a row of logits: logsumexp(row) - row[target].
double nll_of(const float* row, int64_t V, int32_t target) {
  float mx = row[0];
  for (int64_t i = 1; i < V; ++i) mx = std::max(mx, row[i]);
  double s = 0;
  for (int64_t i = 0; i < V; ++i) s += double(std::exp(row[i] - mx));
  return double(mx) + std::log(s) - double(row[target]);
}

double log_sum_exp(const float* row, int64_t V) {
  const double mx = double(*std::max_element(row, row + V));
  double s = 0;
  for (int64_t i = 0; i < V; ++i) s += std::exp(double(row[i]) - mx);
  return mx + std::log(s);
}

// KL(P || Q) of the distributions softmax(p) and softmax(q), in double.
double kl_of(const float* p, const float* q, int64_t V) {
  const double lp = log_sum_exp(p, V), lq = log_sum_exp(q, V);
  double kl = 0;
  for (int64_t i = 0; i < V; ++i) {
    const double a = double(p[i]) - lp, b = double(q[i]) - lq;
    kl += std::exp(a) * (a - b);
  }
  return kl;
}

// Runs windows [w0, w0 + n) as one batch of n sequences: logits [n * ctx, vocab].
void run_windows(Model& m, KVCache& cache, const std::vector<int32_t>& tokens, int64_t ctx, int64_t w0, int64_t n,
                 std::vector<float>& logits) {
  cache.clear();
  Batch batch;
  for (int64_t w = w0; w < w0 + n; ++w) batch.add(cache.add_sequence(), tokens.data() + w * ctx, ctx, Logits::kAll);
  m.forward(batch, cache, logits);
}

}  // namespace

PerplexityResult perplexity(Model& model, const std::vector<int32_t>& tokens, const PerplexityOptions& opts,
                            Model* base) {
  PerplexityResult r;
  r.ctx = opts.ctx > 0 ? opts.ctx : model.context_length();
  if (r.ctx < 2) fail("perplexity context must be at least 2 tokens, got ", r.ctx);
  if (r.ctx > model.context_length())
    fail("perplexity context ", r.ctx, " exceeds the model's context length ", model.context_length());
  const int64_t V = model.vocab_size();
  if (base) {
    if (base->vocab_size() != V)
      fail("KL divergence needs one vocabulary: the base model ", base->dir(), " has ", base->vocab_size(),
           " tokens, the model ", model.dir(), " has ", V);
    if (r.ctx > base->context_length())
      fail("perplexity context ", r.ctx, " exceeds the base model's context length ", base->context_length());
  }
  r.tokens = int64_t(tokens.size());
  r.total_windows = r.tokens / r.ctx;
  const int64_t b = opts.window_begin;
  const int64_t e = opts.window_end < 0 ? r.total_windows : opts.window_end;
  if (b < 0 || b >= e || e > r.total_windows)
    fail("windows ", b, ":", e, " are not within the ", r.total_windows, " complete windows of ", r.ctx, " tokens (",
         r.tokens, " tokens in the text)");
  if (opts.batch > 0) {
    r.batch = opts.batch;
  } else {
    // Floats a window holds during a forward, per token: its logits, its KV cache and (roughly) the
    // activations of a layer; for each model.
    auto window_bytes = [&](const Model& m) {
      const ModelConfig& c = m.config();
      const int64_t kv = c.num_kv_heads * c.head_dim;
      const int64_t per_token = V + 2 * c.num_layers * kv + 3 * c.hidden_size + 2 * c.num_heads * c.head_dim +
                                2 * kv + 2 * c.intermediate_size;
      return double(r.ctx) * double(per_token) * sizeof(float);
    };
    const double per_window = window_bytes(model) + (base ? window_bytes(*base) : 0);
    r.batch = std::max<int64_t>(1, int64_t(double(256 << 20) / per_window));
  }
  r.batch = std::min(r.batch, e - b);
  r.has_kl = base != nullptr;

  auto cache = model.new_cache(r.ctx);
  auto base_cache = base ? base->new_cache(r.ctx) : nullptr;
  ThreadPool* be_pool = cpu_pool(model.backend());
  std::unique_ptr<ThreadPool> own;
  if (!be_pool) own = std::make_unique<ThreadPool>(0);
  ThreadPool& pool = be_pool ? *be_pool : *own;
  std::vector<float> logits, base_logits;
  std::vector<double> kl_values;  // per predicted token
  int64_t agree = 0;
  double base_sum = 0;
  Progress bar("perplexity", e - b, opts.progress);
  const auto t0 = std::chrono::steady_clock::now();
  double sum = 0;
  const int64_t P = r.ctx - 1;  // predicted tokens per window
  for (int64_t w0 = b; w0 < e; w0 += r.batch) {
    const int64_t n = std::min(r.batch, e - w0);
    if (base) run_windows(*base, *base_cache, tokens, r.ctx, w0, n, base_logits);
    run_windows(model, *cache, tokens, r.ctx, w0, n, logits);
    // Per predicted token (window k, position t): NLL of the target, and against the base its NLL,
    // the KL divergence and whether the argmax agree; rows in parallel.
    const size_t rows = size_t(n * P);
    std::vector<double> nll(rows), base_nll(base ? rows : 0), kl(base ? rows : 0);
    std::vector<char> same(base ? rows : 0);
    pool.parallel_for(0, rows, [&](size_t r0, size_t r1) {
      for (size_t i = r0; i < r1; ++i) {
        const int64_t k = int64_t(i) / P, t = int64_t(i) % P;
        const size_t row = size_t((k * r.ctx + t) * V);
        const int32_t target = tokens[size_t((w0 + k) * r.ctx + t + 1)];
        nll[i] = nll_of(logits.data() + row, V, target);
        if (!base) continue;
        const float* p = base_logits.data() + row;
        const float* q = logits.data() + row;
        base_nll[i] = nll_of(p, V, target);
        kl[i] = kl_of(p, q, V);
        same[i] = std::max_element(p, p + V) - p == std::max_element(q, q + V) - q;
      }
    }, 16);
    for (int64_t k = 0; k < n; ++k) {
      double s = 0;
      for (int64_t t = 0; t < P; ++t) s += nll[size_t(k * P + t)];
      r.window_nll.push_back(s / double(P));
      sum += r.window_nll.back();
      if (!base) continue;
      s = 0;
      for (int64_t t = 0; t < P; ++t) s += base_nll[size_t(k * P + t)];
      base_sum += s / double(P);
    }
    kl_values.insert(kl_values.end(), kl.begin(), kl.end());
    agree += std::count(same.begin(), same.end(), char(1));
    r.windows += n;
    char note[64];
    std::snprintf(note, sizeof note, "ppl %.4f", std::exp(sum / double(r.windows)));
    bar.update(r.windows, note);
  }
  r.mean_nll = sum / double(r.windows);
  r.ppl = std::exp(r.mean_nll);
  if (base) {
    KlDivergence& d = r.kl;
    d.tokens = int64_t(kl_values.size());
    for (double v : kl_values) d.mean += v;
    d.mean /= double(d.tokens);
    d.p99 = quantile(std::move(kl_values), 0.99);
    d.top1_agreement = double(agree) / double(d.tokens);
    d.base_mean_nll = base_sum / double(r.windows);
    d.base_ppl = std::exp(d.base_mean_nll);
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  char note[64];
  std::snprintf(note, sizeof note, "ppl %.4f", r.ppl);
  bar.finish(note);
  return r;
}

}  // namespace gptq
