// Tokenization and (streaming) decoding of arbitrary bytes with the real tokenizers of the shared
// folder (GPTQ_SHARED, default /work/shared): llama-gutenberg-22m (Llama-2 SentencePiece BPE with
// byte fallback), bytebpe-gpt2-style and bytebpe-llama3-style (byte-level BPE, PCRE2 regexes).
// Input: byte 0 picks the tokenizer, byte 1 the mode (bit 0: text or ids, bit 1: add_special);
// the rest is the text to encode, or ids (3 bytes each, spread over [-8, vocab + 8)) to decode.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "fuzz_tokenizer_invariants.h"
#include "gptq/error.h"

namespace {

std::vector<std::unique_ptr<gptq::Tokenizer>> tokenizers;

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  for (const char* m : {"llama-gutenberg-22m", "bytebpe-gpt2-style", "bytebpe-llama3-style"}) {
    const std::string path = gptq_fuzz::shared_dir() + "/models/" + m + "/tokenizer.json";
    try {
      tokenizers.push_back(std::make_unique<gptq::Tokenizer>(gptq::Tokenizer::from_file(path)));
    } catch (const gptq::Error& e) {
      std::fprintf(stderr, "fuzz_tokenize: %s (set GPTQ_SHARED to the shared folder)\n", e.what());
      std::abort();
    }
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const gptq::Tokenizer& tok = *tokenizers[data[0] % tokenizers.size()];
  const bool ids_mode = data[1] & 1, add_special = data[1] & 2;
  const std::string_view payload(reinterpret_cast<const char*>(data) + 2, size - 2);
  try {
    std::vector<int32_t> ids;
    if (ids_mode) {
      const uint32_t span = uint32_t(tok.vocab_size()) + 16;
      for (size_t i = 0; i + 3 <= payload.size(); i += 3) {
        const auto* p = reinterpret_cast<const uint8_t*>(payload.data() + i);
        const uint32_t v = p[0] | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16;
        ids.push_back(int32_t(v % span) - 8);
      }
    } else {
      ids = tok.encode(payload, add_special);
      gptq_fuzz::check_ids(tok, ids);
    }
    gptq_fuzz::check_decode(tok, ids);
  } catch (const gptq::Error&) {
  }
  return 0;
}
