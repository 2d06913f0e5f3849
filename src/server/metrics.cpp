#include "server/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>

#include "gptq/error.h"

namespace gptq::server {

namespace {
// Shortest text that reads back as the same double; the format's spellings of the infinities.
std::string number(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (std::isnan(v)) return "NaN";
  char buf[32];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, end);
}

std::string series_name(const std::string& name, const std::string& labels) {
  return labels.empty() ? name : name + "{" + labels + "}";
}

// HELP text escapes backslash and newline only.
std::string escape_help(const std::string& s) {
  std::string out;
  for (char c : s) out += c == '\\' ? "\\\\" : c == '\n' ? "\\n" : std::string(1, c);
  return out;
}
}  // namespace

std::string Metrics::label(const std::string& key, const std::string& value) {
  std::string out = key + "=\"";
  for (char c : value) out += c == '\\' ? "\\\\" : c == '"' ? "\\\"" : c == '\n' ? "\\n" : std::string(1, c);
  return out + "\"";
}

Metrics::Family& Metrics::family(const std::string& name, const char* type) {
  auto it = families_.find(name);
  GPTQ_ASSERT(it != families_.end() && it->second.type == type, "metric ", name, " is not a declared ", type);
  return it->second;
}

void Metrics::counter(const std::string& name, const std::string& help) {
  std::lock_guard lock(mu_);
  families_[name] = Family{"counter", help, {}, {}};
}

void Metrics::gauge(const std::string& name, const std::string& help) {
  std::lock_guard lock(mu_);
  families_[name] = Family{"gauge", help, {{"", 0.0}}, {}};
}

void Metrics::histogram(const std::string& name, const std::string& help, std::vector<double> upper_bounds) {
  GPTQ_ASSERT(std::is_sorted(upper_bounds.begin(), upper_bounds.end()), "histogram bounds must ascend");
  std::lock_guard lock(mu_);
  Family f{"histogram", help, {}, {}};
  f.hist.counts.assign(upper_bounds.size() + 1, 0);
  f.hist.bounds = std::move(upper_bounds);
  families_[name] = std::move(f);
}

void Metrics::add(const std::string& name, double v, const std::string& labels) {
  std::lock_guard lock(mu_);
  family(name, "counter").series[labels] += v;
}

void Metrics::set(const std::string& name, double v, const std::string& labels) {
  std::lock_guard lock(mu_);
  family(name, "gauge").series[labels] = v;
}

void Metrics::observe(const std::string& name, double v) {
  std::lock_guard lock(mu_);
  Histogram& h = family(name, "histogram").hist;
  // Bucket i counts bounds[i-1] < v <= bounds[i] ("le" is inclusive).
  h.counts[size_t(std::lower_bound(h.bounds.begin(), h.bounds.end(), v) - h.bounds.begin())]++;
  h.sum += v;
  h.count++;
}

std::string Metrics::text() const {
  std::lock_guard lock(mu_);
  std::string out;
  for (const auto& [name, f] : families_) {
    out += "# HELP " + name + " " + escape_help(f.help) + "\n# TYPE " + name + " " + f.type + "\n";
    if (f.type != "histogram") {
      for (const auto& [labels, v] : f.series) out += series_name(name, labels) + " " + number(v) + "\n";
      continue;
    }
    uint64_t cumulative = 0;
    for (size_t i = 0; i <= f.hist.bounds.size(); ++i) {
      cumulative += f.hist.counts[i];
      const double le = i < f.hist.bounds.size() ? f.hist.bounds[i] : INFINITY;
      out += series_name(name + "_bucket", label("le", number(le))) + " " + std::to_string(cumulative) + "\n";
    }
    out += name + "_sum " + number(f.hist.sum) + "\n" + name + "_count " + std::to_string(f.hist.count) + "\n";
  }
  return out;
}

void declare_server_metrics(Metrics& m) {
  m.counter("gptq_requests_total", "HTTP requests answered, by endpoint and status");
  m.counter("gptq_prompt_tokens_total", "Prompt tokens of admitted requests");
  m.counter("gptq_generation_tokens_total", "Tokens generated");
  m.gauge("gptq_queue_depth", "Requests waiting for admission");
  m.gauge("gptq_running_sequences", "Sequences in the running batch");
  m.gauge("gptq_kv_blocks_used", "KV cache blocks in use");
  m.gauge("gptq_kv_blocks_total", "KV cache blocks the pool may hold");
  const std::vector<double> latency = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
  m.histogram("gptq_time_to_first_token_seconds", "From arrival to the first generated token", latency);
  m.histogram("gptq_inter_token_latency_seconds", "Between consecutive tokens of a request", latency);
}

}  // namespace gptq::server
