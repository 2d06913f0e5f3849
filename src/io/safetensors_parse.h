// The safetensors parser behind SafetensorsFile, over bytes already in memory (the fuzzer feeds
// it buffers; SafetensorsFile feeds it its memory map).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

#include "gptq/tensor.h"

namespace gptq {

// Validates the whole file image [data, data + size) and fills `tensors` (views into `data`,
// `file` = path) and `metadata`. Throws gptq::Error naming `path`, as SafetensorsFile does.
void parse_safetensors(const std::string& path, const uint8_t* data, size_t size,
                       std::map<std::string, TensorView>& tensors, std::map<std::string, std::string>& metadata);

}  // namespace gptq
