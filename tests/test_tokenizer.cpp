// Tokenizer tests: golden ids/decoded text from transformers for five tokenizer.json files
// (SentencePiece BPE with and without byte fallback, byte-level BPE in GPT-2 and Llama-3 style),
// streaming detokenization, and the error messages for bad files.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "gptq/error.h"
#include "gptq/tokenizer.h"
#include "shared_paths.h"
#include "temp_dir_test.h"
#include "tokenizer/unicode.h"

namespace {

using gptq::StreamDecoder;
using gptq::Tokenizer;
using json = nlohmann::json;
namespace fs = std::filesystem;

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool valid_utf8(const std::string& s) { return gptq::tok::utf8_valid_prefix(s) == s.size(); }

// Whether s is nothing but U+FFFD replacement characters (or empty).
bool only_replacement_chars(const std::string& s) {
  if (s.size() % 3 != 0) return false;
  for (size_t i = 0; i < s.size(); i += 3)
    if (s.compare(i, 3, "\xEF\xBF\xBD") != 0) return false;
  return true;
}

// How many byte-fallback tokens (<0xHH>) end `ids`, looking through specials and unknown ids.
size_t trailing_byte_tokens(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  size_t m = 0;
  for (size_t i = ids.size(); i-- > 0;) {
    const int32_t id = ids[i];
    if (id < 0 || id >= tok.vocab_size() || tok.is_special(id)) continue;
    const std::string t = tok.token_text(id);
    if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') break;
    ++m;
  }
  return m;
}

// Pushes ids one at a time; every piece must be whole UTF-8 and the pieces must add up to decode().
// Text must come out as it becomes final; what flush() still has is only what could have changed:
// the bytes of an unfinished character (as U+FFFD), or, for byte-fallback tokenizers, the trailing
// run of byte tokens (transformers replaces every byte of a run that is not valid UTF-8 as a
// whole, so even a finished character of the run is not final). Without this a decoder that held
// everything until flush() would pass every check here.
std::string stream_decode(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip_special = true) {
  StreamDecoder sd(tok, skip_special);
  std::string all;
  for (int32_t id : ids) {
    const std::string piece = sd.push(id);
    EXPECT_TRUE(valid_utf8(piece)) << "push(" << id << ") returned half a character";
    all += piece;
  }
  const std::string tail = sd.flush();
  const size_t byte_run = trailing_byte_tokens(tok, ids);
  if (byte_run == 0)
    EXPECT_TRUE(only_replacement_chars(tail)) << "flush() returned text that push() held back: '" << tail << "'";
  else
    EXPECT_LE(tail.size(), 3 * byte_run) << "flush() returned more than the trailing " << byte_run
                                         << " byte tokens: '" << tail << "'";
  all += tail;
  return all;
}

// Checks every golden case of one model: ids, decoded text and streamed text.
void check_golden(const std::string& model) {
  const std::string golden_path = shared_path("golden/" + model + "/tokenizer.json");
  if (golden_path.empty() || !fs::exists(golden_path))
    GTEST_SKIP() << "../shared/golden/" << model << "/tokenizer.json not found: tokenizer golden tests skipped";
  const Tokenizer tok = Tokenizer::from_file(shared_path("models/" + model + "/tokenizer.json"));
  const json golden = json::parse(read_file(golden_path));
  const bool add_special = golden.value("add_special_tokens", true);
  ASSERT_FALSE(golden.at("cases").empty());
  int ids_ok = 0, decoded_ok = 0, stream_ok = 0;
  for (const auto& c : golden.at("cases")) {
    const auto text = c.at("text").get<std::string>();
    const auto expected = c.at("ids").get<std::vector<int32_t>>();
    const auto decoded = c.at("decoded").get<std::string>();
    SCOPED_TRACE("text " + c.at("text").dump());
    const auto ids = tok.encode(text, add_special);
    EXPECT_EQ(ids, expected);
    ids_ok += ids == expected;
    const auto text_back = tok.decode(expected, true);
    EXPECT_EQ(text_back, decoded);
    decoded_ok += text_back == decoded;
    const auto streamed = stream_decode(tok, expected);
    EXPECT_EQ(streamed, decoded);
    stream_ok += streamed == decoded;
  }
  const size_t n = golden["cases"].size();
  std::cout << "[ golden   ] " << model << ": ids " << ids_ok << "/" << n << ", decoded " << decoded_ok << "/" << n
            << ", streamed " << stream_ok << "/" << n << "\n";
}

TEST(TokenizerGolden, Babyllama105) { check_golden("babyllama-105"); }
TEST(TokenizerGolden, Babyllama361) { check_golden("babyllama-361"); }
TEST(TokenizerGolden, LlamaGutenberg22m) { check_golden("llama-gutenberg-22m"); }
TEST(TokenizerGolden, ByteBpeGpt2Style) { check_golden("bytebpe-gpt2-style"); }
TEST(TokenizerGolden, ByteBpeLlama3Style) { check_golden("bytebpe-llama3-style"); }

// Loads a model's tokenizer or skips the test when the shared folder is absent.
#define LOAD_OR_SKIP(var, model)                                                             \
  const std::string var##_path = shared_path("models/" model "/tokenizer.json");             \
  if (var##_path.empty() || !fs::exists(var##_path))                                         \
    GTEST_SKIP() << "../shared/models/" model "/tokenizer.json not found: test skipped";     \
  const Tokenizer var = Tokenizer::from_file(var##_path)

TEST(TokenizerProperties, SpecialTokensAndKinds) {
  LOAD_OR_SKIP(llama, "llama-gutenberg-22m");
  EXPECT_EQ(llama.kind(), "sentencepiece-bpe");
  EXPECT_EQ(llama.vocab_size(), 32000);
  EXPECT_EQ(llama.bos_id(), 1);
  EXPECT_EQ(llama.eos_id(), 2);
  EXPECT_TRUE(llama.is_special(1));
  EXPECT_FALSE(llama.is_special(15043));
  EXPECT_EQ(llama.token_text(13), "<0x0A>");
  EXPECT_EQ(llama.token_id("\xE2\x96\x81Hello"), 15043);
  EXPECT_EQ(llama.token_id("no such token"), -1);
  EXPECT_EQ(llama.token_text(-5), "");
  EXPECT_EQ(llama.encode("Hello world", false), (std::vector<int32_t>{15043, 3186}));
  EXPECT_EQ(llama.decode({1, 15043, 3186, 2}, false), "<s> Hello world</s>");

  LOAD_OR_SKIP(gpt2, "bytebpe-gpt2-style");
  EXPECT_EQ(gpt2.kind(), "byte-level-bpe");
  EXPECT_EQ(gpt2.bos_id(), -1);  // its post-processor adds nothing
  EXPECT_EQ(gpt2.eos_id(), gpt2.token_id("<|endoftext|>"));

  LOAD_OR_SKIP(llama3, "bytebpe-llama3-style");
  EXPECT_EQ(llama3.bos_id(), llama3.token_id("<|begin_of_text|>"));
  EXPECT_EQ(llama3.eos_id(), llama3.token_id("<|end_of_text|>"));
}

// Characters that exist only as byte-fallback pieces must come out of the stream whole.
TEST(TokenizerStream, MultiByteCharactersSplitAcrossByteFallbackTokens) {
  LOAD_OR_SKIP(tok, "llama-gutenberg-22m");
  const std::string text = "emoji \xF0\x9F\x9A\x80\xF0\x9F\x94\xA5 done \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E!";  // 🚀🔥, 日本語
  const auto ids = tok.encode(text, true);
  EXPECT_EQ(tok.decode(ids), text);

  StreamDecoder sd(tok);
  std::vector<std::string> pieces;
  for (int32_t id : ids) pieces.push_back(sd.push(id));
  pieces.push_back(sd.flush());
  std::string all;
  for (const auto& p : pieces) {
    EXPECT_TRUE(valid_utf8(p)) << "a pushed piece splits a character";
    EXPECT_EQ(p.find("\xEF\xBF\xBD"), std::string::npos) << "a partial byte sequence leaked as U+FFFD";
    all += p;
  }
  EXPECT_EQ(all, text);
  // The four byte tokens of the rocket yield nothing until the character can no longer change.
  const size_t rocket = std::find(ids.begin(), ids.end(), tok.token_id("<0xF0>")) - ids.begin();
  ASSERT_LT(rocket + 3, ids.size());
  for (size_t k = rocket; k < rocket + 4; ++k) EXPECT_EQ(pieces[k], "");

  // With byte-level BPE one token can end in the middle of a character.
  LOAD_OR_SKIP(gpt2, "bytebpe-gpt2-style");
  const std::string cjk = "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E\xE3\x81\xAE \xF0\x9F\x99\x82 ok";
  EXPECT_EQ(stream_decode(gpt2, gpt2.encode(cjk, true)), cjk);
}

TEST(TokenizerStream, InvalidBytesBecomeReplacementCharacters) {
  LOAD_OR_SKIP(tok, "llama-gutenberg-22m");
  const int32_t e6 = tok.token_id("<0xE6>"), hello = tok.token_id("\xE2\x96\x81Hello");
  ASSERT_GE(e6, 0);
  // HF turns every byte of an invalid run into U+FFFD.
  EXPECT_EQ(tok.decode({e6, e6, hello}), "\xEF\xBF\xBD\xEF\xBF\xBD Hello");
  EXPECT_EQ(stream_decode(tok, {e6, e6, hello}), tok.decode({e6, e6, hello}));
  EXPECT_EQ(stream_decode(tok, {hello, e6}), "Hello\xEF\xBF\xBD");
}

// Streaming must add up to decode() for any id sequence: random ids hit invalid byte runs, special
// tokens, byte-level tokens ending mid-character and unknown ids.
TEST(TokenizerStream, RandomIdsAddUpToDecode) {
  for (const char* model : {"babyllama-105", "babyllama-361", "llama-gutenberg-22m", "bytebpe-gpt2-style",
                            "bytebpe-llama3-style"}) {
    const std::string path = shared_path(std::string("models/") + model + "/tokenizer.json");
    if (path.empty() || !fs::exists(path)) GTEST_SKIP() << path << " not found: test skipped";
    const Tokenizer tok = Tokenizer::from_file(path);
    const int32_t byte0 = std::max(0, tok.token_id("<0x00>"));
    uint64_t state = 12345;
    auto next = [&](uint32_t n) {
      state = state * 6364136223846793005ULL + 1442695040888963407ULL;
      return static_cast<int32_t>((state >> 33) % n);
    };
    for (int round = 0; round < 40; ++round) {
      std::vector<int32_t> ids;
      for (int k = 0; k < 60; ++k) {
        const int pick = next(10);
        // Mostly ordinary tokens, often byte tokens (runs of them), sometimes specials and bad ids.
        ids.push_back(pick < 5 ? next(tok.vocab_size()) : pick < 8 ? byte0 + next(256) : pick < 9 ? next(3) : tok.vocab_size() + 7);
      }
      for (bool skip : {true, false}) {
        SCOPED_TRACE(std::string(model) + " round " + std::to_string(round) + (skip ? " skip" : " keep"));
        EXPECT_EQ(stream_decode(tok, ids, skip), tok.decode(ids, skip));
      }
    }
  }
}

// Long runs of U+FFFD (invalid input bytes, repaired on encode) once made every push() re-decode
// the whole run: 16 KiB of 0xFF took 36 s to stream through a byte-level tokenizer. At 256 KiB
// that would run for hours (the test's timeout); streaming is linear now.
TEST(TokenizerStream, LongReplacementRunsStreamInLinearTime) {
  for (const char* model : {"llama-gutenberg-22m", "bytebpe-gpt2-style", "bytebpe-llama3-style"}) {
    const std::string path = shared_path(std::string("models/") + model + "/tokenizer.json");
    if (path.empty() || !fs::exists(path)) GTEST_SKIP() << path << " not found: test skipped";
    const Tokenizer tok = Tokenizer::from_file(path);
    for (const char byte : {'\xFF', '\xE2'}) {
      SCOPED_TRACE(std::string(model) + " byte " + std::to_string(static_cast<unsigned char>(byte)));
      const auto ids = tok.encode(std::string(256 * 1024, byte), false);
      ASSERT_GT(ids.size(), 100000u);  // a long run of ids, each U+FFFD or part of one
      EXPECT_EQ(stream_decode(tok, ids), tok.decode(ids));
    }
  }
}

TEST(TokenizerStream, LongTextAddsUpToDecode) {
  const std::string wiki = shared_path("data/wikitext-2-raw/wiki.test.raw");
  if (wiki.empty() || !fs::exists(wiki)) GTEST_SKIP() << "../shared/data/wikitext-2-raw not found: test skipped";
  const std::string text = read_file(wiki).substr(0, 20000) + " \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x99\x82\n";
  for (const char* model : {"babyllama-105", "babyllama-361", "llama-gutenberg-22m", "bytebpe-gpt2-style",
                            "bytebpe-llama3-style"}) {
    SCOPED_TRACE(model);
    const Tokenizer tok = Tokenizer::from_file(shared_path(std::string("models/") + model + "/tokenizer.json"));
    const auto ids = tok.encode(text, true);
    EXPECT_EQ(stream_decode(tok, ids), tok.decode(ids));
  }
}

TEST(TokenizerEncode, InvalidUtf8InputIsRepaired) {
  LOAD_OR_SKIP(tok, "llama-gutenberg-22m");
  EXPECT_EQ(tok.encode("a\xFF" "b", false), tok.encode("a\xEF\xBF\xBD" "b", false));
}

// ---- bad input -------------------------------------------------------------------------------

class TokenizerErrors : public gptq_test::TempDirTest {
 protected:
  // The message of the gptq::Error that loading `path` throws ("" when it does not throw).
  static std::string load_error(const std::string& path) {
    try {
      (void)Tokenizer::from_file(path);
    } catch (const gptq::Error& e) {
      return e.what();
    }
    return "";
  }
  fs::path dir_;
};

TEST_F(TokenizerErrors, MissingFile) {
  const std::string path = (dir_ / "nope" / "tokenizer.json").string();
  const std::string msg = load_error(path);
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("not found"), std::string::npos) << msg;
}

TEST_F(TokenizerErrors, MalformedJson) {
  const std::string path = write("bad/tokenizer.json", "{\"model\": {\"type\": \"BPE\", ");
  const std::string msg = load_error(path);
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("malformed JSON"), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line: " << msg;
}

TEST_F(TokenizerErrors, UnsupportedModelType) {
  for (const char* type : {"WordPiece", "Unigram"}) {
    const std::string path =
        write(std::string(type) + "/tokenizer.json",
              std::string(R"({"model": {"type": ")") + type + R"(", "vocab": {"a": 0}}, "added_tokens": []})");
    const std::string msg = load_error(path);
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find(type), std::string::npos) << msg;
    EXPECT_NE(msg.find("unsupported model type"), std::string::npos) << msg;
  }
}

TEST_F(TokenizerErrors, MissingVocab) {
  const std::string path = write("novocab/tokenizer.json", R"({"model": {"type": "BPE", "merges": []}})");
  const std::string msg = load_error(path);
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("vocab"), std::string::npos) << msg;
}

TEST_F(TokenizerErrors, UnsupportedStageAndBadMerge) {
  std::string path = write("pre/tokenizer.json",
                           R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
                               "pre_tokenizer": {"type": "BertPreTokenizer"}})");
  std::string msg = load_error(path);
  EXPECT_NE(msg.find("BertPreTokenizer"), std::string::npos) << msg;
  path = write("merge/tokenizer.json", R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a b"]}})");
  msg = load_error(path);
  EXPECT_NE(msg.find("merge #0"), std::string::npos) << msg;
}

TEST_F(TokenizerErrors, ModelDirWithoutTokenizer) {
  fs::create_directories(dir_ / "empty_model");
  try {
    (void)Tokenizer::from_model_dir((dir_ / "empty_model").string());
    FAIL() << "expected gptq::Error";
  } catch (const gptq::Error& e) {
    EXPECT_EQ(std::string(e.what()), "no tokenizer.json in " + (dir_ / "empty_model").string());
  }
}

// A minimal tokenizer written here exercises merges, unk fusing and the plain (no decoder) join.
TEST_F(TokenizerErrors, TinyInlineTokenizerWorks) {
  const std::string path = write("tiny/tokenizer.json", R"({
    "added_tokens": [{"id": 5, "content": "<eos>", "special": true, "normalized": false}],
    "model": {"type": "BPE", "unk_token": "<unk>", "fuse_unk": true,
              "vocab": {"<unk>": 0, "a": 1, "b": 2, "ab": 3, "abb": 4},
              "merges": [["a", "b"], ["ab", "b"]]}})");
  const Tokenizer tok = Tokenizer::from_file(path);
  EXPECT_EQ(tok.encode("abbxyab<eos>a", true), (std::vector<int32_t>{4, 0, 3, 5, 1}));
  EXPECT_EQ(tok.decode({4, 0, 3, 5}, true), "abb <unk> ab");
  EXPECT_EQ(tok.vocab_size(), 6);
  EXPECT_EQ(tok.eos_id(), -1);
}

}  // namespace
