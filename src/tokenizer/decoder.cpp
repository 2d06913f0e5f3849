#include "tokenizer/decoder.h"

#include <nlohmann/json.hpp>

#include "gptq/error.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/unicode.h"

namespace gptq::tok {

using json = nlohmann::json;

std::string Decoder::decode(std::vector<std::string> tokens) const {
  decode_chain(tokens);
  std::string out;
  for (const auto& t : tokens) out += t;
  return out;
}

namespace {

constexpr const char* kMetaspace = "\xE2\x96\x81";  // U+2581 "▁"

class SequenceDecoder final : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> parts) : parts_(std::move(parts)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (const auto& p : parts_) p->decode_chain(tokens);
  }
  bool byte_level() const override {
    for (const auto& p : parts_)
      if (p->byte_level()) return true;
    return false;
  }

 private:
  std::vector<std::unique_ptr<Decoder>> parts_;
};

class ReplaceDecoder final : public Decoder {
 public:
  ReplaceDecoder(const json& pattern, std::string content) : pattern_(pattern), content_(std::move(content)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (auto& t : tokens) {
      std::string out;
      size_t pos = 0;
      bool any = false;
      pattern_.find_all(t, [&](size_t s, size_t e) {
        any = true;
        out.append(t, pos, s - pos);
        out += content_;
        pos = e;
      });
      if (!any) continue;
      out.append(t, pos);
      t = std::move(out);
    }
  }

 private:
  Pattern pattern_;
  std::string content_;
};

// Runs of <0xNN> tokens become the bytes they stand for; a run that is not valid UTF-8 becomes one
// U+FFFD per byte (all of them, as HF does, not only the invalid ones).
class ByteFallbackDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens.size());
    std::string run;
    size_t run_len = 0;
    auto flush = [&] {
      if (run_len == 0) return;
      if (utf8_valid_prefix(run) == run.size()) {
        out.push_back(run);
      } else {
        for (size_t k = 0; k < run_len; ++k) out.emplace_back(kReplacementChar);
      }
      run.clear();
      run_len = 0;
    };
    for (auto& t : tokens) {
      if (int b = byte_of(t); b >= 0) {
        run += static_cast<char>(b);
        ++run_len;
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    tokens = std::move(out);
  }

 private:
  static int hex(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  }
  static int byte_of(const std::string& t) {
    if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
    const int hi = hex(t[3]), lo = hex(t[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
  }
};

class FuseDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string all;
    for (const auto& t : tokens) all += t;
    tokens.assign(1, std::move(all));
  }
};

// Removes up to `start` leading and `stop` trailing copies of one character from each token.
class StripDecoder final : public Decoder {
 public:
  StripDecoder(std::string content, size_t start, size_t stop) : content_(std::move(content)), start_(start), stop_(stop) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    const size_t c = content_.size();
    for (auto& t : tokens) {
      size_t begin = 0, end = t.size();
      for (size_t k = 0; k < start_ && begin + c <= end && t.compare(begin, c, content_) == 0; ++k) begin += c;
      for (size_t k = 0; k < stop_ && end >= begin + c && t.compare(end - c, c, content_) == 0; ++k) end -= c;
      t = t.substr(begin, end - begin);
    }
  }

 private:
  std::string content_;
  size_t start_, stop_;
};

// Maps the ByteLevel alphabet back to bytes over the whole sequence, then repairs invalid UTF-8.
class ByteLevelDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (const auto& t : tokens) append_bytes(t, bytes);
    tokens.assign(1, utf8_lossy(bytes));
  }
  bool byte_level() const override { return true; }
  bool lossy_bytes() const override { return true; }
  void append_bytes(const std::string& token, std::string& bytes) const override {
    const size_t mark = bytes.size();
    for (size_t i = 0; i < token.size();) {
      const int b = char_to_byte(utf8_next(token, i));
      if (b < 0) {
        // A token with a character outside the table (an added token) keeps its own bytes.
        bytes.resize(mark);
        bytes += token;
        return;
      }
      bytes += static_cast<char>(b);
    }
  }
};

class MetaspaceDecoder final : public Decoder {
 public:
  MetaspaceDecoder(std::string replacement, bool strip_first) : rep_(std::move(replacement)), strip_first_(strip_first) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      // HF drops every replacement character of the first token, not only a leading one.
      const std::string with = i == 0 && strip_first_ ? std::string() : std::string(" ");
      std::string out;
      size_t pos = 0;
      for (size_t hit; (hit = tokens[i].find(rep_, pos)) != std::string::npos; pos = hit + rep_.size()) {
        out.append(tokens[i], pos, hit - pos);
        out += with;
      }
      out.append(tokens[i], pos);
      tokens[i] = std::move(out);
    }
  }

 private:
  std::string rep_;
  bool strip_first_;
};

std::string char_content(const json& j, const char* key) {
  const auto s = j.at(key).get<std::string>();
  size_t i = 0;
  if (s.empty() || (utf8_next(s, i), i != s.size())) fail("decoder ", key, " must be one character, got \"", s, "\"");
  return s;
}

}  // namespace

std::unique_ptr<Decoder> make_decoder(const json& j) {
  if (j.is_null()) return nullptr;
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string()) fail("decoder without a \"type\"");
  const auto type = j["type"].get<std::string>();
  if (type == "Sequence") {
    std::vector<std::unique_ptr<Decoder>> parts;
    for (const auto& sub : j.at("decoders"))
      if (auto d = make_decoder(sub)) parts.push_back(std::move(d));
    return std::make_unique<SequenceDecoder>(std::move(parts));
  }
  if (type == "Replace") return std::make_unique<ReplaceDecoder>(j.at("pattern"), j.at("content").get<std::string>());
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Strip")
    return std::make_unique<StripDecoder>(char_content(j, "content"), j.value("start", size_t{0}), j.value("stop", size_t{0}));
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "Metaspace") {
    bool strip_first = j.value("add_prefix_space", true);
    if (j.contains("prepend_scheme") && j["prepend_scheme"].is_string())
      strip_first = j["prepend_scheme"].get<std::string>() != "never";
    return std::make_unique<MetaspaceDecoder>(j.value("replacement", std::string(kMetaspace)), strip_first);
  }
  fail("unsupported decoder type \"", type, "\"");
}

std::unique_ptr<Decoder> make_llama_decoder(bool strip_prefix_space) {
  std::vector<std::unique_ptr<Decoder>> parts;
  parts.push_back(std::make_unique<ReplaceDecoder>(json{{"String", kMetaspace}}, " "));
  parts.push_back(std::make_unique<ByteFallbackDecoder>());
  parts.push_back(std::make_unique<FuseDecoder>());
  if (strip_prefix_space) parts.push_back(std::make_unique<StripDecoder>(" ", 1, 0));
  return std::make_unique<SequenceDecoder>(std::move(parts));
}

}  // namespace gptq::tok
