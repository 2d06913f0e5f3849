// The server's metrics in the Prometheus text exposition format (version 0.0.4): counters, gauges
// and histograms, with labels. Written here because Debian has no prometheus-cpp; the format is
// small: "# HELP", "# TYPE", then one "name{labels} value" line per series, histograms as
// cumulative name_bucket{le="..."} series ending in le="+Inf", plus name_sum and name_count.
#pragma once

#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace gptq::server {

class Metrics {
 public:
  // Families must be declared before use; a label string is `key="value",...` (already escaped,
  // see label()), empty for none.
  void counter(const std::string& name, const std::string& help);
  void gauge(const std::string& name, const std::string& help);
  void histogram(const std::string& name, const std::string& help, std::vector<double> upper_bounds);

  void add(const std::string& name, double v, const std::string& labels = "");  // counter += v
  void set(const std::string& name, double v, const std::string& labels = "");  // gauge = v
  void observe(const std::string& name, double v);                              // histogram

  std::string text() const;  // the exposition, families in name order

  // `key="value"` with the value escaped as the format asks (backslash, quote, newline).
  static std::string label(const std::string& key, const std::string& value);

 private:
  struct Histogram {
    std::vector<double> bounds;    // upper bounds, ascending (+Inf implied)
    std::vector<uint64_t> counts;  // per bucket, not cumulative; the last is +Inf
    double sum = 0;
    uint64_t count = 0;
  };
  struct Family {
    std::string type, help;
    std::map<std::string, double> series;  // labels -> value (counters, gauges)
    Histogram hist;
  };
  Family& family(const std::string& name, const char* type);
  mutable std::mutex mu_;
  std::map<std::string, Family> families_;
};

// The families gptq serve exposes (the engine's and the HTTP side's); gptq chat declares them too,
// since the engine it runs reports into them.
void declare_server_metrics(Metrics& m);

}  // namespace gptq::server
