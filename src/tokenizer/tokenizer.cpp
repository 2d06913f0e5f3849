// Encode/decode orchestration, as HF `tokenizers` runs it: added tokens are cut out of the raw
// text first, each remaining span is normalized, pre-tokenized and run through BPE, and the
// post-processor puts BOS/EOS around the result.
#include "gptq/tokenizer.h"

#include <algorithm>

#include "gptq/error.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/unicode.h"

namespace gptq {

namespace tok {

namespace {

// Approximates Rust's `char::is_alphanumeric() || c == '_'` used by single_word matching.
bool is_word_char(uint32_t cp) {
  if (cp < 0x80) return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || cp == '_';
  return !is_unicode_whitespace(cp);
}

uint32_t last_char(std::string_view s) {
  size_t start = s.size() - 1;
  while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
  return utf8_next(s, start);
}

}  // namespace

void AddedMatcher::add(const AddedToken& t, int index) {
  auto& bucket = buckets_[static_cast<unsigned char>(t.content[0])];
  bucket.push_back(index);
  ++count_;
}

void AddedMatcher::split(std::string_view text, const std::vector<AddedToken>& tokens, std::vector<Span>& out) const {
  size_t seg_start = 0;
  size_t i = 0;
  while (i < text.size()) {
    const auto& bucket = buckets_[static_cast<unsigned char>(text[i])];
    int best = -1;
    for (int idx : bucket) {
      const auto& t = tokens[idx];
      if (t.content.size() > text.size() - i || text.compare(i, t.content.size(), t.content) != 0) continue;
      if (best >= 0 && tokens[best].content.size() >= t.content.size()) continue;
      if (t.single_word) {
        const size_t stop = i + t.content.size();
        if (i > 0 && is_word_char(last_char(text.substr(0, i)))) continue;
        if (stop < text.size()) {
          size_t k = stop;
          if (is_word_char(utf8_next(text, k))) continue;
        }
      }
      best = idx;
    }
    if (best < 0) {
      ++i;
      continue;
    }
    const auto& t = tokens[best];
    size_t start = i, stop = i + t.content.size();
    if (t.lstrip) {
      while (start > seg_start) {
        size_t p = start - 1;
        while (p > seg_start && (static_cast<unsigned char>(text[p]) & 0xC0) == 0x80) --p;
        size_t q = p;
        if (!is_unicode_whitespace(utf8_next(text, q))) break;
        start = p;
      }
    }
    if (t.rstrip) {
      while (stop < text.size()) {
        size_t q = stop;
        if (!is_unicode_whitespace(utf8_next(text, q))) break;
        stop = q;
      }
    }
    if (start > seg_start) out.push_back({seg_start, start, -1});
    out.push_back({start, stop, best});
    seg_start = i = stop;
  }
  if (seg_start < text.size()) out.push_back({seg_start, text.size(), -1});
}

}  // namespace tok

bool Tokenizer::Impl::is_byte_token(int32_t id) const {
  if (added_token(id) != nullptr) return false;
  const std::string* t = model.id_to_token(id);
  return t != nullptr && t->size() == 6 && t->compare(0, 3, "<0x") == 0 && (*t)[5] == '>';
}

// Normalizes, pre-tokenizes and runs BPE over one span of text that holds no raw added token.
void Tokenizer::Impl::encode_text(std::string_view text, size_t offset, std::vector<int32_t>& out) const {
  std::string normalized(text);
  if (normalizer) normalizer->normalize(normalized);

  std::vector<tok::Piece> pieces;
  std::vector<tok::Span> spans;
  if (!normalized_matcher.empty()) {
    normalized_matcher.split(normalized, added, spans);
  } else {
    spans.push_back({0, normalized.size(), -1});
  }
  auto flush_pieces = [&] {
    if (pieces.empty()) return;
    if (pre_tokenizer) pre_tokenizer->pre_tokenize(pieces);
    // Byte-level text splits into many short, repeating words: memoize them for this call.
    if (pieces.size() > 64) {
      std::unordered_map<std::string_view, std::pair<uint32_t, uint32_t>> cache;  // word -> [begin, end) in out
      for (const auto& p : pieces) {
        if (p.text.size() <= 64) {
          if (auto it = cache.find(p.text); it != cache.end()) {
            const auto [b, e] = it->second;
            for (uint32_t k = b; k < e; ++k) {
              const int32_t id = out[k];
              out.push_back(id);
            }
            continue;
          }
          const auto b = static_cast<uint32_t>(out.size());
          model.tokenize(p.text, out);
          cache.emplace(p.text, std::make_pair(b, static_cast<uint32_t>(out.size())));
        } else {
          model.tokenize(p.text, out);
        }
      }
    } else {
      for (const auto& p : pieces) model.tokenize(p.text, out);
    }
    pieces.clear();
  };
  for (const auto& s : spans) {
    if (s.added >= 0) {
      flush_pieces();
      out.push_back(added[s.added].id);
    } else {
      pieces.push_back({normalized.substr(s.start, s.end - s.start), offset + s.start});
    }
  }
  flush_pieces();
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special) const try {
  const Impl& im = *impl_;
  // Python strings are always valid Unicode; repair invalid UTF-8 the way bytes.decode("replace") would.
  std::string repaired;
  if (tok::utf8_valid_prefix(text) != text.size()) {
    repaired = tok::utf8_lossy(text);
    text = repaired;
  }

  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + im.prefix_ids.size() + im.suffix_ids.size() + 4);
  if (add_special) ids.insert(ids.end(), im.prefix_ids.begin(), im.prefix_ids.end());
  std::vector<tok::Span> spans;
  im.raw_matcher.split(text, im.added, spans);
  for (const auto& s : spans) {
    if (s.added >= 0) {
      ids.push_back(im.added[s.added].id);
    } else {
      im.encode_text(text.substr(s.start, s.end - s.start), s.start, ids);
    }
  }
  if (add_special) ids.insert(ids.end(), im.suffix_ids.begin(), im.suffix_ids.end());
  return ids;
} catch (const Error& e) {
  // A regex that gives up names the tokenizer file it came from.
  fail(impl_->path, ": ", e.what());
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  const Impl& im = *impl_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    if (const auto* t = im.added_token(id)) {
      if (!(skip_special && t->special)) tokens.push_back(t->content);
    } else if (const std::string* s = im.model.id_to_token(id)) {
      tokens.push_back(*s);
    }
    // Unknown ids are dropped, as HF does.
  }
  if (im.decoder) return im.decoder->decode(std::move(tokens));
  std::string out;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (i > 0) out += ' ';
    out += tokens[i];
  }
  return out;
}

int32_t Tokenizer::vocab_size() const { return impl_->vocab_size; }

std::string Tokenizer::token_text(int32_t id) const {
  if (const auto* t = impl_->added_token(id)) return t->content;
  const std::string* s = impl_->model.id_to_token(id);
  return s != nullptr ? *s : std::string();
}

int32_t Tokenizer::token_id(std::string_view token) const {
  if (auto it = impl_->added_by_content.find(token); it != impl_->added_by_content.end()) return it->second;
  return impl_->model.token_to_id(token);
}

bool Tokenizer::is_special(int32_t id) const { return impl_->is_special(id); }
int32_t Tokenizer::bos_id() const { return impl_->bos; }
int32_t Tokenizer::eos_id() const { return impl_->eos; }
std::string Tokenizer::kind() const { return impl_->byte_level ? "byte-level-bpe" : "sentencepiece-bpe"; }

// ---- streaming --------------------------------------------------------------------------------
//
// Byte-level tokenizers (text = utf8_lossy of the tokens' bytes) stream in bytes: everything but an
// incomplete trailing character is final, since a byte that can start a sequence always does.
//
// Other decoders: push() re-decodes only a short tail: ids_ starts at a "guard" token whose text is
// already out, and emitted_ counts the bytes of decode(ids_) returned so far. The guard absorbs what
// decoders do to the first token (Strip's leading space, Metaspace's first "▁"), so the text after
// it decodes exactly as in decode(all ids). A token can be a guard when nothing before it is held
// back and it cannot join a later token: not a <0xNN> byte of a ByteFallback run, not a skipped
// special token, not a token that decodes to nothing on its own.

StreamDecoder::StreamDecoder(const Tokenizer& tok, bool skip_special)
    : tok_(tok),
      skip_special_(skip_special),
      bytes_mode_(tok.impl_->decoder != nullptr && tok.impl_->decoder->lossy_bytes()),
      run_start_(std::string::npos) {}

std::string StreamDecoder::push(int32_t id) {
  const Tokenizer::Impl& im = *tok_.impl_;
  if (bytes_mode_) {
    // The token strings decode() would hand to the decoder: unknown ids and skipped specials add nothing.
    if (const auto* t = im.added_token(id)) {
      if (!(skip_special_ && t->special)) im.decoder->append_bytes(t->content, pending_);
    } else if (const std::string* s = im.model.id_to_token(id)) {
      im.decoder->append_bytes(*s, pending_);
    }
    const size_t final_bytes = pending_.size() - tok::utf8_incomplete_tail(pending_);
    std::string out = tok::utf8_lossy(std::string_view(pending_).substr(0, final_bytes));
    pending_.erase(0, final_bytes);
    return out;
  }

  ids_.push_back(id);
  // A trailing run of <0xNN> tokens is not final: HF turns the whole run into U+FFFDs if any later
  // byte makes it invalid UTF-8, so even a complete character in it may still change. While the
  // run grows, nothing changes. Ids that decode to nothing (skipped specials, unknown ids) do not
  // end a run.
  auto invisible = [&](int32_t t) {
    return (skip_special_ && im.is_special(t)) || (im.added_token(t) == nullptr && im.model.id_to_token(t) == nullptr);
  };
  const bool byte = im.decoder_byte_fallback && im.is_byte_token(id);
  if (byte && run_start_ == std::string::npos) run_start_ = ids_.size() - 1;
  if (run_start_ != std::string::npos) {
    if (byte || invisible(id)) return {};
    run_start_ = std::string::npos;
  }
  const std::string text = tok_.decode(ids_, skip_special_);
  // A decoder chain with ByteLevel in it turns an incomplete trailing character into U+FFFD: hold
  // those back too.
  size_t stable = text.size();
  if (im.decoder != nullptr && im.decoder->byte_level()) {
    const size_t r = tok::kReplacementChar.size();
    while (stable >= r && std::string_view(text).substr(stable - r, r) == tok::kReplacementChar) stable -= r;
  }
  std::string out;
  if (stable > emitted_) {
    out = text.substr(emitted_, stable - emitted_);
    emitted_ = stable;
  }

  if (ids_.size() > 1 && stable == text.size() && !invisible(id) && !byte) {
    // The guard's text must also survive decoding alone: a Strip (after Fuse) removing more spaces
    // than the guard holds, at its start or end, would otherwise eat into the text around it.
    if (const std::string alone = tok_.decode({id}, skip_special_); !alone.empty()) {
      ids_.assign(1, id);
      emitted_ = alone.size();
    }
  }
  return out;
}

std::string StreamDecoder::flush() {
  if (bytes_mode_) {
    std::string out = tok::utf8_lossy(pending_);
    pending_.clear();
    return out;
  }
  const std::string text = tok_.decode(ids_, skip_special_);
  std::string out = emitted_ < text.size() ? text.substr(emitted_) : std::string();
  emitted_ = std::max(emitted_, text.size());
  return out;
}

}  // namespace gptq
