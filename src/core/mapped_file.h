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

// Asks the kernel to start reading [p, p + n) of a mapping in (madvise MADV_WILLNEED in 2 MiB
// chunks: read-ahead in the background, nothing waits); a hint, so errors (memory that is not a file mapping) are ignored.
void prefetch_pages(const void* p, size_t n);

}  // namespace gptq
