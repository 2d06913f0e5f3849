// Small file helpers with error messages that name the file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace gptq {

// The whole of a regular file (a FIFO, device or directory is refused without blocking), at most
// max_bytes (default 1 GiB) long. Throws gptq::Error naming the file.
std::string read_text_file(const std::string& path, size_t max_bytes = size_t(1) << 30);
// open(2) of a regular file for reading, without blocking on FIFOs; throws gptq::Error. The
// file's size goes to *size when given.
int open_regular_file(const std::string& path, uint64_t* size = nullptr);
// Whether something other than a folder is at path (read_text_file then refuses what is not a
// regular file, so a FIFO named config.json is an error, not a missing file).
bool file_exists(const std::string& path);
bool dir_exists(const std::string& path);
std::string path_join(const std::string& a, const std::string& b);

// Writes `bytes` to path.tmp.<pid>, fsyncs and renames into place: readers never see half a file.
void write_file_atomic(const std::string& path, std::string_view bytes);

}  // namespace gptq
