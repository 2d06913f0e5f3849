#include "io/checkpoint_writer.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <optional>
#include <random>
#include <nlohmann/json.hpp>

#include "core/fs.h"
#include "core/json.h"
#include "gptq/error.h"

namespace gptq {

namespace fs = std::filesystem;

namespace {

// In the temporary folder, flock()ed by the run that writes it for as long as it lives. Hidden, and
// allowed in a finished output: a run killed between the final rename and the unlink leaves it there.
constexpr const char* kLockName = ".gptq-quantize.lock";
constexpr size_t kMaxEntries = 10000;  // a folder with more is not ours to judge file by file

const std::vector<std::string> kCopiedModelFiles = {
    "tokenizer.json",          "tokenizer_config.json",  "tokenizer.model",   "special_tokens_map.json",
    "generation_config.json",  "added_tokens.json",      "vocab.json",        "merges.txt",
    "chat_template.jinja"};

bool all_digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// model-00001-of-00002.safetensors
bool is_shard_name(std::string_view n) {
  return n.size() == 32 && n.substr(0, 6) == "model-" && all_digits(n.substr(6, 5)) && n.substr(11, 4) == "-of-" &&
         all_digits(n.substr(15, 5)) && n.substr(20) == ".safetensors";
}

// A name this tool writes into a finished output.
bool is_output_name(const std::string& n) {
  static const char* const own[] = {"config.json", "quantize_config.json", "model.safetensors",
                                    "model.safetensors.index.json", kLoraMergeFile, kLockName};
  for (const char* o : own)
    if (n == o) return true;
  return is_shard_name(n) ||
         std::find(kCopiedModelFiles.begin(), kCopiedModelFiles.end(), n) != kCopiedModelFiles.end();
}

// ... or into its temporary folder: write_file_atomic's NAME.tmp.PID and the lock being set up.
bool is_partial_name(const std::string& n) {
  if (is_output_name(n)) return true;
  const size_t t = n.rfind(".tmp.");
  if (t != std::string::npos && is_output_name(n.substr(0, t)) && all_digits(std::string_view(n).substr(t + 5)))
    return true;
  return n.rfind(std::string(kLockName) + ".", 0) == 0;
}

// The first entry of dir that is not a regular file named as `allowed` says; "" when there is none.
// Sets *count to the number of entries.
template <typename Allowed>
std::string first_foreign_entry(const fs::path& dir, Allowed allowed, size_t* count) {
  std::error_code ec;
  size_t n = 0;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (++n > kMaxEntries) return "more than " + std::to_string(kMaxEntries) + " files";
    std::error_code e2;
    if (it->is_symlink(e2) || !it->is_regular_file(e2) || !allowed(name)) return name;
  }
  if (ec) return "(cannot be listed: " + ec.message() + ")";
  if (count) *count = n;
  return "";
}

struct FileId {
  dev_t dev;
  ino_t ino;
  bool operator==(const FileId&) const = default;
};

std::optional<FileId> file_id(const fs::path& p) {
  struct stat st {};
  if (::stat(p.c_str(), &st) != 0) return std::nullopt;
  return FileId{st.st_dev, st.st_ino};
}

// Whether `id` is p or one of p's ancestors (p with symbolic links resolved).
bool on_chain(fs::path p, const FileId& id) {
  for (;;) {
    if (const auto i = file_id(p); i && *i == id) return true;
    fs::path up = p.parent_path();
    if (up.empty() || up == p) return false;
    p = std::move(up);
  }
}

// Whether dir/file is a JSON object whose meta.<key> (a string or a list of them) names this tool.
bool marked_ours(const fs::path& dir, const char* file, const char* key) {
  const std::string path = (dir / file).string();
  if (!file_exists(path)) return false;
  try {
    const nlohmann::json j = parse_json(read_text_file(path, size_t(1) << 20), path);
    if (!j.is_object() || !j.contains("meta") || !j["meta"].is_object() || !j["meta"].contains(key)) return false;
    nlohmann::json q = j["meta"][key];
    if (!q.is_array()) q = nlohmann::json::array({q});
    for (const auto& s : q)
      if (s.is_string() && s.get<std::string>().rfind("gptq.cpp:", 0) == 0) return true;
  } catch (const Error&) {
  }
  return false;
}

// Why an existing folder may not be replaced by --force, or "" when it may: it is empty, or an
// earlier output of this tool (its marker, and nothing but what the tool writes).
std::string why_not_replaceable(const fs::path& dir) {
  size_t n = 0;
  const std::string foreign = first_foreign_entry(dir, is_output_name, &n);
  if (foreign.rfind("(cannot", 0) == 0) return foreign.substr(1, foreign.size() - 2);
  if (!foreign.empty()) return "holds " + foreign + ", which gptq quantize and merge-lora do not write";
  if (n == 0) return "";
  if (!marked_ours(dir, "quantize_config.json", "quantizer") && !marked_ours(dir, kLoraMergeFile, "merger"))
    return "is not an output of gptq quantize or merge-lora (no quantize_config.json with meta.quantizer "
           "\"gptq.cpp:...\", no lora_merge.json with meta.merger \"gptq.cpp:...\")";
  if (::access(dir.c_str(), W_OK | X_OK) != 0) return "is read-only, so its files could not be removed";
  return "";
}

// Creates dir/kLockName already flock()ed (a lock file that appears unlocked could be taken for a
// dead run's): locked under a name of its own, then hard-linked into place, which fails when the
// name exists. Returns the fd or -errno (-EEXIST, -ENOENT: a cleaner claimed the folder first).
int create_locked(const fs::path& dir) {
  const fs::path lock = dir / kLockName;
  const fs::path own = dir / (std::string(kLockName) + "." + std::to_string(::getpid()));
  const int fd = ::open(own.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd < 0) return -errno;
  int r = ::flock(fd, LOCK_EX | LOCK_NB) == 0 ? 0 : errno;
  if (r == 0) {
    r = ::link(own.c_str(), lock.c_str()) == 0 ? 0 : errno;
    // No hard links on this file system (FAT, some FUSE): a rename that will not replace.
    if (r == EPERM || r == EOPNOTSUPP || r == EMLINK) {
      r = ::renameat2(AT_FDCWD, own.c_str(), AT_FDCWD, lock.c_str(), RENAME_NOREPLACE) == 0 ? 0 : errno;
      if (r == EINVAL || r == ENOSYS) r = ::rename(own.c_str(), lock.c_str()) == 0 ? 0 : errno;
    }
  }
  ::unlink(own.c_str());
  if (r == 0) return fd;
  ::close(fd);
  return -r;
}

// Removes `dir`, a partial folder that an earlier run left beside the output, unless a live
// process holds its lock or it holds anything this tool does not write.
void remove_if_stale(const fs::path& dir) {
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) return;
  const fs::path lock = dir / kLockName;
  // No lock file: its run died before it took one (or predates locks). Creating it claims the folder.
  int fd = ::open(lock.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644);
  const bool created = fd >= 0;
  if (fd < 0 && errno == EEXIST) fd = ::open(lock.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return;
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {  // a live run: not ours to touch
    ::close(fd);
    return;
  }
  if (first_foreign_entry(dir, is_partial_name, nullptr).empty()) {
    std::error_code ec;
    fs::remove_all(dir, ec);
  } else if (created) {
    ::unlink(lock.c_str());
  }
  ::close(fd);
}

void fsync_path(const fs::path& p, bool dir) {
  const int fd = ::open(p.c_str(), (dir ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  if (fd < 0) fail(p.filename().string(), ": cannot open to fsync: ", std::strerror(errno));
  const int r = ::fsync(fd);
  const int e = errno;
  ::close(fd);
  if (r != 0) fail(p.filename().string(), ": fsync failed: ", std::strerror(e));
}

// The rename into the parent folder, on disk; best effort: the new output is in place either way.
void fsync_dir_quietly(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t i = 0; !from.empty() && (i = s.find(from, i)) != std::string::npos; i += to.size())
    s.replace(i, from.size(), to);
  return s;
}

// Tensors (sharded by name order), JSON text files and the copied source files, into dir.
void write_files(const fs::path& dir, const CheckpointFiles& files) {
  std::vector<TensorToWrite> sorted = files.tensors;
  std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  std::vector<std::vector<TensorToWrite>> shards(1);
  uint64_t cur = 0, total = 0;
  for (const auto& t : sorted) {
    if (!files.shard_of.empty()) {
      const auto it = files.shard_of.find(t.name);
      GPTQ_ASSERT(it != files.shard_of.end(), "no shard given for tensor ", t.name);
      if (shards.size() <= it->second) shards.resize(it->second + 1);
      shards[it->second].push_back(t);
    } else {
      if (files.max_shard_bytes > 0 && cur > 0 && cur + t.nbytes > files.max_shard_bytes) {
        shards.emplace_back();
        cur = 0;
      }
      shards.back().push_back(t);
      cur += t.nbytes;
    }
    total += t.nbytes;
  }
  if (shards.size() == 1) {
    write_safetensors((dir / "model.safetensors").string(), shards[0]);
  } else {
    nlohmann::json index = {{"metadata", {{"total_size", total}}}, {"weight_map", nlohmann::json::object()}};
    for (size_t i = 0; i < shards.size(); ++i) {
      char name[64];
      std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
      write_safetensors((dir / name).string(), shards[i]);
      for (const auto& t : shards[i]) index["weight_map"][t.name] = name;
    }
    write_file_atomic((dir / "model.safetensors.index.json").string(), index.dump(2) + "\n");
  }
  for (const auto& [name, text] : files.text_files) write_file_atomic((dir / name).string(), text);
  for (const auto& name : files.copy_from_source) {
    const fs::path src = fs::path(files.source_dir) / name;
    if (fs::is_regular_file(src)) {
      fs::copy_file(src, dir / name, fs::copy_options::overwrite_existing);
      // the output is the user's: writable even when the source folder was read-only
      fs::permissions(dir / name, fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read |
                                      fs::perms::others_read);
    }
  }
}

}  // namespace

const std::vector<std::string>& copied_model_files() { return kCopiedModelFiles; }

CheckpointOutput::CheckpointOutput(std::string out_dir, std::string model_dir, std::vector<std::string> input_files,
                                   bool force)
    : CheckpointOutput(std::move(out_dir),
                       model_dir.empty() ? std::vector<InputFolder>{} : std::vector<InputFolder>{{model_dir, "-m"}},
                       std::move(input_files), force) {}

CheckpointOutput::CheckpointOutput(std::string out_dir, std::vector<InputFolder> inputs,
                                   std::vector<std::string> input_files, bool force)
    : given_(std::move(out_dir)), inputs_(std::move(inputs)), input_files_(std::move(input_files)), force_(force) {
  if (given_.empty()) fail("no output folder given (-o)");
  fs::path p = fs::absolute(fs::path(given_)).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();  // "out/", "."
  std::error_code ec;
  if (fs::is_symlink(fs::symlink_status(p, ec)) && !fs::exists(fs::status(p, ec)))
    refuse("is a symbolic link to " + fs::read_symlink(p, ec).string() + ", which does not exist");
  // A symbolic link is written through: the folder it names is the output (and is what is checked).
  target_ = fs::weakly_canonical(p, ec);
  if (ec) target_ = p;
  if (target_.filename().empty() || target_ == target_.root_path()) refuse("cannot be the root folder");
  check();
}

void CheckpointOutput::refuse(const std::string& why) const { fail("-o ", given_, ": ", why); }

void CheckpointOutput::check() const {
  std::error_code ec;
  const std::optional<FileId> out_id = file_id(target_);
  // Input files, and what the input folders' links point to (the Hugging Face cache links a
  // snapshot's files to its blobs/ folder).
  std::vector<std::string> files = input_files_;
  // An input is never replaced, written into or removed, whatever --force says.
  for (const InputFolder& in : inputs_) {
    const fs::path dir = in.dir.empty() ? fs::path() : fs::canonical(in.dir, ec);
    const std::optional<FileId> id = dir.empty() ? std::nullopt : file_id(dir);
    if (!id) continue;
    const std::string named = " (" + in.option + " " + in.dir + ")";
    if (out_id == id) refuse("is the input " + in.what + named + ": the output needs a folder of its own");
    if (out_id && on_chain(dir.parent_path(), *out_id))
      refuse("contains the input " + in.what + named + ": the output needs a folder of its own");
    if (on_chain(target_.parent_path(), *id)) refuse("lies inside the input " + in.what + named + ": choose a folder outside it");
    size_t n = 0;
    if (out_id)
      for (fs::directory_iterator it(dir, ec), end; !ec && it != end && ++n <= kMaxEntries; it.increment(ec))
        if (std::error_code e2; it->is_symlink(e2)) files.push_back(it->path().string());
  }
  if (out_id) {
    for (const auto& f : files) {
      if (f.empty()) continue;
      std::error_code e2;
      const fs::path real = fs::canonical(f, e2);
      if (!e2 && on_chain(real.parent_path(), *out_id)) refuse("contains the input file " + real.string());
    }
  }
  // An existing output: replaced only with force, and only when empty or an earlier output of ours.
  const fs::file_status st = fs::status(target_, ec);
  if (!fs::exists(st)) return;
  if (!fs::is_directory(st)) refuse("exists and is not a folder");
  if (!force_) refuse("the output folder exists (use --force to replace it)");
  if (const std::string why = why_not_replaceable(target_); !why.empty())
    refuse(why + ": --force replaces only an empty folder or an earlier output of gptq quantize or merge-lora");
}

void CheckpointOutput::open() {
  GPTQ_ASSERT(tmp_.empty(), "CheckpointOutput::open called twice");
  const fs::path parent = target_.parent_path();
  const std::string name = target_.filename().string();
  // The missing parents, outermost first: only those this run creates are removed on failure.
  std::vector<fs::path> missing;
  for (fs::path p = parent; !p.empty(); p = p.parent_path()) {
    struct stat st {};
    if (::lstat(p.c_str(), &st) == 0 || errno != ENOENT) break;
    missing.push_back(p);
    if (p == p.parent_path()) break;
  }
  for (auto it = missing.rbegin(); it != missing.rend(); ++it) {
    if (::mkdir(it->c_str(), 0777) == 0)
      created_parents_.push_back(*it);
    else if (errno != EEXIST)
      fail("-o ", given_, ": cannot create the folder ", it->string(), ": ", std::strerror(errno));
  }
  // Partial folders of earlier runs of the same output that were killed (their lock is free).
  const std::string partial = "." + name + ".partial-";
  std::error_code ec;
  const bool target_exists = fs::exists(target_, ec);
  std::vector<fs::path> stale;
  for (fs::directory_iterator it(parent, ec), end; !ec && it != end; it.increment(ec))
    if (it->path().filename().string().rfind(partial, 0) == 0) stale.push_back(it->path());
  for (const auto& s : stale) {
    if (s.extension() != ".old") {
      remove_if_stale(s);
    } else if (target_exists && first_foreign_entry(s, is_output_name, nullptr).empty()) {
      // An old output renamed aside (see swap_into_place) by a run killed before it removed it:
      // garbage once out exists; while out is missing it is the only copy, and stays.
      fs::remove_all(s, ec);
    }
  }
  // The temporary sibling (same file system, so the final rename is atomic), locked while we live.
  std::random_device rd;
  for (int attempt = 0;; ++attempt) {
    char suffix[32];
    std::snprintf(suffix, sizeof suffix, "%ld-%08x", long(::getpid()), unsigned(rd()));
    const fs::path tmp = parent / (partial + suffix);
    if (::mkdir(tmp.c_str(), 0777) != 0) {
      const int e = errno;
      if (e == EEXIST && attempt < 16) continue;
      fail("-o ", given_, ": cannot write in ", parent.string(), ": ", std::strerror(e));
    }
    const int fd = create_locked(tmp);
    if (fd >= 0) {
      tmp_ = tmp;
      lock_fd_ = fd;
      return;
    }
    if ((fd == -EEXIST || fd == -ENOENT) && attempt < 16) continue;  // a cleaner took it: it removes it
    std::error_code e2;
    fs::remove_all(tmp, e2);
    fail("-o ", given_, ": cannot write in ", parent.string(), ": ", std::strerror(-fd));
  }
}

uint64_t CheckpointOutput::commit(const CheckpointFiles& files, const std::function<void()>& before_swap) {
  GPTQ_ASSERT(!tmp_.empty() && !committed_, "CheckpointOutput::commit without open");
  uint64_t bytes = 0;
  try {
    write_files(tmp_, files);
    // On disk before the swap, so a crash after it cannot leave a complete-looking empty file.
    std::vector<fs::path> written;
    for (const auto& e : fs::directory_iterator(tmp_))
      if (e.path().filename() != kLockName) written.push_back(e.path());
    for (const auto& p : written) {
      fsync_path(p, false);
      bytes += fs::file_size(p);
    }
    fsync_path(tmp_, true);
  } catch (const fs::filesystem_error& e) {
    fail("-o ", given_, ": cannot write the checkpoint: ", e.code().message(), " (",
         e.path1().filename().string(), ")");
  } catch (const Error& e) {
    // Name the files as they will be called, not by the hidden temporary folder.
    fail("-o ", given_, ": cannot write the checkpoint: ", replace_all(e.what(), tmp_.string() + "/", ""));
  }
  if (before_swap) before_swap();
  check();  // what -o is may have changed while this run worked
  swap_into_place();
  committed_ = true;
  ::close(lock_fd_);
  lock_fd_ = -1;
  return bytes;
}

void CheckpointOutput::swap_into_place() {
  const auto errno_of = [](int r) { return r == 0 ? 0 : errno; };
  const fs::path parent = target_.parent_path();
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(target_, ec))) {
    int r = errno_of(::renameat2(AT_FDCWD, tmp_.c_str(), AT_FDCWD, target_.c_str(), RENAME_NOREPLACE));
    if (r == EINVAL || r == ENOSYS) r = errno_of(::rename(tmp_.c_str(), target_.c_str()));  // no flags here
    if (r == 0) {
      ::unlink((target_ / kLockName).c_str());
      fsync_dir_quietly(parent);
      return;
    }
    if (r != EEXIST && r != ENOTEMPTY)
      fail("-o ", given_, ": cannot rename the checkpoint into place: ", std::strerror(r));
    check();  // it appeared just now: replaced only as an existing folder would be
  }
  // Both at once: out becomes the new folder, the temporary name the old one, which then goes.
  const int r = errno_of(::renameat2(AT_FDCWD, tmp_.c_str(), AT_FDCWD, target_.c_str(), RENAME_EXCHANGE));
  if (r == 0) {
    ::unlink((target_ / kLockName).c_str());
    fs::remove_all(tmp_, ec);
  } else if (r == EINVAL || r == ENOSYS) {
    // No exchange on this file system: the old folder aside first, removed once the new one is in.
    fs::path old = tmp_;
    old.replace_filename(tmp_.filename().string() + ".old");
    if (::rename(target_.c_str(), old.c_str()) != 0)
      fail("-o ", given_, ": cannot move the old output aside: ", std::strerror(errno));
    if (::rename(tmp_.c_str(), target_.c_str()) != 0) {
      const int e = errno;
      ::rename(old.c_str(), target_.c_str());
      fail("-o ", given_, ": cannot rename the checkpoint into place: ", std::strerror(e));
    }
    ::unlink((target_ / kLockName).c_str());
    fs::remove_all(old, ec);
  } else {
    fail("-o ", given_, ": cannot replace the old output: ", std::strerror(r));
  }
  fsync_dir_quietly(parent);
}

CheckpointOutput::~CheckpointOutput() {
  std::error_code ec;
  if (!committed_ && !tmp_.empty()) fs::remove_all(tmp_, ec);  // under our lock: no cleaner races us
  if (lock_fd_ >= 0) ::close(lock_fd_);
  if (!committed_)
    for (auto it = created_parents_.rbegin(); it != created_parents_.rend(); ++it) ::rmdir(it->c_str());
}

uint64_t write_checkpoint(const std::string& out_dir, const CheckpointFiles& files, bool force) {
  CheckpointOutput out(out_dir, files.source_dir, {}, force);
  out.open();
  return out.commit(files);
}

}  // namespace gptq
