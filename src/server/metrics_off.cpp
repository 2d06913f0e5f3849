// Metrics for builds without the server (GPTQ_NO_SERVE; metrics.h): the interface, recording nothing.
#include "server/metrics.h"

namespace gptq::server {

struct Metrics::Impl {};

Metrics::Metrics() = default;
Metrics::~Metrics() = default;
void Metrics::counter(const std::string&, const std::string&) {}
void Metrics::gauge(const std::string&, const std::string&) {}
void Metrics::histogram(const std::string&, const std::string&, std::vector<double>) {}
void Metrics::add(const std::string&, double, const Labels&) {}
void Metrics::set(const std::string&, double, const Labels&) {}
void Metrics::observe(const std::string&, double) {}
std::string Metrics::text() const { return ""; }

}  // namespace gptq::server
