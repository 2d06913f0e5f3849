// The server's metrics (server/metrics.h on prometheus-cpp): what the families hold, exposed in the
// Prometheus text format.
#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include "server/metrics.h"

using gptq::server::Metrics;

TEST(Metrics, PrometheusTextFormat) {
  Metrics m;
  m.counter("req_total", "Requests by status");
  m.gauge("depth", "Queue depth");
  m.histogram("lat_seconds", "Latency", {0.1, 1});
  m.add("req_total", 1, {{"status", "200"}});
  m.add("req_total", 2, {{"status", "200"}});
  m.add("req_total", 1, {{"path", "a\"b\\"}});  // quote and backslash escaped in the value
  m.set("depth", 3);
  for (double v : {0.05, 0.1, 0.5, 7.0}) m.observe("lat_seconds", v);  // le is inclusive: 0.1 <= 0.1
  EXPECT_EQ(m.text(),
            "# HELP req_total Requests by status\n# TYPE req_total counter\n"
            "req_total{path=\"a\\\"b\\\\\"} 1\nreq_total{status=\"200\"} 3\n"
            "# HELP depth Queue depth\n# TYPE depth gauge\ndepth 3\n"
            "# HELP lat_seconds Latency\n# TYPE lat_seconds histogram\n"
            "lat_seconds_count 4\nlat_seconds_sum 7.65\n"
            "lat_seconds_bucket{le=\"0.1\"} 2\nlat_seconds_bucket{le=\"1\"} 3\nlat_seconds_bucket{le=\"+Inf\"} 4\n");
}

TEST(Metrics, ConcurrentReportsAllCount) {
  Metrics m;
  m.counter("n_total", "Events");
  m.histogram("h", "Values", {1});
  std::vector<std::thread> ts;
  for (int t = 0; t < 8; ++t)
    ts.emplace_back([&, t] {
      for (int i = 0; i < 1000; ++i) {
        m.add("n_total", 1, {{"thread", std::to_string(t % 2)}});
        m.observe("h", 0.5);
      }
    });
  for (auto& t : ts) t.join();
  const std::string text = m.text();
  EXPECT_NE(text.find("n_total{thread=\"0\"} 4000\n"), std::string::npos) << text;
  EXPECT_NE(text.find("n_total{thread=\"1\"} 4000\n"), std::string::npos) << text;
  EXPECT_NE(text.find("h_count 8000\n"), std::string::npos) << text;
}

// A report into a family never declared (a programming error) stops with the name.
TEST(MetricsDeathTest, UndeclaredOrWrongKindStops) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");  // the test binary has other threads
  Metrics m;
  m.gauge("g", "A gauge");
  EXPECT_DEATH(m.add("g", 1), "metric g is not a declared counter");
  EXPECT_DEATH(m.observe("nope", 1), "metric nope is not a declared histogram");
}
