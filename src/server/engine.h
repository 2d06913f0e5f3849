// Continuous batching over one Model and one paged KVCache, owned by one engine thread. HTTP
// handler threads submit requests and read each one's Stream; every engine step
//  1. drops requests whose client went away or whose time ran out (their cache blocks freed),
//  2. admits queued requests, in arrival order, while the running batch has room (max_batch) and
//     the KV pool can hold each one's prompt + max_tokens (a request that does not fit waits),
//  3. runs ONE forward: a decode token for every running sequence plus up to prefill_chunk prompt
//     tokens of the sequences still prefilling (long prompts go in chunks, so streams keep flowing),
//  4. samples each sequence that got logits (its own Sampler and seed), streams its text and
//     finishes it on eos, a stop string or max_tokens.
// Reserving prompt + max_tokens at admission means a running sequence never finds the pool full
// (no preemption needed); the pool itself still only allocates blocks for tokens actually held.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "gptq/generate.h"
#include "server/metrics.h"

namespace gptq::server {

using Clock = std::chrono::steady_clock;

struct EngineOptions {
  int max_batch = 32;                // sequences in the running batch
  int64_t max_tokens_in_flight = 0;  // KV slots all running sequences may reserve (0: max_batch × ctx)
  int64_t ctx = 0;                   // positions per sequence (0 or above the model's: the model's)
  int max_queue = 64;                // requests waiting for admission; more are refused (429)
  int64_t prefill_chunk = 256;       // prompt tokens prefilled per step, all sequences together
};

struct Request {
  std::vector<int32_t> prompt;
  int64_t max_tokens = 16;
  SamplingParams sampling;
  std::vector<std::string> stop;
  int top_logprobs = -1;  // -1: no logprobs; else the logprob of each token and its top-N alternatives
  Clock::time_point deadline = Clock::time_point::max();
};

// What one generated token produced.
struct Piece {
  std::string text;     // final text released with it (may be empty: held back or half a character)
  int32_t id = -1;
  float logprob = 0;    // of the model's distribution (before penalties and temperature)
  std::vector<std::pair<int32_t, float>> top;  // the top_logprobs most likely tokens, best first
};

// A request's results as they come, from the engine thread to the handler thread.
class Stream {
 public:
  // Handler side. Waits up to `wait` for news, then moves out the pieces since the last call;
  // false when there was nothing new and the request is not done.
  bool next(std::vector<Piece>& out, std::chrono::milliseconds wait);
  bool done() const;
  // Valid once done(): "stop" or "length", or an error (status != 0) with its message.
  std::string finish_reason, tail;  // tail: text held back until the end (after the pieces)
  int error_status = 0;
  std::string error_message;
  int64_t prompt_tokens = 0, completion_tokens = 0;

 private:
  friend class Engine;
  void push(Piece p);
  void finish(const std::string& reason, std::string rest);
  void fail(int status, const std::string& message);
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Piece> pieces_;
  bool done_ = false;
  bool cancelled_ = false;  // the client went away (Engine::cancel)
};

class Engine {
 public:
  Engine(Model& model, const Tokenizer& tok, const EngineOptions& o, Metrics& metrics);
  ~Engine();  // drains, then joins the thread
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a request. Throws ApiError: 400 when it can never fit (prompt + max_tokens over
  // max_sequence_tokens()), 429 when the queue is full, 503 while draining.
  std::shared_ptr<Stream> submit(Request r);
  // The client is gone: the request leaves the queue or the batch at the next step.
  void cancel(const std::shared_ptr<Stream>& s);
  // Refuses new requests; the thread ends when the queued and running ones are done.
  void drain();
  // The most prompt + max_tokens one request may have: the context, or the KV pool if smaller.
  int64_t max_sequence_tokens() const { return max_seq_tokens_; }
  int64_t context_length() const { return ctx_; }

 private:
  struct Active;
  struct Queued {
    Request req;
    std::shared_ptr<Stream> stream;
    Clock::time_point arrival;
  };
  void loop();
  void admit();  // under mu_
  void step();
  void release(size_t i);  // frees active_[i]'s cache blocks and reservation, and drops it
  int64_t reservation(const Request& r) const;      // blocks

  Model& model_;
  const Tokenizer& tok_;
  EngineOptions opt_;
  Metrics& metrics_;
  std::vector<int32_t> eos_;
  std::unique_ptr<KVCache> cache_;
  int64_t ctx_, max_seq_tokens_, pool_blocks_, reserved_blocks_ = 0;

  std::mutex mu_;  // guards queue_ and draining_
  std::condition_variable cv_;
  std::deque<Queued> queue_;
  bool draining_ = false;
  std::vector<std::unique_ptr<Active>> active_;  // engine thread only
  std::thread thread_;
};

}  // namespace gptq::server
