#include "server/engine.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "server/api_error.h"

namespace gptq::server {

// ---- Stream -------------------------------------------------------------------------------------

bool Stream::next(std::vector<Piece>& out, std::chrono::milliseconds wait) {
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, wait, [&] { return !pieces_.empty() || done_; });
  if (pieces_.empty() && !done_) return false;
  out.insert(out.end(), std::make_move_iterator(pieces_.begin()), std::make_move_iterator(pieces_.end()));
  pieces_.clear();
  return true;
}

bool Stream::done() const {
  std::lock_guard lock(mu_);
  return done_;
}

void Stream::push(Piece p) {
  {
    std::lock_guard lock(mu_);
    pieces_.push_back(std::move(p));
  }
  cv_.notify_all();
}

void Stream::finish(const std::string& reason, std::string rest) {
  {
    std::lock_guard lock(mu_);
    finish_reason = reason;
    tail = std::move(rest);
    done_ = true;
  }
  cv_.notify_all();
}

void Stream::fail(int status, const std::string& message) {
  {
    std::lock_guard lock(mu_);
    error_status = status;
    error_message = message;
    done_ = true;
  }
  cv_.notify_all();
}

// ---- Engine -------------------------------------------------------------------------------------

struct Engine::Active {
  Active(Queued q, const Tokenizer& tok)
      : req(std::move(q.req)), stream(std::move(q.stream)), arrival(q.arrival), sampler(req.sampling),
        text(tok, req.stop), history(req.prompt) {}
  Request req;
  std::shared_ptr<Stream> stream;
  Clock::time_point arrival, last_token;
  Sampler sampler;
  TextStream text;
  std::vector<int32_t> history;  // prompt and generated tokens (the repetition penalty's window)
  int64_t seq = -1, reserved_blocks = 0;
  int64_t prefilled = 0;         // prompt tokens in the cache
  int64_t generated = 0;
  int32_t last = -1;             // the sampled token the next decode step feeds
};

Engine::Engine(Model& model, const Tokenizer& tok, const EngineOptions& o, Metrics& metrics)
    : model_(model), tok_(tok), opt_(o), metrics_(metrics), eos_(eos_ids(model, tok)) {
  if (opt_.max_batch < 1) fail("--max-batch must be >= 1, got ", opt_.max_batch);
  if (opt_.max_queue < 0) fail("--max-queue must be >= 0, got ", opt_.max_queue);
  if (opt_.prefill_chunk < 1) fail("the prefill chunk must be >= 1 token, got ", opt_.prefill_chunk);
  ctx_ = opt_.ctx <= 0 ? model.context_length() : std::min(opt_.ctx, model.context_length());
  const int64_t in_flight = opt_.max_tokens_in_flight > 0 ? opt_.max_tokens_in_flight : ctx_ * opt_.max_batch;
  KVCacheOptions kv;
  kv.max_tokens = in_flight;
  cache_ = model.new_cache(ctx_, kv);
  pool_blocks_ = (in_flight + cache_->block_size() - 1) / cache_->block_size();
  max_seq_tokens_ = std::min(ctx_, pool_blocks_ * cache_->block_size());
  // The largest forward pass a step makes: every running sequence's decode token plus a prefill chunk.
  model.check_forward_memory(opt_.max_batch + opt_.prefill_chunk, opt_.max_batch);
  metrics_.set("gptq_kv_blocks_total", double(pool_blocks_));
  thread_ = std::thread([this] { loop(); });
}

Engine::~Engine() {
  drain();
  thread_.join();
}

int64_t Engine::reservation(const Request& r) const {
  const int64_t bs = cache_->block_size();
  return (int64_t(r.prompt.size()) + r.max_tokens + bs - 1) / bs;
}

std::shared_ptr<Stream> Engine::submit(Request r) {
  if (int64_t(r.prompt.size()) + r.max_tokens > max_seq_tokens_)
    throw ApiError(400, cat("this request needs ", r.prompt.size(), " prompt tokens + ", r.max_tokens,
                            " max_tokens = ", int64_t(r.prompt.size()) + r.max_tokens,
                            " tokens, but a sequence may hold at most ", max_seq_tokens_,
                            " tokens: shorten the prompt or lower max_tokens"),
                   "max_tokens", "context_length_exceeded");
  try {  // what the engine thread will construct, checked here where a refusal can be answered
    Sampler check_sampling(r.sampling);
    TextStream check_stop(tok_, r.stop);
  } catch (const Error& e) {
    throw ApiError(400, e.what());
  }
  auto s = std::make_shared<Stream>();
  s->prompt_tokens = int64_t(r.prompt.size());
  {
    std::lock_guard lock(mu_);
    if (draining_) throw ApiError(503, "the server is shutting down");
    if (int64_t(queue_.size()) >= opt_.max_queue)
      throw ApiError(429, cat("the queue is full (", opt_.max_queue, " requests waiting): retry later"));
    queue_.push_back({std::move(r), s, Clock::now()});
    metrics_.set("gptq_queue_depth", double(queue_.size()));
  }
  cv_.notify_all();
  return s;
}

void Engine::cancel(const std::shared_ptr<Stream>& s) {
  {
    std::lock_guard lock(s->mu_);
    s->cancelled_ = true;
  }
  cv_.notify_all();
}

void Engine::drain() {
  {
    std::lock_guard lock(mu_);
    draining_ = true;
  }
  cv_.notify_all();
}

void Engine::admit() {
  const auto now = Clock::now();
  for (auto it = queue_.begin(); it != queue_.end();) {  // gone or expired while waiting
    bool cancelled;
    {
      std::lock_guard lock(it->stream->mu_);
      cancelled = it->stream->cancelled_;
    }
    if (cancelled || now >= it->req.deadline) {
      if (!cancelled) it->stream->fail(504, "the request timed out waiting in the queue");
      it = queue_.erase(it);
    } else {
      ++it;
    }
  }
  // In arrival order: a large request at the head waits for room rather than being overtaken forever.
  while (!queue_.empty() && int64_t(active_.size()) < opt_.max_batch &&
         reserved_blocks_ + reservation(queue_.front().req) <= pool_blocks_) {
    auto a = std::make_unique<Active>(std::move(queue_.front()), tok_);
    queue_.pop_front();
    a->seq = cache_->add_sequence();
    a->reserved_blocks = reservation(a->req);
    reserved_blocks_ += a->reserved_blocks;
    metrics_.add("gptq_prompt_tokens_total", double(a->req.prompt.size()));
    active_.push_back(std::move(a));
  }
  metrics_.set("gptq_queue_depth", double(queue_.size()));
}

void Engine::loop() {
  for (;;) {
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return !queue_.empty() || !active_.empty() || draining_; });
      if (draining_ && queue_.empty() && active_.empty()) return;
      admit();
    }
    if (!active_.empty()) step();
    metrics_.set("gptq_running_sequences", double(active_.size()));
    metrics_.set("gptq_kv_blocks_used", double(cache_->blocks_in_use()));
  }
}

void Engine::release(size_t i) {
  Active& a = *active_[i];
  cache_->free_sequence(a.seq);
  reserved_blocks_ -= a.reserved_blocks;
  active_.erase(active_.begin() + ptrdiff_t(i));
}

namespace {
// log-softmax of the chosen token and the `top` most likely tokens of one logit row.
void fill_logprobs(const float* row, size_t V, int top, Piece& p) {
  const float mx = *std::max_element(row, row + V);
  double sum = 0;
  for (size_t v = 0; v < V; ++v) sum += std::exp(double(row[v]) - mx);
  const double lse = double(mx) + std::log(sum);
  p.logprob = float(double(row[p.id]) - lse);
  if (top <= 0) return;
  std::vector<int32_t> idx(V);
  std::iota(idx.begin(), idx.end(), 0);
  const size_t k = std::min(size_t(top), V);
  std::partial_sort(idx.begin(), idx.begin() + ptrdiff_t(k), idx.end(),
                    [&](int32_t a, int32_t b) { return row[a] > row[b] || (row[a] == row[b] && a < b); });
  for (size_t j = 0; j < k; ++j) p.top.emplace_back(idx[j], float(double(row[idx[j]]) - lse));
}
}  // namespace

void Engine::step() {
  const auto now = Clock::now();
  for (size_t i = active_.size(); i-- > 0;) {
    Active& a = *active_[i];
    bool cancelled;
    {
      std::lock_guard lock(a.stream->mu_);
      cancelled = a.stream->cancelled_;
    }
    if (!cancelled && now < a.req.deadline) continue;
    if (!cancelled) a.stream->fail(504, "the request timed out while generating");
    release(i);
  }
  if (active_.empty()) return;

  // Decode tokens first, then prompt chunks in admission order within the step's prefill budget.
  Batch batch;
  std::vector<Active*> rows;  // the sequences that get a logit row, in row order
  std::vector<std::pair<Active*, int64_t>> chunks;
  for (auto& a : active_)
    if (a->prefilled == int64_t(a->req.prompt.size())) {
      batch.add(a->seq, &a->last, 1, Logits::kLast);
      rows.push_back(a.get());
    }
  int64_t budget = opt_.prefill_chunk;
  for (auto& a : active_) {
    const int64_t left = int64_t(a->req.prompt.size()) - a->prefilled;
    if (left == 0 || budget == 0) continue;
    const int64_t n = std::min(left, budget);
    budget -= n;
    const bool last_chunk = n == left;
    batch.add(a->seq, a->req.prompt.data() + a->prefilled, n, last_chunk ? Logits::kLast : Logits::kNone);
    chunks.emplace_back(a.get(), n);
    if (last_chunk) rows.push_back(a.get());
  }

  std::vector<float> logits;
  try {
    model_.forward(batch, *cache_, logits);
  } catch (const std::exception& e) {  // gptq::Error, or out of memory
    // Every sequence of this batch may now hold a partial step: none can go on.
    for (size_t i = active_.size(); i-- > 0;) {
      active_[i]->stream->fail(500, cat("the forward pass failed: ", e.what()));
      release(i);
    }
    return;
  }
  for (auto& [a, n] : chunks) a->prefilled += n;

  const size_t V = size_t(model_.vocab_size());
  const auto t = Clock::now();
  std::vector<Active*> finished;
  std::vector<std::string> reasons;
  for (size_t r = 0; r < rows.size(); ++r) {
    Active& a = *rows[r];
    const float* row = logits.data() + r * V;
    Piece p;
    p.id = a.sampler.sample(std::vector<float>(row, row + V), a.history);
    if (a.generated == 0) metrics_.observe("gptq_time_to_first_token_seconds", std::chrono::duration<double>(t - a.arrival).count());
    else metrics_.observe("gptq_inter_token_latency_seconds", std::chrono::duration<double>(t - a.last_token).count());
    a.last_token = t;
    const char* reason = nullptr;
    if (std::find(eos_.begin(), eos_.end(), p.id) != eos_.end()) {
      reason = "stop";
    } else {
      ++a.generated;
      metrics_.add("gptq_generation_tokens_total", 1);
      a.history.push_back(p.id);
      a.last = p.id;
      if (a.req.top_logprobs >= 0) fill_logprobs(row, V, a.req.top_logprobs, p);
      p.text = a.text.push(p.id);
      a.stream->push(std::move(p));
      if (a.text.stopped()) reason = "stop";
      else if (a.generated >= a.req.max_tokens) reason = "length";
    }
    if (reason) {
      finished.push_back(&a);
      reasons.push_back(reason);
    }
  }
  for (size_t f = 0; f < finished.size(); ++f) {
    Active& a = *finished[f];
    a.stream->completion_tokens = a.generated;
    a.stream->finish(reasons[f], a.text.finish());
    const auto it = std::find_if(active_.begin(), active_.end(), [&](const auto& x) { return x.get() == &a; });
    release(size_t(it - active_.begin()));
  }
}

}  // namespace gptq::server
