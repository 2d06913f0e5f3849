// The GPTQ packed checkpoint format (AutoGPTQ / GPTQModel "gptq" and "gptq_v2"), defined once.
//
// Per quantized linear layer with K inputs, N outputs, b bits, group size G (G = K when -1):
//   qweight  int32 [K*b/32, N]          codes packed along K, first value in the low bits
//   qzeros   int32 [n_groups, N*b/32]   zero points packed along N the same way
//   scales   fp16  [n_groups, N]
//   g_idx    int32 [K]                  group of each input channel (k/G, or a permuted map with act-order)
//   W[n,k] = scales[g,n] * (q[k,n] - zero[g,n]),  g = g_idx[k]
//
// Bit order. Along the packed axis the values form one little-endian bit stream: value i occupies
// stream bits [i*b, (i+1)*b), stream bit p is bit p%32 of word p/32. For b = 2, 4, 8 no value
// crosses a word. For b = 3 a run of 32 values fills 3 words and values 10 and 21 straddle
// (value 10: bits 30-31 of word 0 + bit 0 of word 1; value 21: bit 31 of word 1 + bits 0-1 of
// word 2), which is exactly what AutoGPTQ's QuantLinear.pack writes for 3 bits.
//
// Size constraints (checked, gptq::Error otherwise): K*b % 32 == 0 (whole qweight rows: K a
// multiple of 16/8/32/4 for b = 2/4/3/8), N*b % 32 == 0 (whole qzeros words). K need not be a
// multiple of G: the last group is partial.
//
// Zero points. v2 ("gptq_v2") stores the zero itself. v1 ("gptq") stores zero-1, masked to b bits:
// an asymmetric zero of 0 is stored as 2^b-1, and every v1 loader (AutoGPTQ, exllama, vLLM) adds
// 1 back without masking, so it reads 2^b. unpack_qzeros(v1) returns what those loaders see
// (stored+1, in [1, 2^b]) so that our dequantize agrees with the ecosystem; pack_qzeros reports
// how many zeros wrapped so the writer can warn or choose v2.
#pragma once

#include <cstdint>
#include <vector>

namespace gptq {
class ThreadPool;
}

namespace gptq::quant {

enum class QuantFormat {
  kGptqV1,  // checkpoint_format "gptq": qzeros hold zero-1
  kGptqV2,  // checkpoint_format "gptq_v2": qzeros hold the zero
};

const char* format_name(QuantFormat f);  // "gptq" / "gptq_v2"

bool is_supported_bits(int bits);  // 2, 3, 4, 8
void check_bits(int bits);         // throws gptq::Error for anything else

// Group size with -1 resolved to K; throws for 0 or < -1.
int64_t resolve_group_size(int64_t K, int group_size);
// ceil(K / G), 1 when G == -1.
int64_t num_groups(int64_t K, int group_size);
// Number of int32 rows of qweight (K*bits/32); throws when K*bits % 32 != 0.
int64_t qweight_rows(int64_t K, int bits);
// Number of int32 columns of qzeros (N*bits/32); throws when N*bits % 32 != 0.
int64_t qzeros_cols(int64_t N, int bits);

// The bit-order primitive: packs `count` values (count*bits % 32 == 0) into count*bits/32 words
// written at words[0], words[stride], ...; unpack_stream is its inverse. Values are not checked.
void pack_stream(const uint8_t* values, int64_t count, int bits, uint32_t* words, int64_t stride);
void unpack_stream(const uint32_t* words, int64_t stride, int64_t count, int bits, uint8_t* values);

// codes: [N, K] row-major (output-major, like W), each in [0, 2^bits-1].
// qweight: [K*bits/32, N], overwritten. pool: the columns packed in parallel on it (same bytes).
void pack_qweight(const uint8_t* codes, int64_t N, int64_t K, int bits, int32_t* qweight, ThreadPool* pool = nullptr);
// Inverse of pack_qweight. codes: [N, K].
void unpack_qweight(const int32_t* qweight, int64_t N, int64_t K, int bits, uint8_t* codes);

// zeros: [n_groups, N], each in [0, 2^bits-1]. qzeros: [n_groups, N*bits/32], overwritten.
// Returns the number of zeros that wrapped (v1 and zero == 0), always 0 for v2.
int64_t pack_qzeros(const int32_t* zeros, int64_t n_groups, int64_t N, int bits, QuantFormat format,
                    int32_t* qzeros);
// zeros: [n_groups, N]; v1 yields stored+1 (see the header comment), v2 the stored value.
void unpack_qzeros(const int32_t* qzeros, int64_t n_groups, int64_t N, int bits, QuantFormat format,
                   int32_t* zeros);

// A non-owning view of one quantized linear layer as it lies in a checkpoint.
struct QuantMatrix {
  const int32_t* qweight = nullptr;  // [K*bits/32, N]
  const int32_t* qzeros = nullptr;   // [n_groups, N*bits/32]
  const uint16_t* scales = nullptr;  // fp16 bits, [n_groups, N]
  const int32_t* g_idx = nullptr;    // [K]; nullptr means k / G (checkpoints without g_idx)
  const uint16_t* bias = nullptr;    // fp16 bits, [N]; nullptr when the layer has none
  int bits = 4;
  int group_size = 128;  // -1: one group spanning K
  int64_t K = 0;         // input features
  int64_t N = 0;         // output features
  QuantFormat format = QuantFormat::kGptqV1;

  int64_t n_groups() const { return num_groups(K, group_size); }
};

// Throws gptq::Error naming the problem: bits, group size, shape constraints, null tensors,
// g_idx entries outside [0, n_groups).
void validate(const QuantMatrix& m);

// The reference dequantization. Returns W: [N, K] fp32 (bias not applied). pool: the rows
// dequantized in parallel on it (the same values).
std::vector<float> dequantize(const QuantMatrix& m, ThreadPool* pool = nullptr);

// An owning, packed layer (what the checkpoint writer stores), built from solver output.
struct PackedQuant {
  std::vector<int32_t> qweight;  // [K*bits/32, N]
  std::vector<int32_t> qzeros;   // [n_groups, N*bits/32]
  std::vector<uint16_t> scales;  // fp16 [n_groups, N]
  std::vector<int32_t> g_idx;    // [K]
  std::vector<uint16_t> bias;    // fp16 [N] or empty
  int bits = 4;
  int group_size = 128;
  int64_t K = 0, N = 0;
  QuantFormat format = QuantFormat::kGptqV1;
  int64_t wrapped_zeros = 0;  // v1 zeros of 0 that loaders will read as 2^bits

  QuantMatrix view() const;
};

// codes: [N, K]; scales: [n_groups, N] fp32 (rounded to fp16 here); zeros: [n_groups, N];
// g_idx: [K] or nullptr for k / G (always written: loaders expect the tensor); bias: [N] fp32 or
// nullptr. Throws gptq::Error for codes, zeros or g_idx out of range and the size constraints.
// pool: qweight packed in parallel on it (the same bytes).
PackedQuant pack_quantized(const uint8_t* codes, const float* scales, const int32_t* zeros,
                           const int32_t* g_idx, const float* bias, int bits, int group_size, int64_t K,
                           int64_t N, QuantFormat format, ThreadPool* pool = nullptr);

}  // namespace gptq::quant
