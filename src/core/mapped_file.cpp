#include "core/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "core/fs.h"
#include "gptq/error.h"

namespace gptq {

MappedFile::MappedFile(const std::string& path) {
  uint64_t size = 0;
  const int fd = open_regular_file(path, &size);
  size_ = size_t(size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int e = errno;
      ::close(fd);
      fail(path, ": cannot mmap: ", std::strerror(e));
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
}

void MappedFile::drop_pages() const {
  if (data_) ::madvise(const_cast<uint8_t*>(data_), size_, MADV_DONTNEED);
}

void prefetch_pages(const void* p, size_t n) {
  if (!p || n == 0) return;
  const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
  const uintptr_t e = uintptr_t(p) + n;
  // In chunks: Linux reads at most its read-ahead window (8 MiB here) per call.
  constexpr uintptr_t kChunk = uintptr_t(2) << 20;
  for (uintptr_t b = uintptr_t(p) & ~(page - 1); b < e; b += kChunk)
    (void)::madvise(reinterpret_cast<void*>(b), std::min(kChunk, e - b), MADV_WILLNEED);
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

}  // namespace gptq
