#include "core/progress.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>

namespace gptq {

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const long t = long(s + 0.5);
  char buf[32];
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
  else
    std::snprintf(buf, sizeof buf, "%ld:%02ld", t / 60, t % 60);
  return buf;
}

Progress::Progress(std::string label, int64_t total, bool enabled)
    : label_(std::move(label)), total_(total), enabled_(enabled), tty_(::isatty(2) != 0),
      start_(std::chrono::steady_clock::now()), last_draw_(start_) {}

Progress::~Progress() {
  if (!finished_ && enabled_ && tty_) std::fputc('\n', stderr);
}

void Progress::update(int64_t done, const std::string& note) {
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  if (tty_) {
    if (done < total_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
  } else {
    if (done >= total_) return;  // finish() prints the last line
    const int decile = total_ > 0 ? int(10 * done / total_) : 10;
    if (decile == last_decile_) return;
    last_decile_ = decile;
  }
  last_draw_ = now;
  draw(done, note, false);
}

void Progress::finish(const std::string& note) {
  if (!enabled_ || finished_) return;
  draw(total_, note, true);
  finished_ = true;
}

void Progress::draw(int64_t done, const std::string& note, bool final) {
  const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double frac = total_ > 0 ? double(done) / double(total_) : 1.0;
  const double rate = el > 0 ? double(done) / el : 0;
  const double eta = rate > 0 ? double(total_ - done) / rate : NAN;
  constexpr int kWidth = 24;
  char bar[kWidth + 1];
  const int fill = int(frac * kWidth);
  for (int i = 0; i < kWidth; ++i) bar[i] = i < fill ? '=' : (i == fill ? '>' : ' ');
  bar[kWidth] = 0;
  std::fprintf(stderr, "%s%s %lld/%lld [%s] %5.1f%%  %.2f it/s  %s %s%s%s%s", tty_ ? "\r\033[K" : "", label_.c_str(),
               (long long)done, (long long)total_, bar, 100 * frac, rate, final ? "took" : "ETA",
               format_duration(final ? el : eta).c_str(), note.empty() ? "" : "  ", note.c_str(),
               (final || !tty_) ? "\n" : "");
  std::fflush(stderr);
}

}  // namespace gptq
