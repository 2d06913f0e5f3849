// Writes a model folder: tensors (one model.safetensors or shards + index), JSON files and copies
// of the tokenizer files, all into a temporary sibling folder that is renamed into place at the
// end, so readers never see a half-written checkpoint.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "gptq/safetensors.h"

namespace gptq {

struct CheckpointFiles {
  std::vector<TensorToWrite> tensors;
  std::vector<std::pair<std::string, std::string>> text_files;  // name -> contents
  std::vector<std::string> copy_from_source;                      // file names copied from source_dir if present
  std::string source_dir;
  uint64_t max_shard_bytes = 0;  // 0: one file
};

// Returns the bytes written. Refuses an existing out_dir unless force (then replaces it whole).
uint64_t write_checkpoint(const std::string& out_dir, const CheckpointFiles& files, bool force);

// Throws gptq::Error when out_dir exists and force is false (checked before long work starts).
void check_output_dir(const std::string& out_dir, bool force);

}  // namespace gptq
