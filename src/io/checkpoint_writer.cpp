#include "io/checkpoint_writer.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/fs.h"
#include "gptq/error.h"

namespace gptq {

namespace fs = std::filesystem;

void check_output_dir(const std::string& out_dir, bool force) {
  if (out_dir.empty()) fail("no output folder given");
  if (fs::exists(out_dir) && !force) fail(out_dir, ": output folder exists (use --force to replace it)");
  const fs::path parent = fs::absolute(fs::path(out_dir)).parent_path();
  std::error_code ec;
  fs::create_directories(parent, ec);  // like mkdir -p
  if (!fs::is_directory(parent)) fail(out_dir, ": cannot create the parent folder ", parent.string());
}

uint64_t write_checkpoint(const std::string& out_dir, const CheckpointFiles& files, bool force) {
  check_output_dir(out_dir, force);
  fs::path out = fs::absolute(fs::path(out_dir)).lexically_normal();
  if (out.filename().empty()) out = out.parent_path();
  // Hidden siblings of out (same file system, so the final rename is atomic).
  auto sibling = [&](const char* tag) {
    std::string name = ".";
    name.append(out.filename().string()).append(tag).append(std::to_string(::getpid()));
    return out.parent_path() / name;
  };
  const fs::path tmp = sibling(".partial-");
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  try {
    // Shards: tensors in name order, a new file whenever the next tensor would pass the limit.
    std::vector<TensorToWrite> sorted = files.tensors;
    std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
    std::vector<std::vector<TensorToWrite>> shards(1);
    uint64_t cur = 0, total = 0;
    for (const auto& t : sorted) {
      if (files.max_shard_bytes > 0 && cur > 0 && cur + t.nbytes > files.max_shard_bytes) {
        shards.emplace_back();
        cur = 0;
      }
      shards.back().push_back(t);
      cur += t.nbytes;
      total += t.nbytes;
    }
    if (shards.size() == 1) {
      write_safetensors((tmp / "model.safetensors").string(), shards[0]);
    } else {
      nlohmann::json index = {{"metadata", {{"total_size", total}}}, {"weight_map", nlohmann::json::object()}};
      for (size_t i = 0; i < shards.size(); ++i) {
        char name[64];
        std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
        write_safetensors((tmp / name).string(), shards[i]);
        for (const auto& t : shards[i]) index["weight_map"][t.name] = name;
      }
      write_file_atomic((tmp / "model.safetensors.index.json").string(), index.dump(2) + "\n");
    }
    for (const auto& [name, text] : files.text_files) write_file_atomic((tmp / name).string(), text);
    for (const auto& name : files.copy_from_source) {
      const fs::path src = fs::path(files.source_dir) / name;
      if (fs::is_regular_file(src)) {
        fs::copy_file(src, tmp / name, fs::copy_options::overwrite_existing);
        // the output is the user's: writable even when the source folder was read-only
        fs::permissions(tmp / name, fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read |
                                        fs::perms::others_read);
      }
    }
    uint64_t bytes = 0;
    for (const auto& e : fs::directory_iterator(tmp)) bytes += e.file_size();
    // Swap into place: the old folder (with --force) goes only once the new one is complete.
    if (fs::exists(out)) {
      const fs::path old = sibling(".old-");
      fs::rename(out, old);
      fs::rename(tmp, out);
      fs::remove_all(old);
    } else {
      fs::rename(tmp, out);
    }
    return bytes;
  } catch (const fs::filesystem_error& e) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    fail(out_dir, ": cannot write the checkpoint: ", e.code().message(), " (", e.path1().string(), ")");
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
}

}  // namespace gptq
