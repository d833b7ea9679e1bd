#include "tools/progress.h"

#include <unistd.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace fabric::tools {

std::string HumanBytes(double bytes) {
  static const char* const kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) {
    bytes /= 1024;
    ++u;
  }
  if (u == 0) return absl::StrFormat("%.0f B", bytes);
  return absl::StrFormat("%.2f %s", bytes, kUnits[u]);
}

ProgressBar::ProgressBar(std::string label, bool enabled, std::FILE* out)
    : label_(std::move(label)),
      enabled_(enabled),
      out_(out),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

ProgressBar::~ProgressBar() { Finish(); }

bool ProgressBar::StderrIsTerminal() { return isatty(STDERR_FILENO) == 1; }

std::string ProgressBar::Render(const std::string& label, uint64_t done, uint64_t total,
                                double seconds) {
  constexpr int kWidth = 30;
  const double frac = total == 0 ? 1.0 : std::min(1.0, static_cast<double>(done) / total);
  const int filled = static_cast<int>(frac * kWidth);
  std::string bar(filled, '=');
  if (filled < kWidth) bar += '>';
  bar.resize(kWidth, ' ');
  const double rate = seconds > 0 ? done / seconds : 0;
  std::string eta = "--";
  if (rate > 0 && done < total) {
    eta = absl::StrFormat("%.0fs", (total - done) / rate);
  } else if (done >= total) {
    eta = absl::StrFormat("%.1fs", seconds);
  }
  return absl::StrCat(label, " [", bar, "] ", absl::StrFormat("%3.0f%% ", frac * 100),
                      HumanBytes(done), " / ", HumanBytes(total), "  ", HumanBytes(rate), "/s  ",
                      done >= total ? "in " : "ETA ", eta);
}

void ProgressBar::Update(uint64_t done, uint64_t total) {
  done_ = done;
  total_ = total;
  if (!enabled_ || finished_) return;
  const auto now = std::chrono::steady_clock::now();
  if (drawn_ && done < total && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  Draw();
}

void ProgressBar::Draw() {
  const double s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  // Pad to clear what a longer earlier line left behind.
  std::string line = Render(label_, done_, total_, s);
  if (line.size() < 100) line.resize(100, ' ');
  std::fprintf(out_, "\r%s", line.c_str());
  std::fflush(out_);
  drawn_ = true;
}

void ProgressBar::Finish() {
  if (finished_) return;
  finished_ = true;
  if (!enabled_ || !drawn_) return;
  Draw();
  std::fputc('\n', out_);
  std::fflush(out_);
}

}  // namespace fabric::tools
