// Element types and a non-owning view of a tensor stored in a model file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace gptq {

enum class DType { kF32, kF16, kBF16, kF64, kI64, kI32, kI16, kI8, kU8, kBool };

size_t dtype_size(DType t);
const char* dtype_name(DType t);  // safetensors spelling: "F32", "F16", ...
bool dtype_from_name(const std::string& name, DType* out);

// A tensor in a memory-mapped file: row-major, shape in elements.
struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t nbytes = 0;
  std::string file;  // where it came from, for error messages

  int64_t numel() const;
  int64_t dim(int i) const { return shape.at(size_t(i)); }
  std::string shape_str() const;  // "[384, 1024]"
};

// Reads element i of a float tensor (F32/F16/BF16) as fp32.
float load_float(const TensorView& t, int64_t i);

}  // namespace gptq
