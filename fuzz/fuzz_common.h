// Helpers shared by the libFuzzer targets (fuzz/fuzz_*.cpp, built with -DGPTQ_FUZZ=ON; see
// scripts/fuzz.sh). Every target treats gptq::Error as the documented clean failure and lets
// anything else (another exception, a sanitizer report, an abort) crash the run.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>

namespace gptq_fuzz {

namespace fs = std::filesystem;

// A scratch folder of this process (on /dev/shm when there is one), removed at exit. With -fork or
// -jobs every fuzzing process has its own.
inline const std::string& scratch_dir() {
  static const std::string dir = [] {
    const char* env = std::getenv("TMPDIR");
    std::string base = fs::is_directory("/dev/shm") ? "/dev/shm" : env && *env ? env : "/tmp";
    std::string tmpl = base + "/gptq_fuzz.XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) {
      std::perror("gptq fuzz: mkdtemp");
      std::abort();
    }
    static const std::string keep = tmpl;
    std::atexit([] {
      std::error_code ec;
      fs::remove_all(keep, ec);
    });
    return tmpl;
  }();
  return dir;
}

// A sub-folder of the scratch folder, created on first use.
inline std::string scratch_subdir(const std::string& name) {
  const std::string d = scratch_dir() + "/" + name;
  fs::create_directories(d);
  return d;
}

// Writes bytes to path (replacing it); aborts on I/O errors, which are the harness's, not the input's.
inline void write_file(const std::string& path, std::string_view bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    std::perror(path.c_str());
    std::abort();
  }
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t w = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (w <= 0) {
      std::perror(path.c_str());
      std::abort();
    }
    done += size_t(w);
  }
  ::close(fd);
}

inline void remove_file(const std::string& path) { ::unlink(path.c_str()); }

// The shared data folder (models/, data/): GPTQ_SHARED, else /work/shared.
inline std::string shared_dir() {
  const char* env = std::getenv("GPTQ_SHARED");
  return env && *env ? env : "/work/shared";
}

// GPTQ_FUZZ_WRITE_SEEDS=DIR asks a target to write the seed inputs it generates itself into DIR and
// exit (scripts/fuzz.sh builds the corpora that way). Called first in LLVMFuzzerInitialize.
inline void write_seeds_if_asked(void (*write_seeds)(const std::string& dir)) {
  const char* env = std::getenv("GPTQ_FUZZ_WRITE_SEEDS");
  if (env == nullptr || *env == '\0') return;
  write_seeds(env);
  std::exit(0);
}

// Invariant violations are findings: print and abort, so libFuzzer saves the input.
[[noreturn]] inline void violated(const char* what, const std::string& detail = "") {
  std::fprintf(stderr, "gptq fuzz: invariant violated: %s%s%s\n", what, detail.empty() ? "" : ": ", detail.c_str());
  std::abort();
}

}  // namespace gptq_fuzz
