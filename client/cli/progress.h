// Upload progress on stderr: a carriage-return-updated line on a terminal,
// an occasional plain line (every 25%) otherwise.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace plume::cli {

class ProgressDisplay {
 public:
  ProgressDisplay(std::string label, FILE* out);
  // Called with the bytes sent so far and the total.
  void Update(int64_t sent, int64_t total);
  // Ends the line (terminal) and prints a summary.
  void Done();

 private:
  std::string Line(int64_t sent, int64_t total) const;

  std::string label_;
  FILE* out_;
  bool tty_;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_{};
  int last_quarter_ = -1;
  int64_t sent_ = 0;
  int64_t total_ = 0;
  bool drawn_ = false;
};

}  // namespace plume::cli
