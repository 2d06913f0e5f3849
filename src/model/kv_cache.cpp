#include "model/kv_cache.h"

#include <algorithm>

#include "core/memory.h"

namespace gptq {

namespace {
constexpr size_t kChunkBytes = size_t(2) << 20;  // blocks are allocated ~2 MiB at a time
}

KVCache::Impl::Seq& KVCache::Impl::seq(int64_t id) {
  auto it = seqs.find(id);
  if (it == seqs.end()) fail("KV cache: no sequence ", id);
  return it->second;
}

const KVCache::Impl::Seq& KVCache::Impl::seq(int64_t id) const {
  auto it = seqs.find(id);
  if (it == seqs.end()) fail("KV cache: no sequence ", id);
  return it->second;
}

KVCache::KVCache(Backend& backend, const ModelConfig& c, int64_t ctx, const KVCacheOptions& o)
    : backend_(backend), opt_(o), ctx_(ctx), impl_(std::make_unique<Impl>()) {
  if (o.block_size < 1 || o.block_size > 4096) fail("KV cache block size must be in 1..4096, got ", o.block_size);
  if (o.max_tokens < 0) fail("KV cache token cap must be >= 0, got ", o.max_tokens);
  impl_->ctx = ctx;
  KVLayout& L = impl_->layout;
  L.n_layers = c.num_layers;
  L.n_kv_heads = c.num_kv_heads;
  L.head_dim = c.head_dim;
  L.block_size = o.block_size;
  L.dtype = o.fp16.value_or(backend.device() != Device::kCpu) ? DType::kF16 : DType::kF32;
  impl_->max_blocks = o.max_tokens == 0 ? 0 : (o.max_tokens + o.block_size - 1) / o.block_size;
}

KVCache::~KVCache() = default;

bool KVCache::fp16() const { return impl_->layout.dtype == DType::kF16; }

int64_t KVCache::add_sequence() {
  const int64_t id = impl_->next_id++;
  impl_->seqs[id] = {};
  return id;
}

bool KVCache::has_sequence(int64_t seq) const { return impl_->seqs.count(seq) != 0; }

void KVCache::free_sequence(int64_t seq) {
  auto& s = impl_->seq(seq);
  for (int32_t b : s.blocks) impl_->free_blocks.push_back(b);
  impl_->seqs.erase(seq);
}

int64_t KVCache::seq_len(int64_t seq) const { return impl_->seq(seq).len; }

void KVCache::truncate(int64_t seq, int64_t n) {
  auto& s = impl_->seq(seq);
  if (n < 0 || n > s.len) fail("KV cache: cannot truncate a sequence of ", s.len, " tokens to ", n);
  s.len = n;
  const size_t keep = size_t((n + opt_.block_size - 1) / opt_.block_size);
  while (s.blocks.size() > keep) {
    impl_->free_blocks.push_back(s.blocks.back());
    s.blocks.pop_back();
  }
}

void KVCache::clear() {
  for (auto& [id, s] : impl_->seqs)
    for (int32_t b : s.blocks) impl_->free_blocks.push_back(b);
  impl_->seqs.clear();
  impl_->next_id = 0;
}

int64_t KVCache::blocks_in_use() const {
  return int64_t(impl_->block_ptrs.size()) - int64_t(impl_->free_blocks.size());
}

size_t KVCache::bytes_allocated() const { return impl_->block_ptrs.size() * impl_->layout.block_bytes(); }

void KVCache::ensure(int64_t seq, int64_t n_tokens) {
  if (n_tokens > ctx_)
    fail("sequence of ", n_tokens, " tokens does not fit in the context of ", ctx_, " tokens");
  Impl& I = *impl_;
  auto& s = I.seq(seq);
  const int64_t need = (n_tokens + opt_.block_size - 1) / opt_.block_size;
  if (const int64_t more = need - int64_t(s.blocks.size()) - int64_t(I.free_blocks.size()); more > 0)
    check_memory(uint64_t(more) * I.layout.block_bytes(), backend_.available_bytes(),
                 cat("the KV cache of a sequence of ", n_tokens, " tokens"));
  while (int64_t(s.blocks.size()) < need) {
    if (I.free_blocks.empty()) {
      const int64_t have = int64_t(I.block_ptrs.size());
      if (I.max_blocks > 0 && have >= I.max_blocks)
        fail("KV cache full: ", have, " blocks of ", opt_.block_size, " tokens are in use (the cap is ",
             opt_.max_tokens, " tokens)");
      const size_t bb = I.layout.block_bytes();
      int64_t n = std::max<int64_t>(1, int64_t(kChunkBytes / bb));
      n = std::min(n, need - int64_t(s.blocks.size()) + 1 + have);  // grow with demand, at most doubling
      if (I.max_blocks > 0) n = std::min(n, I.max_blocks - have);
      auto chunk = backend_.alloc(size_t(n) * bb);
      for (int64_t i = n - 1; i >= 0; --i) {
        I.free_blocks.push_back(int32_t(have + i));
      }
      for (int64_t i = 0; i < n; ++i) I.block_ptrs.push_back(static_cast<char*>(chunk.get()) + size_t(i) * bb);
      I.chunks.push_back(std::move(chunk));
    }
    s.blocks.push_back(I.free_blocks.back());
    I.free_blocks.pop_back();
  }
}

}  // namespace gptq
