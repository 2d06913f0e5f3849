// What the fuzzers (fuzz/, scripts/fuzz.sh) found, one case each, with the input inline. The saved
// inputs themselves are in fuzz/regressions/TARGET/ and replayed by scripts/fuzz.sh.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gptq/error.h"
#include "gptq/safetensors.h"
#include "gptq/tokenizer.h"
#include "temp_dir_test.h"

namespace {

namespace fs = std::filesystem;

class FuzzRegressions : public gptq_test::TempDirTest {};

std::string streamed(const gptq::Tokenizer& tok, const std::vector<int32_t>& ids) {
  gptq::StreamDecoder sd(tok);
  std::string out;
  for (int32_t id : ids) out += sd.push(id);
  return out + sd.flush();
}

// A Fuse + Strip decoder that removes more than one leading space (fuzz_tokenizer_load, 36 of the
// 39 saved inputs of the long run): the streaming guard was a lone "▁" token, which Strip removes
// entirely when decoded alone, so the next token's space was stripped too ("a a" for "a  a").
TEST_F(FuzzRegressions, StreamDecodeWithStripOfTwoLeadingSpaces) {
  const auto tok = gptq::Tokenizer::from_file(write("tokenizer.json", R"({
    "model": {"type": "BPE", "vocab": {"<unk>": 0, "\u2581": 1, "a": 2, "\u2581a": 3}, "merges": []},
    "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
      {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 2, "stop": 0}]}})"));
  const std::vector<int32_t> ids = {2, 1, 3, 2};
  EXPECT_EQ(tok.decode(ids), "a  aa");
  EXPECT_EQ(streamed(tok, ids), tok.decode(ids));
}

// The same with a Strip of one leading and one trailing space: the guard's own space, held back
// while it was trailing, was then stripped as leading and never emitted ("aa" for "a a").
TEST_F(FuzzRegressions, StreamDecodeWithStripOfLeadingAndTrailingSpace) {
  const auto tok = gptq::Tokenizer::from_file(write("tokenizer.json", R"({
    "model": {"type": "BPE", "vocab": {"<unk>": 0, "\u2581": 1, "a": 2, "\u2581a": 3}, "merges": []},
    "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
      {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 1}]}})"));
  for (const std::vector<int32_t>& ids : {std::vector<int32_t>{2, 1, 2}, {2, 1, 1, 3, 1}}) {
    EXPECT_EQ(streamed(tok, ids), tok.decode(ids));
  }
  EXPECT_EQ(tok.decode({2, 1, 2}), "a a");
}

// TemplateProcessing ids that are no token (fuzz_tokenizer_load): encode() returned -737418241;
// 1e308 was converted to int (undefined behaviour). Both are refused at load now.
TEST_F(FuzzRegressions, PostProcessorIdsOutsideTheVocabularyAreRefused) {
  for (const char* id : {"-737418241", "1e308", "2"}) {
    SCOPED_TRACE(id);
    const std::string path = write("tokenizer.json", std::string(R"({
      "model": {"type": "BPE", "vocab": {"<s>": 0, "a": 1}, "merges": []},
      "post_processor": {"type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [)") + id + R"(], "tokens": ["<s>"]}}}})");
    EXPECT_THROW((void)gptq::Tokenizer::from_file(path), gptq::Error);
  }
}

// A tensor that the file does not align to its element size (fuzz_gptq_checkpoint: g_idx and
// scales at odd offsets were read through int32/fp16 pointers, undefined behaviour that UBSan
// reports): it is read from an aligned copy, with the same values.
TEST_F(FuzzRegressions, MisalignedTensorsAreReadFromAlignedCopies) {
  const uint8_t pad[1] = {7};
  const int32_t g_idx[3] = {0, -5, 123456789};
  const uint16_t scales[2] = {0x3C00, 0xC000};
  // Sorted by name: "a" (1 byte) puts "b" at offset 1 and "c" at 13 of the data section.
  const std::string path = (dir_ / "m.safetensors").string();
  gptq::write_safetensors(path, {{"a", gptq::DType::kU8, {1}, pad, 1},
                                 {"b", gptq::DType::kI32, {3}, g_idx, sizeof(g_idx)},
                                 {"c", gptq::DType::kF16, {2}, scales, sizeof(scales)}});
  const gptq::SafetensorsFile f(path);
  const auto& b = f.tensors().at("b");
  const auto& c = f.tensors().at("c");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data) % 4, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(c.data) % 2, 0u);
  EXPECT_EQ(std::memcmp(b.data, g_idx, sizeof(g_idx)), 0);
  EXPECT_EQ(std::memcmp(c.data, scales, sizeof(scales)), 0);
  EXPECT_EQ(*static_cast<const uint8_t*>(f.tensors().at("a").data), 7);
}

}  // namespace
