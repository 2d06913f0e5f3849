#include "core/sha256.h"

#include <openssl/evp.h>

#include "core/mapped_file.h"

namespace gptq {

std::string sha256_of(std::string_view bytes) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_Digest(bytes.data(), bytes.size(), md, &n, EVP_sha256(), nullptr);
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (unsigned i = 0; i < n; ++i) {
    s += hex[md[i] >> 4];
    s += hex[md[i] & 15];
  }
  return s;
}

std::string sha256_of_file(const std::string& path) {
  const MappedFile f(path);
  return sha256_of(std::string_view(reinterpret_cast<const char*>(f.data()), f.size()));
}

}  // namespace gptq
