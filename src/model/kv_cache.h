// The paged KV cache's internals, shared by the forward pass (model.cpp) and the cache itself.
#pragma once

#include <map>
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "gptq/model.h"

namespace gptq {

struct KVCache::Impl {
  struct Seq {
    std::vector<int32_t> blocks;  // block table: position p lives in blocks[p / block_size]
    int64_t len = 0;
  };
  KVLayout layout;
  int64_t max_blocks = 0;                    // 0: no cap
  std::vector<std::shared_ptr<void>> chunks;  // backend memory, several blocks each
  std::vector<void*> block_ptrs;             // base address of every block id
  std::vector<int32_t> free_blocks;          // ids ready for reuse (a stack)
  std::map<int64_t, Seq> seqs;
  int64_t next_id = 0;
  int64_t ctx = 0;  // the most positions a sequence may hold

  KVView view() const { return KVView{layout, block_ptrs.data(), ctx}; }
  Seq& seq(int64_t id);
  const Seq& seq(int64_t id) const;
};

}  // namespace gptq
