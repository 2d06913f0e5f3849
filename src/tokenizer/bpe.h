// The BPE model of tokenizer.json: vocabulary, merges by rank, unknown-token and byte-fallback
// handling. tokenize() reproduces HF `tokenizers` (models/bpe/model.rs merge_word + word.rs
// merge_all): symbols in a linked list and a min-heap of candidate merges keyed by (rank, position),
// so a whole 1 MB "word" (SentencePiece BPE has no pre-tokenizer split) merges in O(n log n).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace gptq::tok {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using TokenMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

class BpeModel {
 public:
  // Reads a "model" object of type BPE. Throws gptq::Error on a malformed vocabulary or merges.
  static BpeModel from_json(const nlohmann::json& model);

  // Appends the ids of one pre-tokenized word to `out`.
  void tokenize(std::string_view word, std::vector<int32_t>& out) const;

  int32_t token_to_id(std::string_view token) const {
    auto it = vocab_.find(token);
    return it == vocab_.end() ? -1 : it->second;
  }
  // nullptr when the id has no vocabulary entry.
  const std::string* id_to_token(int32_t id) const {
    return id >= 0 && static_cast<size_t>(id) < id_to_token_.size() && has_token_[id] ? &id_to_token_[id] : nullptr;
  }
  int32_t max_id() const { return static_cast<int32_t>(id_to_token_.size()) - 1; }
  size_t num_merges() const { return merges_.size(); }

  // transformers' LlamaTokenizer rebuilds the model with these (see tokenizer.cpp).
  void set_unk_id(int32_t id) { unk_id_ = id; }
  void set_byte_fallback(bool on) { byte_fallback_ = on; }
  void set_fuse_unk(bool on) { fuse_unk_ = on; }

 private:
  struct Merge {
    int32_t rank;
    int32_t new_id;
  };
  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  // Open addressing with linear probing: the merge lookup is the inner loop of tokenize().
  class MergeMap {
   public:
    void reserve(size_t n);
    void insert_or_assign(uint64_t key, Merge m);
    const Merge* find(uint64_t key) const {
      if (slots_.empty()) return nullptr;
      for (size_t i = hash(key) & mask_;; i = (i + 1) & mask_) {
        if (slots_[i].key == key) return &slots_[i].merge;
        if (slots_[i].key == kEmpty) return nullptr;
      }
    }
    size_t size() const { return size_; }
    bool empty() const { return size_ == 0; }

   private:
    static constexpr uint64_t kEmpty = ~uint64_t{0};  // no pair of non-negative ids has this key
    static size_t hash(uint64_t k) {
      k ^= k >> 33;
      k *= 0xff51afd7ed558ccdULL;
      k ^= k >> 33;
      return static_cast<size_t>(k);
    }
    struct Slot {
      uint64_t key = kEmpty;
      Merge merge{};
    };
    std::vector<Slot> slots_;
    size_t mask_ = 0, size_ = 0;
  };

  const Merge* find_merge(int32_t a, int32_t b) const { return merges_.find(pair_key(a, b)); }
  struct Candidate {
    int32_t rank, pos, new_id;
  };
  struct Scratch {
    std::vector<int32_t> prev, next;
    std::vector<Candidate> heap;
  };
  // Merges the symbols [begin, end) as HF's Word::merge_all does for a whole word.
  void merge_all(std::vector<int32_t>& ids, std::vector<uint32_t>& lens, int32_t begin, int32_t end,
                 Scratch& scratch) const;

  TokenMap vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> has_token_;
  MergeMap merges_;
  std::array<int32_t, 256> byte_ids_{};  // id of "<0xNN>", -1 when absent
  // in_merge_[id]: the id is one side of some merge. A symbol whose id is in no merge can never
  // merge with a neighbour, so it cuts a word into parts that merge independently: same result
  // as one big merge, but small heaps (SentencePiece text is one "word" split by newlines).
  std::vector<bool> in_merge_;
  int32_t unk_id_ = -1;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::string continuing_subword_prefix_;
  std::string end_of_word_suffix_;
};

}  // namespace gptq::tok
