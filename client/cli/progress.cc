#include "progress.h"

#include <unistd.h>

#include "absl/strings/str_format.h"

namespace plume::cli {

ProgressDisplay::ProgressDisplay(std::string label, FILE* out)
    : label_(std::move(label)),
      out_(out),
      tty_(isatty(fileno(out)) != 0),
      start_(std::chrono::steady_clock::now()) {}

std::string ProgressDisplay::Line(int64_t sent, int64_t total) const {
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double pct = total > 0 ? 100.0 * static_cast<double>(sent) / static_cast<double>(total) : 100.0;
  const double mb = static_cast<double>(sent) / 1e6;
  const double rate = secs > 0 ? mb / secs : 0.0;
  return absl::StrFormat("%s %5.1f%%  %.1f/%.1f MB  %.1f MB/s", label_, pct, mb,
                         static_cast<double>(total) / 1e6, rate);
}

void ProgressDisplay::Update(int64_t sent, int64_t total) {
  sent_ = sent;
  total_ = total;
  const auto now = std::chrono::steady_clock::now();
  if (tty_) {
    if (sent < total && drawn_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
    last_draw_ = now;
    drawn_ = true;
    absl::FPrintF(out_, "\r%s\x1b[K", Line(sent, total));
    std::fflush(out_);
  } else {
    const int quarter = total > 0 ? static_cast<int>(4 * sent / total) : 4;
    if (quarter == last_quarter_) return;
    last_quarter_ = quarter;
    absl::FPrintF(out_, "%s\n", Line(sent, total));
    std::fflush(out_);
  }
}

void ProgressDisplay::Done() {
  if (tty_) {
    absl::FPrintF(out_, "\r%s\x1b[K\n", Line(sent_, total_));
  } else if (last_quarter_ != 4) {
    absl::FPrintF(out_, "%s\n", Line(sent_, total_));
  }
  std::fflush(out_);
}

}  // namespace plume::cli
