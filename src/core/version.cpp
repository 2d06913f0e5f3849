#include "gptq/version.h"

namespace gptq {
const char* version() { return GPTQ_VERSION; }
const char* commit() { return GPTQ_COMMIT; }
}  // namespace gptq
