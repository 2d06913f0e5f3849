#include "tokenizer/bpe.h"

#include <cstdio>
#include <algorithm>

#include <nlohmann/json.hpp>

#include "gptq/error.h"
#include "tokenizer/unicode.h"

namespace gptq::tok {

using json = nlohmann::json;

void BpeModel::MergeMap::reserve(size_t n) {
  size_t cap = 16;
  while (cap < 2 * n) cap *= 2;  // load factor <= 1/2 keeps probe sequences short
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(cap, Slot{});
  mask_ = cap - 1;
  size_ = 0;
  for (const auto& s : old)
    if (s.key != kEmpty) insert_or_assign(s.key, s.merge);
}

void BpeModel::MergeMap::insert_or_assign(uint64_t key, Merge m) {
  if (2 * (size_ + 1) > slots_.size()) reserve(size_ + 1);
  for (size_t i = hash(key) & mask_;; i = (i + 1) & mask_) {
    if (slots_[i].key == key) {
      slots_[i].merge = m;
      return;
    }
    if (slots_[i].key == kEmpty) {
      slots_[i] = Slot{key, m};
      ++size_;
      return;
    }
  }
}

BpeModel BpeModel::from_json(const json& model) {
  BpeModel m;
  if (!model.contains("vocab") || !model["vocab"].is_object() || model["vocab"].empty())
    fail("model has no \"vocab\" object");
  const auto& vocab = model["vocab"];
  m.vocab_.reserve(vocab.size());
  int32_t max_id = -1;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 || it.value().get<int64_t>() > INT32_MAX)
      fail("vocab entry \"", it.key(), "\" has no valid id");
    const auto id = it.value().get<int32_t>();
    m.vocab_[it.key()] = id;
    max_id = std::max(max_id, id);
  }
  // Tables are indexed by id: a real vocabulary's ids are dense, so an id far past the entry count
  // is hostile (an id of 300,000,000 would take gigabytes).
  if (int64_t(max_id) >= 2 * int64_t(vocab.size()) + 1024)
    fail("vocab id ", max_id, " is far beyond its ", vocab.size(), " entries (ids of a vocabulary are dense)");
  m.id_to_token_.resize(static_cast<size_t>(max_id) + 1);
  m.has_token_.assign(static_cast<size_t>(max_id) + 1, false);
  for (const auto& [tok, id] : m.vocab_) {
    m.id_to_token_[id] = tok;
    m.has_token_[id] = true;
  }

  auto str_or = [&](const char* key) {
    return model.contains(key) && model[key].is_string() ? model[key].get<std::string>() : std::string();
  };
  m.continuing_subword_prefix_ = str_or("continuing_subword_prefix");
  m.end_of_word_suffix_ = str_or("end_of_word_suffix");
  m.fuse_unk_ = model.value("fuse_unk", false);
  m.byte_fallback_ = model.value("byte_fallback", false);
  m.ignore_merges_ = model.value("ignore_merges", false);
  if (const std::string unk = str_or("unk_token"); !unk.empty()) {
    m.unk_id_ = m.token_to_id(unk);
    if (m.unk_id_ < 0) fail("unk_token \"", unk, "\" is not in the vocab");
  }
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    m.byte_ids_[b] = m.token_to_id(name);
  }

  // Merges come as "a b" strings (older files) or as ["a", "b"] pairs (tokenizers >= 0.20).
  if (model.contains("merges") && model["merges"].is_array()) {
    const auto& merges = model["merges"];
    m.merges_.reserve(merges.size());
    int32_t rank = 0;
    for (const auto& e : merges) {
      std::string a, b;
      if (e.is_string()) {
        const auto s = e.get<std::string>();
        const size_t sp = s.find(' ');
        if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
          fail("merge #", rank, " \"", s, "\" is not two tokens separated by one space");
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
        a = e[0].get<std::string>();
        b = e[1].get<std::string>();
      } else {
        fail("merge #", rank, " is neither \"a b\" nor [\"a\", \"b\"]");
      }
      const int32_t ia = m.token_to_id(a), ib = m.token_to_id(b);
      // HF drops prefix-length bytes from b unconditionally when a continuing prefix is set.
      const size_t cut = std::min(m.continuing_subword_prefix_.size(), b.size());
      const int32_t ij = m.token_to_id(a + b.substr(cut));
      if (ia < 0 || ib < 0 || ij < 0) fail("merge #", rank, " (\"", a, "\", \"", b, "\") uses a token not in the vocab");
      // HF collects the merges into a map, so a duplicated pair keeps its last rank.
      m.merges_.insert_or_assign(pair_key(ia, ib), Merge{rank, ij});
      if (m.in_merge_.empty()) m.in_merge_.assign(m.id_to_token_.size(), false);
      m.in_merge_[ia] = m.in_merge_[ib] = true;
      ++rank;
    }
  }
  return m;
}

void BpeModel::tokenize(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (const int32_t id = token_to_id(word); id >= 0) {
      out.push_back(id);
      return;
    }
  }

  // Initial symbols: one per character (or per byte with byte fallback), unknowns fused.
  std::vector<int32_t> ids;
  std::vector<uint32_t> lens;  // bytes of the word each symbol covers
  ids.reserve(word.size());
  lens.reserve(word.size());
  int32_t pending_unk = -1;
  uint32_t pending_unk_len = 0;
  const bool affixes = !continuing_subword_prefix_.empty() || !end_of_word_suffix_.empty();
  std::string buf;
  for (size_t i = 0; i < word.size();) {
    const size_t start = i;
    const size_t n = std::min(utf8_seq_len(static_cast<unsigned char>(word[i])), word.size() - i);
    i += n;
    std::string_view s = word.substr(start, n);
    if (affixes) {
      buf.clear();
      if (start > 0) buf += continuing_subword_prefix_;
      buf.append(s);
      if (i == word.size()) buf += end_of_word_suffix_;
      s = buf;
    }
    if (const int32_t id = token_to_id(s); id >= 0) {
      if (pending_unk >= 0) {
        ids.push_back(pending_unk);
        lens.push_back(pending_unk_len);
        pending_unk = -1;
      }
      ids.push_back(id);
      lens.push_back(static_cast<uint32_t>(n));
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (unsigned char b : s) all = all && byte_ids_[b] >= 0;
      if (all) {
        // HF adds the bytes without first flushing a pending unk; kept for identical output.
        for (unsigned char b : s) {
          ids.push_back(byte_ids_[b]);
          lens.push_back(1);
        }
        continue;
      }
    }
    if (unk_id_ >= 0) {
      if (pending_unk >= 0 && fuse_unk_) {
        pending_unk_len += static_cast<uint32_t>(n);
      } else {
        if (pending_unk >= 0) {
          ids.push_back(pending_unk);
          lens.push_back(pending_unk_len);
        }
        pending_unk = unk_id_;
        pending_unk_len = static_cast<uint32_t>(n);
      }
    }
    // Without an unk token the character is dropped, as HF does.
  }
  if (pending_unk >= 0) {
    ids.push_back(pending_unk);
    lens.push_back(pending_unk_len);
  }
  if (ids.size() > 1 && !merges_.empty()) {
    Scratch scratch;
    const auto n = static_cast<int32_t>(ids.size());
    scratch.prev.resize(n);
    scratch.next.resize(n);
    int32_t begin = 0;
    for (int32_t i = 0; i <= n; ++i) {
      if (i < n && in_merge_[ids[i]]) continue;
      if (i - begin > 1) merge_all(ids, lens, begin, i, scratch);
      begin = i + 1;
    }
    for (int32_t i = 0; i < n; ++i)
      if (lens[i] != 0) out.push_back(ids[i]);
  } else {
    out.insert(out.end(), ids.begin(), ids.end());
  }
}

void BpeModel::merge_all(std::vector<int32_t>& ids, std::vector<uint32_t>& lens, int32_t begin, int32_t end,
                         Scratch& scratch) const {
  auto& prev = scratch.prev;
  auto& next = scratch.next;
  for (int32_t i = begin; i < end; ++i) {
    prev[i] = i > begin ? i - 1 : -1;
    next[i] = i + 1 < end ? i + 1 : -1;
  }
  // A min-heap on (rank, pos), as HF's BinaryHeap<Merge>; std heap functions build a max-heap,
  // so "less" means "popped later".
  auto later = [](const Candidate& a, const Candidate& b) { return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos; };
  auto& heap = scratch.heap;
  heap.clear();
  for (int32_t i = begin; i + 1 < end; ++i)
    if (const Merge* m = find_merge(ids[i], ids[i + 1])) heap.push_back({m->rank, i, m->new_id});
  std::make_heap(heap.begin(), heap.end(), later);
  auto push = [&](const Candidate& c) {
    heap.push_back(c);
    std::push_heap(heap.begin(), heap.end(), later);
  };

  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const Candidate top = heap.back();
    heap.pop_back();
    const int32_t pos = top.pos;
    if (lens[pos] == 0 || next[pos] == -1) continue;  // merged away, or now the last symbol
    const int32_t right = next[pos];
    // A stale entry: the pair at `pos` changed since it was queued.
    const Merge* cur = find_merge(ids[pos], ids[right]);
    if (cur == nullptr || cur->new_id != top.new_id) continue;

    ids[pos] = top.new_id;
    lens[pos] += lens[right];
    lens[right] = 0;
    next[pos] = next[right];
    if (next[right] >= 0) prev[next[right]] = pos;

    if (prev[pos] >= 0)
      if (const Merge* m = find_merge(ids[prev[pos]], ids[pos])) push({m->rank, prev[pos], m->new_id});
    if (next[pos] >= 0)
      if (const Merge* m = find_merge(ids[pos], ids[next[pos]])) push({m->rank, pos, m->new_id});
  }
}

}  // namespace gptq::tok
