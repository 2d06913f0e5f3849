#include "backend/backend.h"

#include "core/memory.h"
#include "gptq/error.h"

namespace gptq {

uint64_t Backend::available_bytes() const { return available_memory(); }

#if !defined(GPTQ_WITH_CUDA)
bool built_with_cuda() { return false; }
bool cuda_usable(int, std::string* why) {
  if (why) *why = "this gptq was built without CUDA (configure with -DGPTQ_CUDA=ON and the CUDA toolkit)";
  return false;
}
std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions&) {
  fail("this gptq was built without CUDA (configure with -DGPTQ_CUDA=ON and the CUDA toolkit)");
}
#endif

}  // namespace gptq
