#include <algorithm>
#include <cmath>
#include <numeric>
#include <unordered_set>

#include "gptq/error.h"
#include "gptq/generate.h"

namespace gptq {

namespace {
// The ranges transformers' logits warpers accept (they raise ValueError outside them); a value
// outside them used to be taken silently (a negative temperature sampled greedily, top_p 0 or 7
// and a penalty of -1 gave some other distribution than asked for). Comparisons are written so
// that NaN fails them.
void check_params(const SamplingParams& p) {
  if (!(p.temperature >= 0.f) || !std::isfinite(p.temperature))
    fail("sampling: temperature must be a finite number >= 0 (0: greedy), got ", p.temperature);
  if (!(p.top_p > 0.f && p.top_p <= 1.f)) fail("sampling: top_p must be in (0, 1] (1: off), got ", p.top_p);
  if (!(p.min_p >= 0.f && p.min_p <= 1.f)) fail("sampling: min_p must be in [0, 1] (0: off), got ", p.min_p);
  if (!(p.repetition_penalty > 0.f) || !std::isfinite(p.repetition_penalty))
    fail("sampling: repetition_penalty must be a finite number > 0 (1: off), got ", p.repetition_penalty);
  // OpenAI's range for both.
  if (!(p.presence_penalty >= -2.f && p.presence_penalty <= 2.f))
    fail("sampling: presence_penalty must be in [-2, 2] (0: off), got ", p.presence_penalty);
  if (!(p.frequency_penalty >= -2.f && p.frequency_penalty <= 2.f))
    fail("sampling: frequency_penalty must be in [-2, 2] (0: off), got ", p.frequency_penalty);
}
}  // namespace

Sampler::Sampler(const SamplingParams& p) : p_(p), rng_(p.seed) { check_params(p_); }

int32_t Sampler::sample(std::vector<float> logits, const std::vector<int32_t>& history) {
  GPTQ_ASSERT(!logits.empty(), "Sampler::sample needs at least one logit");
  const int32_t V = int32_t(logits.size());
  if (p_.repetition_penalty != 1.0f && !history.empty()) {
    const size_t n = p_.repeat_last_n < 0 ? history.size() : std::min(history.size(), size_t(p_.repeat_last_n));
    std::unordered_set<int32_t> seen(history.end() - ptrdiff_t(n), history.end());
    for (int32_t id : seen) {
      if (id < 0 || id >= V) continue;
      float& l = logits[size_t(id)];
      l = l > 0 ? l / p_.repetition_penalty : l * p_.repetition_penalty;
    }
  }
  if (p_.presence_penalty != 0.f || p_.frequency_penalty != 0.f) {
    for (const auto& [id, count] : drawn_)
      if (id >= 0 && id < V) logits[size_t(id)] -= p_.presence_penalty + p_.frequency_penalty * float(count);
  }
  const int32_t next = draw(logits);
  ++drawn_[next];
  return next;
}

int32_t Sampler::draw(const std::vector<float>& logits) {
  const int32_t V = int32_t(logits.size());
  if (p_.temperature <= 0.f) return int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());

  // Candidates sorted by logit, descending; top-k cuts the list first.
  std::vector<int32_t> idx(static_cast<size_t>(V));
  std::iota(idx.begin(), idx.end(), 0);
  size_t n = size_t(V);
  auto by_logit = [&](int32_t a, int32_t b) { return logits[size_t(a)] > logits[size_t(b)] || (logits[size_t(a)] == logits[size_t(b)] && a < b); };
  if (p_.top_k > 0 && size_t(p_.top_k) < n) {
    n = size_t(p_.top_k);
    std::partial_sort(idx.begin(), idx.begin() + ptrdiff_t(n), idx.end(), by_logit);
  } else {
    std::sort(idx.begin(), idx.end(), by_logit);
  }
  idx.resize(n);
  std::vector<double> prob(n);
  const double mx = logits[size_t(idx[0])];
  double sum = 0;
  for (size_t i = 0; i < n; ++i) {
    prob[i] = std::exp((double(logits[size_t(idx[i])]) - mx) / p_.temperature);
    sum += prob[i];
  }
  for (auto& p : prob) p /= sum;
  if (p_.top_p < 1.f) {  // smallest prefix whose mass reaches top_p (at least one token)
    double cum = 0;
    size_t keep = n;
    for (size_t i = 0; i < n; ++i) {
      cum += prob[i];
      if (cum >= p_.top_p) {
        keep = i + 1;
        break;
      }
    }
    n = keep;
  }
  if (p_.min_p > 0.f) {  // drop tokens below min_p times the most likely one's probability
    size_t keep = 1;
    while (keep < n && prob[keep] >= p_.min_p * prob[0]) ++keep;
    n = keep;
  }
  double total = 0;
  for (size_t i = 0; i < n; ++i) total += prob[i];
  std::uniform_real_distribution<double> u(0.0, total);
  double r = u(rng_), cum = 0;
  for (size_t i = 0; i < n; ++i) {
    cum += prob[i];
    if (r < cum) return idx[i];
  }
  return idx[n - 1];
}

}  // namespace gptq
