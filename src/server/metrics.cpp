#include "server/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <algorithm>

#include "gptq/error.h"

namespace gptq::server {

struct Metrics::Impl {
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  // Written only while the families are declared; read concurrently afterwards.
  std::map<std::string, prometheus::Family<prometheus::Counter>*> counters;
  std::map<std::string, prometheus::Family<prometheus::Gauge>*> gauges;
  std::map<std::string, prometheus::Histogram*> histograms;
};

namespace {
template <typename M>
M& declared(const std::map<std::string, M*>& m, const std::string& name, const char* type) {
  const auto it = m.find(name);
  GPTQ_ASSERT(it != m.end(), "metric ", name, " is not a declared ", type);
  return *it->second;
}
void check_help(const std::string& help) {
  // prometheus-cpp 1.0 writes HELP text unescaped: a newline would end the line.
  GPTQ_ASSERT(help.find('\n') == std::string::npos, "metric help must be one line");
}
}  // namespace

Metrics::Metrics() : impl_(std::make_unique<Impl>()) {}
Metrics::~Metrics() = default;

void Metrics::counter(const std::string& name, const std::string& help) {
  check_help(help);
  impl_->counters[name] = &prometheus::BuildCounter().Name(name).Help(help).Register(*impl_->registry);
}

void Metrics::gauge(const std::string& name, const std::string& help) {
  check_help(help);
  auto& f = prometheus::BuildGauge().Name(name).Help(help).Register(*impl_->registry);
  f.Add({});
  impl_->gauges[name] = &f;
}

void Metrics::histogram(const std::string& name, const std::string& help, std::vector<double> upper_bounds) {
  check_help(help);
  GPTQ_ASSERT(std::is_sorted(upper_bounds.begin(), upper_bounds.end()), "histogram bounds must ascend");
  auto& f = prometheus::BuildHistogram().Name(name).Help(help).Register(*impl_->registry);
  impl_->histograms[name] = &f.Add({}, prometheus::Histogram::BucketBoundaries(std::move(upper_bounds)));
}

void Metrics::add(const std::string& name, double v, const Labels& labels) {
  declared(impl_->counters, name, "counter").Add(labels).Increment(v);
}

void Metrics::set(const std::string& name, double v, const Labels& labels) {
  declared(impl_->gauges, name, "gauge").Add(labels).Set(v);
}

void Metrics::observe(const std::string& name, double v) { declared(impl_->histograms, name, "histogram").Observe(v); }

std::string Metrics::text() const { return prometheus::TextSerializer().Serialize(impl_->registry->Collect()); }

}  // namespace gptq::server
