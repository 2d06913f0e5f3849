#pragma once

namespace gptq {
const char* version();  // "0.1.0"
const char* commit();   // short git hash of the build, or "unknown"
}  // namespace gptq
