#include "trainers/png.h"

#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/status_macros.h"
#include "checkpoint/file_io.h"

namespace fabric::trainers {
namespace {

// 5x7 glyphs, one row per byte, bit 4 the leftmost pixel.
struct Glyph {
  char c;
  uint8_t rows[7];
};
constexpr Glyph kFont[] = {
    {'0', {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E}},
    {'1', {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E}},
    {'2', {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F}},
    {'3', {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E}},
    {'4', {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02}},
    {'5', {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E}},
    {'6', {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E}},
    {'7', {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08}},
    {'8', {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E}},
    {'9', {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C}},
    {'.', {0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C}},
    {'-', {0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00}},
    {'+', {0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00}},
    {'a', {0x00, 0x00, 0x0E, 0x01, 0x0F, 0x11, 0x0F}},
    {'e', {0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E}},
    {'g', {0x00, 0x0F, 0x11, 0x11, 0x0F, 0x01, 0x0E}},
    {'k', {0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12}},
    {'l', {0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E}},
    {'n', {0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11}},
    {'o', {0x00, 0x00, 0x0E, 0x11, 0x11, 0x11, 0x0E}},
    {'p', {0x00, 0x00, 0x1E, 0x11, 0x1E, 0x10, 0x10}},
    {'r', {0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10}},
    {'s', {0x00, 0x00, 0x0E, 0x10, 0x0E, 0x01, 0x1E}},
    {'t', {0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06}},
};
constexpr int kGlyphAdvance = 6;

const Glyph* FindGlyph(char c) {
  for (const Glyph& g : kFont) {
    if (g.c == c) return &g;
  }
  return nullptr;
}

// A tick value as short text: "%g" of the value rounded to the tick step, so
// that 0.1 + 0.2 prints as 0.3.
std::string TickText(double v, double step) {
  if (std::fabs(v) < step * 1e-9) v = 0;
  return absl::StrFormat("%.4g", v);
}

void PutBe32(std::string& out, uint32_t v) {
  out.push_back(static_cast<char>(v >> 24));
  out.push_back(static_cast<char>(v >> 16));
  out.push_back(static_cast<char>(v >> 8));
  out.push_back(static_cast<char>(v));
}

// length, type, data, CRC-32 of type + data.
void PutChunk(std::string& out, const char type[4], const std::string& data) {
  PutBe32(out, static_cast<uint32_t>(data.size()));
  const size_t start = out.size();
  out.append(type, 4);
  out.append(data);
  const uLong crc = crc32(0L, reinterpret_cast<const Bytef*>(out.data() + start),
                          static_cast<uInt>(out.size() - start));
  PutBe32(out, static_cast<uint32_t>(crc));
}

}  // namespace

RgbImage::RgbImage(int w, int h, uint32_t background)
    : width(w), height(h), pixels(static_cast<size_t>(w) * h * 3) {
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) Set(x, y, background);
  }
}

void RgbImage::Set(int x, int y, uint32_t rgb) {
  if (x < 0 || y < 0 || x >= width || y >= height) return;
  uint8_t* p = &pixels[(static_cast<size_t>(y) * width + x) * 3];
  p[0] = static_cast<uint8_t>(rgb >> 16);
  p[1] = static_cast<uint8_t>(rgb >> 8);
  p[2] = static_cast<uint8_t>(rgb);
}

uint32_t RgbImage::Get(int x, int y) const {
  const uint8_t* p = &pixels[(static_cast<size_t>(y) * width + x) * 3];
  return (uint32_t{p[0]} << 16) | (uint32_t{p[1]} << 8) | p[2];
}

void RgbImage::Line(int x0, int y0, int x1, int y1, uint32_t rgb, bool thick) {
  const int dx = std::abs(x1 - x0), sx = x0 < x1 ? 1 : -1;
  const int dy = -std::abs(y1 - y0), sy = y0 < y1 ? 1 : -1;
  int err = dx + dy;
  while (true) {
    Set(x0, y0, rgb);
    if (thick) Set(x0, y0 + 1, rgb);
    if (x0 == x1 && y0 == y1) break;
    const int e2 = 2 * err;
    if (e2 >= dy) {
      err += dy;
      x0 += sx;
    }
    if (e2 <= dx) {
      err += dx;
      y0 += sy;
    }
  }
}

absl::StatusOr<std::string> EncodePng(const RgbImage& image) {
  if (image.width <= 0 || image.height <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("EncodePng: empty image ", image.width, "x", image.height));
  }
  // Scanlines, each behind filter byte 0 (none).
  const size_t row = static_cast<size_t>(image.width) * 3;
  std::string raw;
  raw.reserve((row + 1) * image.height);
  for (int y = 0; y < image.height; ++y) {
    raw.push_back('\0');
    raw.append(reinterpret_cast<const char*>(&image.pixels[y * row]), row);
  }
  uLongf compressed_size = compressBound(static_cast<uLong>(raw.size()));
  std::string compressed(compressed_size, '\0');
  const int rc = compress2(reinterpret_cast<Bytef*>(compressed.data()), &compressed_size,
                           reinterpret_cast<const Bytef*>(raw.data()),
                           static_cast<uLong>(raw.size()), Z_BEST_COMPRESSION);
  if (rc != Z_OK) return absl::InternalError(absl::StrCat("EncodePng: zlib error ", rc));
  compressed.resize(compressed_size);

  std::string out("\x89PNG\r\n\x1a\n", 8);
  std::string ihdr;
  PutBe32(ihdr, static_cast<uint32_t>(image.width));
  PutBe32(ihdr, static_cast<uint32_t>(image.height));
  ihdr.push_back(8);  // bit depth
  ihdr.push_back(2);  // color type: truecolor
  ihdr.push_back(0);  // compression
  ihdr.push_back(0);  // filter
  ihdr.push_back(0);  // no interlace
  PutChunk(out, "IHDR", ihdr);
  PutChunk(out, "IDAT", compressed);
  PutChunk(out, "IEND", "");
  return out;
}

namespace {

// A step of 1, 2 or 5 times a power of ten giving about `target` intervals.
double NiceStep(double span, int target) {
  if (!(span > 0)) return 1;
  const double raw = span / target;
  const double p = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    if (m * p >= raw) return m * p;
  }
  return 10 * p;
}

}  // namespace

void RgbImage::Text(int x, int y, std::string_view text, uint32_t rgb) {
  for (char c : text) {
    if (const Glyph* g = FindGlyph(c)) {
      for (int row = 0; row < 7; ++row) {
        for (int col = 0; col < 5; ++col) {
          if (g->rows[row] & (0x10 >> col)) Set(x + col, y + row, rgb);
        }
      }
    }
    x += kGlyphAdvance;
  }
}

RgbImage DrawLineChart(const std::vector<double>& xs, const std::vector<double>& ys,
                       std::string_view x_label, std::string_view y_label, int width,
                       int height) {
  RgbImage img(width, height);
  const int left = 56, right = width - 15, top = 20, bottom = height - 34;
  double x_min = std::numeric_limits<double>::infinity(), x_max = -x_min;
  double y_min = x_min, y_max = -x_min;
  const size_t n = std::min(xs.size(), ys.size());
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(xs[i]) || !std::isfinite(ys[i])) continue;
    x_min = std::min(x_min, xs[i]);
    x_max = std::max(x_max, xs[i]);
    y_min = std::min(y_min, ys[i]);
    y_max = std::max(y_max, ys[i]);
  }
  if (!(x_min <= x_max)) {  // no finite point
    x_min = 0, x_max = 1, y_min = 0, y_max = 1;
  }
  if (x_max == x_min) x_max = x_min + 1;
  if (y_max == y_min) y_max = y_min + 1;
  const double pad = (y_max - y_min) * 0.05;
  y_min -= pad;
  y_max += pad;
  auto px = [&](double x) {
    return left + static_cast<int>(std::lround((x - x_min) / (x_max - x_min) * (right - left)));
  };
  auto py = [&](double y) {
    return bottom - static_cast<int>(std::lround((y - y_min) / (y_max - y_min) * (bottom - top)));
  };
  const uint32_t grid = 0xE0E0E0, axis = 0x404040, curve = 0x1F5FBF;
  const double xs_step = NiceStep(x_max - x_min, 8), ys_step = NiceStep(y_max - y_min, 6);
  const uint32_t ink = 0x202020;
  for (double x = std::ceil(x_min / xs_step) * xs_step; x <= x_max; x += xs_step) {
    img.Line(px(x), top, px(x), bottom, grid);
    img.Line(px(x), bottom, px(x), bottom + 4, axis);  // tick
    const std::string t = TickText(x, xs_step);
    img.Text(px(x) - static_cast<int>(t.size()) * kGlyphAdvance / 2, bottom + 7, t, ink);
  }
  for (double y = std::ceil(y_min / ys_step) * ys_step; y <= y_max; y += ys_step) {
    img.Line(left, py(y), right, py(y), grid);
    img.Line(left - 4, py(y), left, py(y), axis);
    const std::string t = TickText(y, ys_step);
    img.Text(left - 7 - static_cast<int>(t.size()) * kGlyphAdvance, py(y) - 3, t, ink);
  }
  img.Text(right - static_cast<int>(x_label.size()) * kGlyphAdvance, bottom + 20, x_label, ink);
  img.Text(left - 20, top - 13, y_label, ink);
  img.Line(left, top, left, bottom, axis);
  img.Line(left, bottom, right, bottom, axis);
  bool have_prev = false;
  int prev_x = 0, prev_y = 0;
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(xs[i]) || !std::isfinite(ys[i])) {
      have_prev = false;
      continue;
    }
    const int x = px(xs[i]), y = py(ys[i]);
    if (have_prev) {
      img.Line(prev_x, prev_y, x, y, curve, /*thick=*/true);
    } else {
      img.Set(x, y, curve);
    }
    prev_x = x, prev_y = y, have_prev = true;
  }
  return img;
}

absl::Status WriteLineChartPng(const std::string& path, const std::vector<double>& xs,
                               const std::vector<double>& ys, std::string_view x_label,
                               std::string_view y_label) {
  FABRIC_ASSIGN_OR_RETURN(const std::string png,
                          EncodePng(DrawLineChart(xs, ys, x_label, y_label)));
  return AtomicWriteFile(path, png);
}

}  // namespace fabric::trainers
