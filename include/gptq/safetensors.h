// Safetensors files: a memory-mapped reader that validates everything before use, a store that
// spans the shards of a model folder, and a writer (temp name + rename, never half-written).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "gptq/tensor.h"

namespace gptq {

class MappedFile;

// One .safetensors file. Throws gptq::Error naming the file for: truncation, a header length past
// the end, malformed header JSON, unknown dtype, a shape that disagrees with the byte range,
// offsets out of range or overlapping.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  size_t file_size() const;
  void drop_pages() const;  // see MappedFile::drop_pages

 private:
  std::string path_;
  std::unique_ptr<MappedFile> map_;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
  std::vector<std::unique_ptr<uint8_t[]>> aligned_copies_;  // of tensors the file leaves misaligned
};

// All tensors of a model folder: model.safetensors, or the shards named by
// model.safetensors.index.json (every listed tensor must be found in the shard it names).
class TensorStore {
 public:
  static TensorStore open_dir(const std::string& dir);

  bool has(const std::string& name) const { return index_.count(name) != 0; }
  // Throws gptq::Error "missing tensor NAME in DIR" when absent.
  const TensorView& get(const std::string& name) const;
  const std::map<std::string, const TensorView*>& all() const { return index_; }
  // Serves these views in place of the folder's tensors of the same names (a merged LoRA adapter);
  // they must outlive the store. Throws gptq::Error for a name the folder does not hold.
  void replace(const std::map<std::string, TensorView>& tensors);
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }
  size_t total_file_bytes() const;
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*> index_;
};

// A tensor to write: data is copied out at write time (must stay valid until then).
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;
  size_t nbytes;
};

// Writes a .safetensors file with tensors sorted by name (deterministic bytes) and the given
// __metadata__, via a temporary file renamed into place.
void write_safetensors(const std::string& path, std::vector<TensorToWrite> tensors,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

}  // namespace gptq
