// SHA-256 (OpenSSL's), as lowercase hex: of bytes, and of a file read through a memory map.
#pragma once

#include <string>
#include <string_view>

namespace gptq {

std::string sha256_of(std::string_view bytes);
// Throws gptq::Error naming the file when it cannot be read.
std::string sha256_of_file(const std::string& path);

}  // namespace gptq
