// Read-only memory map of a whole file (the model weights stay in the page cache, not the heap).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace gptq {

class MappedFile {
 public:
  explicit MappedFile(const std::string& path);  // throws gptq::Error naming the file
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  // Drops the resident pages of the mapping (they fault back in from the page cache when read
  // again): after load-time repacking, memory then counts only what the model really uses.
  void drop_pages() const;

 private:
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace gptq
