// Small file helpers with error messages that name the file.
#pragma once

#include <string>
#include <string_view>

namespace gptq {

std::string read_text_file(const std::string& path);  // throws gptq::Error
bool file_exists(const std::string& path);
bool dir_exists(const std::string& path);
std::string path_join(const std::string& a, const std::string& b);

// Writes `bytes` to path.tmp.<pid>, fsyncs and renames into place: readers never see half a file.
void write_file_atomic(const std::string& path, std::string_view bytes);

}  // namespace gptq
