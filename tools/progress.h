// A one-line progress bar for long work: bytes done of the total, throughput
// and time left, redrawn in place on a terminal.
//
// It draws only when enabled (by default: when stderr is a terminal), so that
// logs and pipes get no control characters.
#ifndef FABRIC_TOOLS_PROGRESS_H_
#define FABRIC_TOOLS_PROGRESS_H_

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace fabric::tools {

class ProgressBar {
 public:
  // `label` starts the line, e.g. "consolidate". Draws to `out` (stderr by
  // default) when `enabled`.
  ProgressBar(std::string label, bool enabled, std::FILE* out = stderr);
  ~ProgressBar();  // Finish()es
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  // Whether stderr is a terminal (the default for `enabled`).
  static bool StderrIsTerminal();

  // Records progress; redraws at most every 100 ms (and at done == total).
  void Update(uint64_t done, uint64_t total);
  // Draws the final state and ends the line (once; later calls do nothing).
  void Finish();

  bool enabled() const { return enabled_; }

  // The text of one line, without "\r": exposed for tests.
  static std::string Render(const std::string& label, uint64_t done, uint64_t total,
                            double seconds);

 private:
  void Draw();

  const std::string label_;
  const bool enabled_;
  std::FILE* const out_;
  const std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
  uint64_t done_ = 0, total_ = 0;
  bool drawn_ = false, finished_ = false;
};

// "1.50 GiB", "512 B", ...
std::string HumanBytes(double bytes);

}  // namespace fabric::tools

#endif  // FABRIC_TOOLS_PROGRESS_H_
