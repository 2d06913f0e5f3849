#include "backend/backend.h"

#include "core/memory.h"

namespace gptq {

uint64_t Backend::available_bytes() const { return available_memory(); }

}  // namespace gptq
