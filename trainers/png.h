// A tiny PNG writer (8-bit RGB, zlib from the system) and a loss-curve chart
// drawn with it, so a trainer can leave a picture of its run without any
// plotting library.
#ifndef FABRIC_TRAINERS_PNG_H_
#define FABRIC_TRAINERS_PNG_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fabric::trainers {

// An RGB image, rows top to bottom, 3 bytes per pixel.
struct RgbImage {
  RgbImage(int width, int height, uint32_t background = 0xFFFFFF);
  void Set(int x, int y, uint32_t rgb);  // ignores points outside the image
  uint32_t Get(int x, int y) const;
  // A line of thickness 1 (Bresenham); `thick` also fills the pixel below.
  void Line(int x0, int y0, int x1, int y1, uint32_t rgb, bool thick = false);
  // `text` in a built-in 5x7 pixel font, top-left corner at (x, y), 6 pixels
  // per character. Knows digits, '.', '-', '+' and the lowercase letters of
  // axis labels and numbers (a e g k l n o p r s t); others are blank.
  void Text(int x, int y, std::string_view text, uint32_t rgb);

  int width;
  int height;
  std::vector<uint8_t> pixels;
};

// The bytes of a PNG file of `image` (IHDR, one zlib-compressed IDAT, IEND).
absl::StatusOr<std::string> EncodePng(const RgbImage& image);

// A line chart of `ys` over `xs` (same length, at least one point): axes,
// light grid lines at the "nice" ticks with their values, the axis names,
// the curve in blue.
RgbImage DrawLineChart(const std::vector<double>& xs, const std::vector<double>& ys,
                       std::string_view x_label = "step", std::string_view y_label = "loss",
                       int width = 640, int height = 400);

// DrawLineChart + EncodePng, written to `path` with AtomicWriteFile (synced,
// then renamed over the old chart: a crash leaves the old or the new one).
absl::Status WriteLineChartPng(const std::string& path, const std::vector<double>& xs,
                               const std::vector<double>& ys, std::string_view x_label = "step",
                               std::string_view y_label = "loss");

}  // namespace fabric::trainers

#endif  // FABRIC_TRAINERS_PNG_H_
