#include "gptq/perplexity.h"

#include <openssl/evp.h>

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

std::string sha256_hex(const std::string& bytes) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_Digest(bytes.data(), bytes.size(), md, &n, EVP_sha256(), nullptr);
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (unsigned i = 0; i < n; ++i) {
    s += hex[md[i] >> 4];
    s += hex[md[i] & 15];
  }
  return s;
}

PerplexityResult perplexity(Model& model, const std::vector<int32_t>& tokens, const PerplexityOptions& opts) {
  PerplexityResult r;
  r.ctx = opts.ctx > 0 ? opts.ctx : model.context_length();
  if (r.ctx < 2) fail("perplexity context must be at least 2 tokens, got ", r.ctx);
  if (r.ctx > model.context_length())
    fail("perplexity context ", r.ctx, " exceeds the model's context length ", model.context_length());
  r.tokens = int64_t(tokens.size());
  r.total_windows = r.tokens / r.ctx;
  const int64_t b = opts.window_begin;
  const int64_t e = opts.window_end < 0 ? r.total_windows : opts.window_end;
  if (b < 0 || b >= e || e > r.total_windows)
    fail("windows ", b, ":", e, " are not within the ", r.total_windows, " complete windows of ", r.ctx, " tokens (",
         r.tokens, " tokens in the text)");
  const int64_t V = model.vocab_size();
  auto cache = model.new_cache(r.ctx);
  ThreadPool* be_pool = cpu_pool(model.backend());
  std::unique_ptr<ThreadPool> own;
  if (!be_pool) own = std::make_unique<ThreadPool>(0);
  ThreadPool& pool = be_pool ? *be_pool : *own;
  std::vector<float> logits;
  Progress bar("perplexity", e - b, opts.progress);
  const auto t0 = std::chrono::steady_clock::now();
  double sum = 0;
  for (int64_t w = b; w < e; ++w) {
    const int32_t* ids = tokens.data() + w * r.ctx;
    cache->clear();
    model.forward(*cache, ids, r.ctx, true, logits);
    // NLL of each predicted token: logsumexp(row) - row[target]; rows in parallel.
    std::vector<double> tok_nll(static_cast<size_t>(r.ctx - 1));
    pool.parallel_for(0, size_t(r.ctx - 1), [&](size_t t0, size_t t1) {
      for (size_t t = t0; t < t1; ++t) {
        const float* row = logits.data() + t * size_t(V);
        float mx = row[0];
        for (int64_t i = 1; i < V; ++i) mx = std::max(mx, row[i]);
        double s = 0;
        for (int64_t i = 0; i < V; ++i) s += double(std::exp(row[i] - mx));
        tok_nll[t] = double(mx) + std::log(s) - double(row[ids[t + 1]]);
      }
    }, 16);
    double nll = 0;
    for (double v : tok_nll) nll += v;
    nll /= double(r.ctx - 1);
    r.window_nll.push_back(nll);
    sum += nll;
    ++r.windows;
    char note[64];
    std::snprintf(note, sizeof note, "ppl %.4f", std::exp(sum / double(r.windows)));
    bar.update(r.windows, note);
  }
  r.mean_nll = sum / double(r.windows);
  r.ppl = std::exp(r.mean_nll);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  char note[64];
  std::snprintf(note, sizeof note, "ppl %.4f", r.ppl);
  bar.finish(note);
  return r;
}

}  // namespace gptq
