// The families gptq serve exposes (metrics.h).
#include "server/metrics.h"

namespace gptq::server {

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
