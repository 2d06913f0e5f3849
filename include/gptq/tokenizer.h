// Tokenizer loaded from a Hugging Face `tokenizer.json`, behaving as transformers does:
//  - SentencePiece-style BPE with byte fallback (Llama-2, Mistral, TinyLlama): Replace(" " -> "▁") and
//    Prepend("▁") normalizer (or Metaspace pre-tokenizer), merges by rank, <0xNN> byte fallback;
//  - byte-level BPE (GPT-2, Llama-3, Qwen2): Unicode regex pre-tokenizer (PCRE2), ByteLevel byte->char map.
// Added/special tokens are recognised in the text; the post-processor's BOS is added when asked.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace gptq {

class Tokenizer {
 public:
  // Throws gptq::Error naming the file when it is missing, malformed or of an unsupported kind.
  // Like transformers' AutoTokenizer, also reads tokenizer_config.json from the same folder when
  // present: with tokenizer_class LlamaTokenizer, transformers (v5) rebuilds a SentencePiece-style
  // pipeline (Metaspace, byte fallback, no <unk>) whatever tokenizer.json says, and so do we.
  static Tokenizer from_file(const std::string& tokenizer_json_path);
  // Looks for tokenizer.json in a model folder.
  static Tokenizer from_model_dir(const std::string& dir);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // add_special: apply the post-processor (e.g. prepend BOS), as transformers' add_special_tokens=True.
  std::vector<int32_t> encode(std::string_view text, bool add_special = true) const;
  // skip_special: drop special tokens (BOS/EOS/...), as transformers' skip_special_tokens=True.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special = true) const;

  int32_t vocab_size() const;            // largest id + 1, added tokens included
  std::string token_text(int32_t id) const;  // the raw vocabulary string of a token ("▁the", "<0x0A>", "Ġthe")
  int32_t token_id(std::string_view token) const;  // -1 when absent
  bool is_special(int32_t id) const;
  int32_t bos_id() const;  // -1 when the tokenizer has none
  int32_t eos_id() const;  // -1 when the tokenizer has none
  std::string kind() const;  // "sentencepiece-bpe" or "byte-level-bpe"

  struct Impl;

 private:
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  friend class StreamDecoder;
};

// Incremental detokenizer for streaming: push ids one by one and get back the text that is final,
// never half a UTF-8 character (bytes of an incomplete character are held back until complete).
// For SentencePiece tokenizers the leading space of the first piece is stripped as decode() does.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok, bool skip_special = true);
  std::string push(int32_t id);
  std::string flush();  // whatever is left (invalid trailing bytes become U+FFFD)

 private:
  const Tokenizer& tok_;
  bool skip_special_;
  bool bytes_mode_;           // the decoder is utf8_lossy of token bytes (ByteLevel): pending_ is used
  std::string pending_;       // bytes mode: an incomplete trailing character
  std::vector<int32_t> ids_;  // otherwise: the tail still being decoded, from a token whose text is out
  size_t emitted_ = 0;        // bytes of decode(ids_) already returned
  size_t run_start_;          // where a trailing run of <0xNN> tokens starts in ids_ (npos: none)
};

}  // namespace gptq
