// Writes a model folder: tensors (one model.safetensors or shards + index), JSON files and copies
// of the tokenizer files, all into a temporary sibling folder that is renamed into place at the
// end, so readers never see a half-written checkpoint.
//
// The output folder is the user's, so it is guarded as well as written:
// - it may not be, contain or lie inside an input folder (the model; merge-lora's base and adapter),
//   nor contain an input file;
// - an existing one is replaced only with force, and only when it is empty or an earlier output
//   of this tool (its quantize_config.json says meta.quantizer "gptq.cpp:...", or its
//   lora_merge.json meta.merger "gptq.cpp:...", and it holds no file this tool does not write);
// - the temporary folder holds a lock file flock()ed by the process writing it, so a later run
//   can tell the partial folder of a killed run (lock free) from a live one (lock held) and
//   removes only the former;
// - nothing is created before open(), and what this run created is removed again unless it
//   committed.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
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
  // Tensor name -> shard number (0, 1, ...): a source checkpoint's split kept as it was (every
  // tensor needs one); empty: split by max_shard_bytes.
  std::map<std::string, size_t> shard_of;
};

// The marker `gptq merge-lora` writes into its output (what --force recognises as its own).
inline constexpr const char* kLoraMergeFile = "lora_merge.json";

// An input folder that an output may not be, contain or lie inside, as the user named it.
struct InputFolder {
  std::string dir;
  std::string option;                // "-m", "--base", "--adapter"
  std::string what = "model folder"; // for messages: "is the input <what> (<option> <dir>)"
};

// The files of the source folder that a checkpoint carries over (tokenizer, generation config).
const std::vector<std::string>& copied_model_files();

// One run's output folder, from the checks made before any work to the final swap into place.
class CheckpointOutput {
 public:
  // Checks out_dir and creates nothing. Refused (gptq::Error "-o OUT: ..."): an empty path or
  // the root; out_dir equal to, containing or inside model_dir, or containing one of
  // input_files (symbolic links followed, folders compared by device and inode); an existing
  // out_dir without force, or with force when it is not a folder, not empty and not an earlier
  // output of this tool. model_dir may be empty (no input folder).
  CheckpointOutput(std::string out_dir, std::string model_dir, std::vector<std::string> input_files, bool force);
  // The same for several input folders (each checked as model_dir is above).
  CheckpointOutput(std::string out_dir, std::vector<InputFolder> inputs, std::vector<std::string> input_files,
                   bool force);
  CheckpointOutput(const CheckpointOutput&) = delete;
  CheckpointOutput& operator=(const CheckpointOutput&) = delete;
  // Unless committed: removes the temporary folder and the parent folders this run created.
  ~CheckpointOutput();

  // Removes the partial folders that killed runs left beside out_dir (never one whose lock a
  // live process holds), creates the missing parent folders and the locked temporary folder. An
  // output that cannot be written fails here, naming out_dir, before the long work.
  void open();

  // Writes `files` into the temporary folder (open() first), fsyncs every file and the folder,
  // calls before_swap (a cancellation check; it may throw to give up, leaving nothing), checks
  // out_dir again and swaps the new folder into place: an existing output is replaced in one
  // atomic exchange (where the file system has none: renamed aside first, removed after).
  // Returns the bytes written.
  uint64_t commit(const CheckpointFiles& files, const std::function<void()>& before_swap = {});

  // The temporary folder (after open()), e.g. for tests.
  const std::filesystem::path& temp_dir() const { return tmp_; }

 private:
  void check() const;
  [[noreturn]] void refuse(const std::string& why) const;
  void swap_into_place();

  std::string given_;                     // out_dir as the user wrote it, for messages
  std::filesystem::path target_;          // the folder to write, symbolic links resolved
  std::vector<InputFolder> inputs_;
  std::vector<std::string> input_files_;
  bool force_ = false;
  std::filesystem::path tmp_;             // the temporary sibling (empty before open())
  int lock_fd_ = -1;
  std::vector<std::filesystem::path> created_parents_;  // outermost first
  bool committed_ = false;
};

// CheckpointOutput(out_dir, files.source_dir, {}, force), open() and commit() in one call.
uint64_t write_checkpoint(const std::string& out_dir, const CheckpointFiles& files, bool force);

}  // namespace gptq
