// A progress bar with rate and ETA on stderr: "perplexity  42/333 [=====>    ] 12.6%  3.1 it/s  ETA 1:33".
// Redrawn in place on a terminal; on a pipe or file one line every ~10 % so logs stay readable.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace gptq {

class Progress {
 public:
  Progress(std::string label, int64_t total, bool enabled = true);
  ~Progress();
  void update(int64_t done, const std::string& note = "");
  void finish(const std::string& note = "");

 private:
  void draw(int64_t done, const std::string& note, bool final);
  std::string label_;
  int64_t total_;
  bool enabled_, tty_, finished_ = false;
  int last_decile_ = -1;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

std::string format_duration(double seconds);  // "1:05:09", "3:07", "0:04"

}  // namespace gptq
