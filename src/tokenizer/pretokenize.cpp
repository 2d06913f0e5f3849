#include "tokenizer/pretokenize.h"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "core/json.h"
#include "gptq/error.h"
#include "tokenizer/unicode.h"

namespace gptq::tok {

using json = nlohmann::json;

namespace {

// GPT-2's pre-tokenization regex, fixed inside HF's ByteLevel pre-tokenizer (not in the file).
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

std::string type_of(const json& j, const char* what) {
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
    fail(what, " without a \"type\": ", json_preview(j));
  return j["type"].get<std::string>();
}

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  if (from.empty() || s.find(from) == std::string::npos) return;
  std::string out;
  out.reserve(s.size() + s.size() / 4);
  size_t pos = 0;
  for (size_t hit; (hit = s.find(from, pos)) != std::string::npos; pos = hit + from.size()) {
    out.append(s, pos, hit - pos);
    out.append(to);
  }
  out.append(s, pos);
  s = std::move(out);
}

// ---- normalizers --------------------------------------------------------------------------

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> parts) : parts_(std::move(parts)) {}
  void normalize(std::string& text) const override {
    for (const auto& p : parts_) p->normalize(text);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> parts_;
};

class PrependNormalizer final : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  void normalize(std::string& text) const override {
    if (!text.empty()) text.insert(0, prefix_);  // HF leaves an empty string empty
  }

 private:
  std::string prefix_;
};

class ReplaceNormalizer final : public Normalizer {
 public:
  ReplaceNormalizer(const json& pattern, std::string content) : pattern_(pattern), content_(std::move(content)) {}
  void normalize(std::string& text) const override {
    std::string out;
    size_t pos = 0;
    bool any = false;
    pattern_.find_all(text, [&](size_t s, size_t e) {
      if (!any) out.reserve(text.size() + text.size() / 4);
      any = true;
      out.append(text, pos, s - pos);
      out.append(content_);
      pos = e;
    });
    if (!any) return;
    out.append(text, pos);
    text = std::move(out);
  }

 private:
  Pattern pattern_;
  std::string content_;
};

class StripNormalizer final : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  void normalize(std::string& text) const override {
    size_t begin = 0, end = text.size();
    if (left_) {
      while (begin < end) {
        size_t i = begin;
        if (!is_unicode_whitespace(utf8_next(text, i))) break;
        begin = i;
      }
    }
    if (right_) {
      while (end > begin) {
        size_t start = end - 1;
        while (start > begin && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
        size_t i = start;
        if (!is_unicode_whitespace(utf8_next(text, i))) break;
        end = start;
      }
    }
    text = text.substr(begin, end - begin);
  }

 private:
  bool left_, right_;
};

// Text that is already in NFC (nearly all real text) is unchanged by NFC; we do not ship Unicode
// composition tables, so decomposed input (e.g. "e" + U+0301) is passed through as is.
class NfcNormalizer final : public Normalizer {
 public:
  void normalize(std::string&) const override {}
};

// ---- pre-tokenizers -----------------------------------------------------------------------

class SequencePreTokenizer final : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> parts) : parts_(std::move(parts)) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    for (const auto& p : parts_) p->pre_tokenize(pieces);
  }
  bool byte_level() const override {
    for (const auto& p : parts_)
      if (p->byte_level()) return true;
    return false;
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> parts_;
};

class MetaspacePreTokenizer final : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, PrependScheme scheme, bool split)
      : rep_(std::move(replacement)), scheme_(scheme), split_(split) {}

  void pre_tokenize(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    out.reserve(pieces.size());
    for (auto& p : pieces) {
      replace_all(p.text, " ", rep_);
      const bool starts = p.text.compare(0, rep_.size(), rep_) == 0;
      if (!starts && (scheme_ == PrependScheme::kAlways || (scheme_ == PrependScheme::kFirst && p.offset == 0)))
        p.text.insert(0, rep_);
      if (!split_) {
        out.push_back(std::move(p));
        continue;
      }
      // split: each replacement character starts a new piece (HF MergedWithNext).
      size_t start = 0;
      for (size_t hit = p.text.find(rep_, 1); hit != std::string::npos; hit = p.text.find(rep_, hit + rep_.size())) {
        if (hit > start) out.push_back({p.text.substr(start, hit - start), p.offset + start});
        start = hit;
      }
      if (start < p.text.size()) out.push_back({p.text.substr(start), p.offset + start});
    }
    pieces = std::move(out);
  }

 private:
  std::string rep_;
  PrependScheme scheme_;
  bool split_;
};

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// Splits each piece at the matches of a pattern, as HF's NormalizedString::split does.
void split_pieces(std::vector<Piece>& pieces, const std::function<void(std::string_view, const std::function<void(size_t, size_t)>&)>& find,
                  SplitBehavior behavior, bool invert) {
  std::vector<Piece> out;
  out.reserve(pieces.size() * 2);
  struct Span {
    size_t start, end;
    bool match;
  };
  std::vector<Span> spans;
  for (auto& p : pieces) {
    spans.clear();
    size_t prev = 0;
    find(p.text, [&](size_t s, size_t e) {
      if (s != prev) spans.push_back({prev, s, false});
      spans.push_back({s, e, true});
      prev = e;
    });
    if (prev != p.text.size()) spans.push_back({prev, p.text.size(), false});
    if (invert)
      for (auto& s : spans) s.match = !s.match;

    std::vector<Span> merged;
    bool previous_match = false;
    switch (behavior) {
      case SplitBehavior::kRemoved:
        for (const auto& s : spans)
          if (!s.match) merged.push_back(s);
        break;
      case SplitBehavior::kIsolated:
        merged = spans;
        break;
      case SplitBehavior::kContiguous:
        for (const auto& s : spans) {
          if (s.match == previous_match && !merged.empty()) merged.back().end = s.end;
          else merged.push_back(s);
          previous_match = s.match;
        }
        break;
      case SplitBehavior::kMergedWithPrevious:
        for (const auto& s : spans) {
          if (s.match && !previous_match && !merged.empty()) merged.back().end = s.end;
          else merged.push_back(s);
          previous_match = s.match;
        }
        break;
      case SplitBehavior::kMergedWithNext:
        for (size_t k = spans.size(); k-- > 0;) {
          const auto& s = spans[k];
          if (s.match && !previous_match && !merged.empty()) merged.back().start = s.start;
          else merged.push_back(s);
          previous_match = s.match;
        }
        std::reverse(merged.begin(), merged.end());
        break;
    }
    for (const auto& s : merged)
      if (s.end > s.start) out.push_back({p.text.substr(s.start, s.end - s.start), p.offset + s.start});
  }
  pieces = std::move(out);
}

class SplitPreTokenizer final : public PreTokenizer {
 public:
  SplitPreTokenizer(const json& pattern, SplitBehavior behavior, bool invert)
      : pattern_(pattern), behavior_(behavior), invert_(invert) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    split_pieces(pieces, [this](std::string_view t, const auto& cb) { pattern_.find_all(t, cb); }, behavior_, invert_);
  }

 private:
  Pattern pattern_;
  SplitBehavior behavior_;
  bool invert_;
};

class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex)
      : add_prefix_space_(add_prefix_space), regex_(use_regex ? std::make_unique<Regex>(kGpt2Pattern) : nullptr) {}

  void pre_tokenize(std::vector<Piece>& pieces) const override {
    if (add_prefix_space_)
      for (auto& p : pieces)
        if (p.text.empty() || p.text[0] != ' ') p.text.insert(p.text.begin(), ' ');
    if (regex_)
      split_pieces(pieces, [this](std::string_view t, const auto& cb) { regex_->find_all(t, cb); },
                   SplitBehavior::kIsolated, false);
    const auto& table = byte_to_char();
    for (auto& p : pieces) {
      std::string mapped;
      mapped.reserve(p.text.size() * 2);
      for (unsigned char b : p.text) mapped += table[b];
      p.text = std::move(mapped);
    }
  }
  bool byte_level() const override { return true; }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> regex_;
};

PrependScheme parse_prepend_scheme(const json& j) {
  if (j.contains("prepend_scheme") && j["prepend_scheme"].is_string()) {
    const auto s = j["prepend_scheme"].get<std::string>();
    if (s == "always") return PrependScheme::kAlways;
    if (s == "first") return PrependScheme::kFirst;
    if (s == "never") return PrependScheme::kNever;
    fail("Metaspace: unknown prepend_scheme \"", s, "\"");
  }
  // Files written before prepend_scheme existed carry add_prefix_space instead.
  return j.value("add_prefix_space", true) ? PrependScheme::kAlways : PrependScheme::kNever;
}

SplitBehavior parse_behavior(const std::string& s) {
  if (s == "Removed") return SplitBehavior::kRemoved;
  if (s == "Isolated") return SplitBehavior::kIsolated;
  if (s == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (s == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (s == "Contiguous") return SplitBehavior::kContiguous;
  fail("Split: unknown behavior \"", s, "\"");
}

}  // namespace

Pattern::Pattern(const json& j) {
  if (j.is_object() && j.contains("String") && j["String"].is_string()) {
    source_ = j["String"].get<std::string>();
    if (source_.empty()) fail("empty String pattern");
  } else if (j.is_object() && j.contains("Regex") && j["Regex"].is_string()) {
    source_ = j["Regex"].get<std::string>();
    regex_ = std::make_unique<Regex>(source_);
  } else {
    fail("pattern is neither {\"String\": ...} nor {\"Regex\": ...}: ", json_preview(j));
  }
}

void Pattern::find_all(std::string_view text, const std::function<void(size_t, size_t)>& on_match) const {
  if (regex_) {
    regex_->find_all(text, on_match);
    return;
  }
  for (size_t hit = text.find(source_); hit != std::string_view::npos; hit = text.find(source_, hit + source_.size()))
    on_match(hit, hit + source_.size());
}

std::unique_ptr<Normalizer> make_normalizer(const json& j) {
  if (j.is_null()) return nullptr;
  const std::string type = type_of(j, "normalizer");
  if (type == "Sequence") {
    std::vector<std::unique_ptr<Normalizer>> parts;
    for (const auto& sub : j.at("normalizers"))
      if (auto n = make_normalizer(sub)) parts.push_back(std::move(n));
    return std::make_unique<SequenceNormalizer>(std::move(parts));
  }
  if (type == "Prepend") return std::make_unique<PrependNormalizer>(j.at("prepend").get<std::string>());
  if (type == "Replace") return std::make_unique<ReplaceNormalizer>(j.at("pattern"), j.at("content").get<std::string>());
  if (type == "Strip") return std::make_unique<StripNormalizer>(j.value("strip_left", true), j.value("strip_right", true));
  if (type == "NFC") return std::make_unique<NfcNormalizer>();
  fail("unsupported normalizer type \"", type, "\"");
}

std::unique_ptr<PreTokenizer> make_metaspace(const std::string& replacement, PrependScheme scheme, bool split) {
  return std::make_unique<MetaspacePreTokenizer>(replacement, scheme, split);
}

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& j) {
  if (j.is_null()) return nullptr;
  const std::string type = type_of(j, "pre_tokenizer");
  if (type == "Sequence") {
    std::vector<std::unique_ptr<PreTokenizer>> parts;
    for (const auto& sub : j.at("pretokenizers"))
      if (auto p = make_pre_tokenizer(sub)) parts.push_back(std::move(p));
    return std::make_unique<SequencePreTokenizer>(std::move(parts));
  }
  if (type == "Metaspace")
    return make_metaspace(j.value("replacement", std::string("\xE2\x96\x81")), parse_prepend_scheme(j), j.value("split", true));
  if (type == "ByteLevel")
    return std::make_unique<ByteLevelPreTokenizer>(j.value("add_prefix_space", true), j.value("use_regex", true));
  if (type == "Split")
    return std::make_unique<SplitPreTokenizer>(j.at("pattern"), parse_behavior(j.at("behavior").get<std::string>()),
                                               j.value("invert", false));
  fail("unsupported pre_tokenizer type \"", type, "\"");
}

}  // namespace gptq::tok
