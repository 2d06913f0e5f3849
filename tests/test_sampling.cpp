// Sampler (include/gptq/generate.h) against its documented behaviour: greedy and its ties, seeds,
// top-k / top-p / min-p as sets of drawable tokens, the HF repetition-penalty rule over the last
// repeat_last_n tokens, draw frequencies against softmax probabilities, and parameter checks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "gptq/error.h"
#include "gptq/generate.h"

namespace {

using gptq::Sampler;
using gptq::SamplingParams;

// Every filter off, temperature 1: draws follow softmax(logits).
SamplingParams plain(uint64_t seed = 1) {
  SamplingParams p;
  p.temperature = 1.f;
  p.top_k = 0;
  p.top_p = 1.f;
  p.min_p = 0.f;
  p.repetition_penalty = 1.f;
  p.seed = seed;
  return p;
}

SamplingParams greedy_params(uint64_t seed = 1) {
  SamplingParams p = plain(seed);
  p.temperature = 0.f;
  return p;
}

// Logits whose softmax is exactly `probs` (up to float rounding of the logs).
std::vector<float> logits_for(const std::vector<double>& probs) {
  std::vector<float> l;
  for (double p : probs) l.push_back(float(std::log(p)));
  return l;
}

std::vector<float> random_logits(size_t V, std::mt19937& rng, float sd = 2.f) {
  std::normal_distribution<float> d(0.f, sd);
  std::vector<float> l(V);
  for (auto& x : l) x = d(rng);
  return l;
}

int32_t argmax(const std::vector<float>& l) { return int32_t(std::max_element(l.begin(), l.end()) - l.begin()); }

// Token counts over n draws from the same logits.
std::vector<int> draw_counts(Sampler& s, const std::vector<float>& logits, int n,
                             const std::vector<int32_t>& history = {}) {
  std::vector<int> counts(logits.size(), 0);
  for (int i = 0; i < n; ++i) {
    const int32_t id = s.sample(logits, history);
    EXPECT_GE(id, 0);
    EXPECT_LT(id, int32_t(logits.size()));
    if (id >= 0 && id < int32_t(logits.size())) ++counts[size_t(id)];
  }
  return counts;
}

std::set<int32_t> drawn_set(const std::vector<int>& counts) {
  std::set<int32_t> s;
  for (size_t i = 0; i < counts.size(); ++i)
    if (counts[i] > 0) s.insert(int32_t(i));
  return s;
}

// ---- greedy -------------------------------------------------------------------------------------

TEST(SamplerGreedy, PicksArgmax) {
  std::mt19937 rng(3);
  Sampler s(greedy_params());
  for (int i = 0; i < 200; ++i) {
    const auto l = random_logits(1 + size_t(i % 97), rng);
    EXPECT_EQ(s.sample(l, {}), argmax(l)) << "step " << i;
  }
  EXPECT_EQ(s.sample({-3.f, -1.f, -2.f}, {}), 1);
  EXPECT_EQ(s.sample({0.f, 0.f, 5.f}, {}), 2);  // the last position too
  EXPECT_EQ(s.sample({7.f}, {}), 0);
}

TEST(SamplerGreedy, TiesGoToTheLowestIdDeterministically) {
  const std::vector<float> tie = {1.f, 3.f, 2.f, 3.f, 3.f, -1.f};
  for (uint64_t seed : {0u, 1u, 99u}) {
    Sampler s(greedy_params(seed));
    for (int i = 0; i < 20; ++i) EXPECT_EQ(s.sample(tie, {}), 1) << "seed " << seed;
  }
  Sampler s(greedy_params());
  EXPECT_EQ(s.sample(std::vector<float>(10, 0.5f), {}), 0);
}

TEST(SamplerGreedy, TemperatureZeroIgnoresSeedAndFilters) {
  std::mt19937 rng(5);
  SamplingParams a = greedy_params(1), b = greedy_params(12345);
  b.top_k = 3;  // filters do not change greedy
  b.top_p = 0.2f;
  b.min_p = 0.9f;
  Sampler sa(a), sb(b);
  for (int i = 0; i < 300; ++i) {
    const auto l = random_logits(64, rng, 0.5f);  // close logits: any randomness would show
    const int32_t x = sa.sample(l, {}), y = sb.sample(l, {});
    EXPECT_EQ(x, argmax(l)) << "step " << i;
    EXPECT_EQ(y, x) << "step " << i;
  }
}

// ---- seeds ----------------------------------------------------------------------------------------

TEST(SamplerSeed, SameSeedSameSequenceDifferentSeedsDiffer) {
  const std::vector<float> flat(4, 0.f);  // uniform over 4 tokens
  auto sequence = [&](uint64_t seed) {
    Sampler s(plain(seed));
    std::vector<int32_t> out;
    for (int i = 0; i < 1000; ++i) out.push_back(s.sample(flat, {}));
    return out;
  };
  const auto a = sequence(42), b = sequence(42), c = sequence(43);
  EXPECT_EQ(a, b);
  // Independent uniform draws agree a quarter of the time: expect ~750 differences, at least 650.
  int diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff += a[i] != c[i];
  EXPECT_GE(diff, 650) << "seeds 42 and 43 give nearly the same sequence";
  // And a sequence is not constant (the draws are random within one sampler).
  EXPECT_EQ(std::set<int32_t>(a.begin(), a.end()).size(), 4u);
}

// ---- top-k --------------------------------------------------------------------------------------

TEST(SamplerTopK, OneEqualsGreedy) {
  std::mt19937 rng(7);
  SamplingParams p = plain(9);
  p.top_k = 1;
  p.temperature = 1.5f;
  Sampler s(p);
  for (int i = 0; i < 500; ++i) {
    const auto l = random_logits(50, rng, 0.3f);  // flat: without the cut, other tokens come up
    EXPECT_EQ(s.sample(l, {}), argmax(l)) << "step " << i;
  }
  EXPECT_EQ(s.sample({0.f, 2.f, 2.f, 1.f}, {}), 1);  // ties as greedy: lowest id
}

TEST(SamplerTopK, DrawsOnlyFromTheKBest) {
  std::mt19937 rng(11);
  const auto l = random_logits(20, rng, 1.f);
  std::vector<int32_t> order(20);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return l[size_t(a)] > l[size_t(b)]; });
  for (int k : {2, 5, 19}) {
    SamplingParams p = plain(100 + uint64_t(k));
    p.top_k = k;
    p.temperature = 2.f;  // flatter: the k-th token is drawn often enough to show up
    Sampler s(p);
    const auto counts = draw_counts(s, l, 4000);
    const std::set<int32_t> want(order.begin(), order.begin() + k);
    EXPECT_EQ(drawn_set(counts), want) << "top_k " << k;  // never outside, and every one of them drawn
  }
  // top_k >= vocab is off.
  SamplingParams p = plain(5);
  p.top_k = 1000;
  p.temperature = 3.f;
  Sampler s(p);
  EXPECT_EQ(drawn_set(draw_counts(s, l, 4000)).size(), 20u);
}

// ---- top-p --------------------------------------------------------------------------------------

// probabilities 0.5, 0.3, 0.15, 0.05 (shuffled in the vocabulary): the kept set is the smallest
// prefix of the sorted list whose mass reaches top_p.
TEST(SamplerTopP, KeepsTheSmallestSetReachingP) {
  // id:                      0     1     2     3
  const std::vector<double> probs = {0.15, 0.5, 0.05, 0.3};
  const auto l = logits_for(probs);
  const struct {
    float top_p;
    std::set<int32_t> keep;
  } cases[] = {
      {0.3f, {1}},           // 0.5 alone reaches it
      {0.49f, {1}},
      {0.51f, {1, 3}},       // 0.5 + 0.3
      {0.79f, {1, 3}},
      {0.81f, {1, 3, 0}},    // + 0.15 = 0.95
      {0.94f, {1, 3, 0}},
      {0.96f, {1, 3, 0, 2}}, // everything
      {1.0f, {1, 3, 0, 2}},  // off
  };
  for (const auto& c : cases) {
    SamplingParams p = plain(17);
    p.top_p = c.top_p;
    Sampler s(p);
    EXPECT_EQ(drawn_set(draw_counts(s, l, 3000)), c.keep) << "top_p " << c.top_p;
  }
}

// The kept tokens keep their relative probabilities (renormalized), here 0.5 : 0.3.
TEST(SamplerTopP, RenormalizesTheKeptTokens) {
  const auto l = logits_for({0.15, 0.5, 0.05, 0.3});
  SamplingParams p = plain(23);
  p.top_p = 0.7f;
  Sampler s(p);
  const int n = 20000;
  const auto counts = draw_counts(s, l, n);
  const double q = 0.5 / 0.8, sigma = std::sqrt(n * q * (1 - q));
  EXPECT_NEAR(counts[1], n * q, 5 * sigma);
  EXPECT_EQ(counts[1] + counts[3], n);
}

// ---- min-p --------------------------------------------------------------------------------------

TEST(SamplerMinP, DropsTokensBelowMinPTimesTheTopProbability) {
  // id:                      0     1     2     3     4
  const std::vector<double> probs = {0.06, 0.4, 0.04, 0.2, 0.3};
  const auto l = logits_for(probs);
  const struct {
    float min_p;
    std::set<int32_t> keep;
  } cases[] = {
      {0.f, {0, 1, 2, 3, 4}},  // off
      {0.09f, {0, 1, 2, 3, 4}},  // threshold 0.036
      {0.125f, {0, 1, 3, 4}},    // 0.05: drops 0.04
      {0.45f, {1, 3, 4}},        // 0.18: drops 0.06
      {0.6f, {1, 4}},            // 0.24: drops 0.2
      {0.9f, {1}},               // 0.36
      {1.f, {1}},
  };
  for (const auto& c : cases) {
    SamplingParams p = plain(29);
    p.min_p = c.min_p;
    Sampler s(p);
    EXPECT_EQ(drawn_set(draw_counts(s, l, 3000)), c.keep) << "min_p " << c.min_p;
  }
}

// ---- repetition penalty -------------------------------------------------------------------------

// Greedy on two tokens reads off the penalized logit of token 0: the winner flips where token 1's
// logit crosses it.
int32_t greedy_with_penalty(float l0, float l1, float penalty, const std::vector<int32_t>& history,
                            int repeat_last_n = 64) {
  SamplingParams p = greedy_params();
  p.repetition_penalty = penalty;
  p.repeat_last_n = repeat_last_n;
  Sampler s(p);
  return s.sample({l0, l1}, history);
}

TEST(SamplerRepetitionPenalty, HfRulePositiveDividedNegativeMultiplied) {
  // 2.0 / 2 = 1.0 (multiplying would give 4.0)
  EXPECT_EQ(greedy_with_penalty(2.f, 0.99f, 2.f, {0}), 0);
  EXPECT_EQ(greedy_with_penalty(2.f, 1.01f, 2.f, {0}), 1);
  // -1.0 * 2 = -2.0 (dividing would give -0.5)
  EXPECT_EQ(greedy_with_penalty(-1.f, -2.01f, 2.f, {0}), 0);
  EXPECT_EQ(greedy_with_penalty(-1.f, -1.99f, 2.f, {0}), 1);
  // A penalty below 1 rewards: 2.0 / 0.5 = 4.0; -1 * 0.5 = -0.5
  EXPECT_EQ(greedy_with_penalty(2.f, 3.99f, 0.5f, {0}), 0);
  EXPECT_EQ(greedy_with_penalty(2.f, 4.01f, 0.5f, {0}), 1);
  EXPECT_EQ(greedy_with_penalty(-1.f, -0.51f, 0.5f, {0}), 0);
  EXPECT_EQ(greedy_with_penalty(-1.f, -0.49f, 0.5f, {0}), 1);
  // A token repeated in the history is penalized once, not once per occurrence (2 / 2, not 2 / 8).
  EXPECT_EQ(greedy_with_penalty(2.f, 0.99f, 2.f, {0, 0, 0}), 0);
  // Only tokens in the history: penalizing token 1 instead makes token 0 win.
  EXPECT_EQ(greedy_with_penalty(1.f, 1.5f, 2.f, {1}), 0);
  EXPECT_EQ(greedy_with_penalty(1.f, 1.5f, 2.f, {}), 1);
  // Penalty 1 is off.
  EXPECT_EQ(greedy_with_penalty(2.f, 1.99f, 1.f, {0}), 0);
  // Ids outside the vocabulary in the history are ignored.
  EXPECT_EQ(greedy_with_penalty(2.f, 1.5f, 2.f, {-1, 2, 1000}), 0);
}

TEST(SamplerRepetitionPenalty, OnlyTheLastRepeatLastNTokens) {
  // token 0 is 3 tokens back: penalized (2 -> 1, loses to 1.5) when the window reaches it
  const std::vector<int32_t> h = {0, 5, 5, 5};
  auto l1_wins = [&](int n) { return greedy_with_penalty(2.f, 1.5f, 2.f, h, n) == 1; };
  EXPECT_FALSE(l1_wins(0));  // no window: no penalty
  EXPECT_FALSE(l1_wins(1));
  EXPECT_FALSE(l1_wins(3));
  EXPECT_TRUE(l1_wins(4));
  EXPECT_TRUE(l1_wins(100));  // longer than the history
  EXPECT_TRUE(l1_wins(-1));   // all of it
  // Out of a long history only the tail counts: token 0 long ago, token 1 recently.
  std::vector<int32_t> long_h(200, 7);
  long_h[0] = 0;
  long_h[199] = 1;
  EXPECT_EQ(greedy_with_penalty(2.f, 2.5f, 2.f, long_h, 64), 0);   // 2.5 / 2 = 1.25 < 2
  EXPECT_EQ(greedy_with_penalty(2.f, 2.5f, 2.f, long_h, -1), 1);   // both: 1.0 vs 1.25
}

// The penalty also shapes the sampled distribution: P(0) = sigmoid(l0' - l1).
TEST(SamplerRepetitionPenalty, AppliesWhenSampling) {
  SamplingParams p = plain(31);
  p.repetition_penalty = 2.f;
  Sampler s(p);
  const int n = 20000;
  const auto counts = draw_counts(s, {2.f, 1.f}, n, {0});  // penalized: equal logits
  const double sigma = std::sqrt(n * 0.25);
  EXPECT_NEAR(counts[0], n * 0.5, 5 * sigma);
}

// ---- frequencies ----------------------------------------------------------------------------------

// Filters off: the frequency of each token is within 5 sigma of its softmax probability, at
// temperature 1 and (p^(1/T), renormalized) at other temperatures.
TEST(SamplerFrequencies, MatchSoftmaxProbabilities) {
  const std::vector<double> probs = {0.1, 0.2, 0.3, 0.4};
  const auto l = logits_for(probs);
  for (float T : {1.f, 0.5f, 2.f}) {
    std::vector<double> want(probs.size());
    double z = 0;
    for (size_t i = 0; i < probs.size(); ++i) z += want[i] = std::pow(probs[i], 1.0 / T);
    for (auto& w : want) w /= z;
    SamplingParams p = plain(1000 + uint64_t(T * 10));
    p.temperature = T;
    Sampler s(p);
    const int n = 20000;
    const auto counts = draw_counts(s, l, n);
    for (size_t i = 0; i < probs.size(); ++i) {
      const double sigma = std::sqrt(n * want[i] * (1 - want[i]));
      EXPECT_NEAR(counts[i], n * want[i], 5 * sigma) << "T " << T << " token " << i;
    }
  }
}

// The defaults (top_k 40, top_p 0.95, min_p 0.05) together: whichever of top-p and min-p cuts
// more decides.
TEST(SamplerFrequencies, DefaultFiltersCombine) {
  SamplingParams p;  // defaults, but temperature 1 so that the probabilities are the ones below
  p.temperature = 1.f;
  p.seed = 77;
  {
    // sorted 0.6, 0.3, 0.07, 0.025, 0.005: top_p keeps 0.97 (three tokens); min_p (0.03) agrees.
    Sampler s(p);
    EXPECT_EQ(drawn_set(draw_counts(s, logits_for({0.025, 0.6, 0.005, 0.3, 0.07}), 4000)),
              (std::set<int32_t>{1, 3, 4}));
  }
  {
    // sorted 0.5, 0.34, 0.06, then five of 0.02: top_p would keep six tokens (0.96), min_p's
    // threshold 0.025 drops all the 0.02s.
    Sampler s(p);
    EXPECT_EQ(drawn_set(draw_counts(s, logits_for({0.02, 0.02, 0.5, 0.02, 0.06, 0.02, 0.34, 0.02}), 4000)),
              (std::set<int32_t>{2, 4, 6}));
  }
}

// ---- parameters -----------------------------------------------------------------------------------

// The message of the gptq::Error the constructor throws ("" when it does not throw).
std::string ctor_error(const SamplingParams& p) {
  try {
    Sampler s(p);
  } catch (const gptq::Error& e) {
    return e.what();
  }
  return "";
}

TEST(SamplerParams, BadValuesThrowWithTheParameterName) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  const struct {
    const char* name;
    void (*set)(SamplingParams&, float);
    std::vector<float> bad, good;
  } params[] = {
      {"temperature", [](SamplingParams& p, float v) { p.temperature = v; }, {-0.1f, -1.f, nan, inf}, {0.f, 0.7f, 2.f}},
      {"top_p", [](SamplingParams& p, float v) { p.top_p = v; }, {0.f, -0.5f, 1.0001f, 7.f, nan}, {0.01f, 0.5f, 1.f}},
      {"min_p", [](SamplingParams& p, float v) { p.min_p = v; }, {-0.01f, 1.5f, nan}, {0.f, 0.3f, 1.f}},
      {"repetition_penalty", [](SamplingParams& p, float v) { p.repetition_penalty = v; },
       {0.f, -1.f, nan, inf}, {0.5f, 1.f, 1.3f}},
  };
  for (const auto& pr : params) {
    for (float v : pr.bad) {
      SamplingParams p;
      pr.set(p, v);
      const std::string msg = ctor_error(p);
      EXPECT_NE(msg.find(pr.name), std::string::npos) << pr.name << " = " << v << ": '" << msg << "'";
    }
    for (float v : pr.good) {
      SamplingParams p;
      pr.set(p, v);
      EXPECT_EQ(ctor_error(p), "") << pr.name << " = " << v;
    }
  }
  EXPECT_EQ(ctor_error(SamplingParams{}), "");  // the defaults are valid
  SamplingParams p;
  p.temperature = -1.f;
  const std::string msg = ctor_error(p);
  EXPECT_NE(msg.find("-1"), std::string::npos) << "the message shows the value: " << msg;
}

TEST(SamplerParamsDeathTest, EmptyLogitsAreAProgrammerError) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  Sampler s(plain());
  EXPECT_DEATH(s.sample({}, {}), "at least one logit");
}

}  // namespace

// OpenAI's penalties count the tokens the sampler drew itself: logit -= presence * (count > 0) +
// frequency * count.
TEST(SamplerOpenAiPenalties, PresenceOnceFrequencyPerDraw) {
  gptq::SamplingParams p;
  p.temperature = 0;
  p.frequency_penalty = 0.4f;
  gptq::Sampler freq(p);
  const std::vector<float> logits = {1.0f, 0.3f, 0.0f};
  EXPECT_EQ(freq.sample(logits, {}), 0);  // 1.0
  EXPECT_EQ(freq.sample(logits, {}), 0);  // 1.0 - 0.4 = 0.6 > 0.3
  EXPECT_EQ(freq.sample(logits, {}), 1);  // 1.0 - 0.8 = 0.2 < 0.3
  p.frequency_penalty = 0;
  p.presence_penalty = 0.5f;
  gptq::Sampler presence(p);
  EXPECT_EQ(presence.sample(logits, {}), 0);
  EXPECT_EQ(presence.sample(logits, {}), 0);  // 1.0 - 0.5 = 0.5 > 0.3
  EXPECT_EQ(presence.sample(logits, {}), 0);  // still 0.5: counted once
  // The history passed in (the prompt) does not count.
  EXPECT_EQ(gptq::Sampler(p).sample(logits, {0, 0, 0}), 0);
  p.presence_penalty = 2.5f;
  EXPECT_THROW(gptq::Sampler{p}, gptq::Error);
}
