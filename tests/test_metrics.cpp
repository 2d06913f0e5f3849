// The Prometheus text exposition of the server's metrics.
#include <gtest/gtest.h>

#include "server/metrics.h"

TEST(Metrics, PrometheusTextFormat) {
  gptq::server::Metrics m;
  m.counter("req_total", "Requests\nby status");
  m.gauge("depth", "Queue depth");
  m.histogram("lat_seconds", "Latency", {0.1, 1});
  m.add("req_total", 1, gptq::server::Metrics::label("status", "200"));
  m.add("req_total", 2, gptq::server::Metrics::label("status", "200"));
  m.add("req_total", 1, gptq::server::Metrics::label("path", "a\"b\\"));
  m.set("depth", 3);
  for (double v : {0.05, 0.1, 0.5, 7.0}) m.observe("lat_seconds", v);
  EXPECT_EQ(m.text(),
            "# HELP depth Queue depth\n# TYPE depth gauge\ndepth 3\n"
            "# HELP lat_seconds Latency\n# TYPE lat_seconds histogram\n"
            "lat_seconds_bucket{le=\"0.1\"} 2\nlat_seconds_bucket{le=\"1\"} 3\nlat_seconds_bucket{le=\"+Inf\"} 4\n"
            "lat_seconds_sum 7.65\nlat_seconds_count 4\n"
            "# HELP req_total Requests\\nby status\n# TYPE req_total counter\n"
            "req_total{path=\"a\\\"b\\\\\"} 1\nreq_total{status=\"200\"} 3\n");
}
