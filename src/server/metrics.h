// The server's metrics: counters, gauges and histograms with labels, kept and exposed in the
// Prometheus text format (version 0.0.4) by Debian's prometheus-cpp (core: a Registry and its
// TextSerializer; /metrics is served by the HTTP side). Builds without the server (GPTQ_NO_SERVE:
// the static GPU build, which Debian's shared-only prometheus-cpp cannot link into) get
// metrics_off.cpp instead: the same interface recording nothing, for gptq chat's engine.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace gptq::server {

class Metrics {
 public:
  using Labels = std::map<std::string, std::string>;
  Metrics();
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // Families must be declared before use, before other threads report into them (the reports
  // themselves are thread-safe). Help texts are one line.
  void counter(const std::string& name, const std::string& help);
  void gauge(const std::string& name, const std::string& help);  // starts as one unlabelled series at 0
  void histogram(const std::string& name, const std::string& help, std::vector<double> upper_bounds);

  void add(const std::string& name, double v, const Labels& labels = {});  // counter += v
  void set(const std::string& name, double v, const Labels& labels = {});  // gauge = v
  void observe(const std::string& name, double v);                        // histogram (le inclusive)

  std::string text() const;  // the exposition, families in declaration order

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The families gptq serve exposes (the engine's and the HTTP side's); gptq chat declares them too,
// since the engine it runs reports into them.
void declare_server_metrics(Metrics& m);

}  // namespace gptq::server
