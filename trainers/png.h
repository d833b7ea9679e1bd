// A tiny PNG writer (8-bit RGB, zlib from the system) and a loss-curve chart
// drawn with it, so a trainer can leave a picture of its run without any
// plotting library.
#ifndef FABRIC_TRAINERS_PNG_H_
#define FABRIC_TRAINERS_PNG_H_

#include <cstdint>
#include <string>
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

  int width;
  int height;
  std::vector<uint8_t> pixels;
};

// The bytes of a PNG file of `image` (IHDR, one zlib-compressed IDAT, IEND).
absl::StatusOr<std::string> EncodePng(const RgbImage& image);

// A line chart of `ys` over `xs` (same length, at least one point): axes,
// light grid lines at the "nice" ticks, the curve in blue. No text: the
// numbers are in the metrics CSV next to the picture.
RgbImage DrawLineChart(const std::vector<double>& xs, const std::vector<double>& ys,
                       int width = 640, int height = 400);

// DrawLineChart + EncodePng, written to `path` (replaced atomically).
absl::Status WriteLineChartPng(const std::string& path, const std::vector<double>& xs,
                               const std::vector<double>& ys);

}  // namespace fabric::trainers

#endif  // FABRIC_TRAINERS_PNG_H_
