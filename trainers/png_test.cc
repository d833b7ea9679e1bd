#include "trainers/png.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"

namespace {

std::string g_python, g_checker;

std::string Tmp(const std::string& name) {
  return absl::StrCat(std::getenv("TEST_TMPDIR"), "/", name);
}

int Check(const std::string& args) {
  return std::system(absl::StrCat(g_python, " ", g_checker, " ", args).c_str());
}

TEST(Png, PythonDecodesPixelsExactly) {
  fabric::trainers::RgbImage img(7, 5, 0x102030);
  img.Set(0, 0, 0xFF0000);
  img.Set(6, 4, 0x00FF7F);
  img.Line(0, 2, 6, 2, 0x0000FF);
  absl::StatusOr<std::string> png = fabric::trainers::EncodePng(img);
  ASSERT_TRUE(png.ok()) << png.status();
  const std::string path = Tmp("small.png");
  std::ofstream(path, std::ios::binary) << *png;
  EXPECT_EQ(Check(absl::StrCat(path, " 7 5 0,0,ff0000 6,4,00ff7f 3,2,0000ff 1,1,102030")), 0);
  // A wrong expectation is caught (the checker really compares).
  EXPECT_NE(Check(absl::StrCat(path, " 7 5 1,1,ffffff")), 0);
}

TEST(Png, EmptyImageIsAnError) {
  fabric::trainers::RgbImage img(0, 0);
  EXPECT_FALSE(fabric::trainers::EncodePng(img).ok());
}

TEST(Png, TextDrawsGlyphs) {
  fabric::trainers::RgbImage img(40, 10);
  img.Text(1, 1, "0?l", 0x202020);
  EXPECT_EQ(img.Get(1, 2), 0x202020u);    // '0': left edge of its second row
  EXPECT_EQ(img.Get(2, 1), 0x202020u);    // '0': top row starts one pixel in
  EXPECT_EQ(img.Get(1, 1), 0xFFFFFFu);    // ... so its corner stays blank
  for (int y = 0; y < 10; ++y) {
    for (int x = 7; x < 13; ++x) EXPECT_EQ(img.Get(x, y), 0xFFFFFFu) << x << "," << y;  // '?'
  }
  EXPECT_EQ(img.Get(13 + 2, 1 + 3), 0x202020u);  // 'l': its stem
}

TEST(Png, LineChartDrawsCurveAxesAndLabels) {
  const fabric::trainers::RgbImage img =
      fabric::trainers::DrawLineChart({1, 2, 3, 4}, {10, 8, 7, 6.5}, "step", "loss", 320, 200);
  int curve = 0, ink_left = 0, ink_below = 0;
  for (int y = 0; y < img.height; ++y) {
    for (int x = 0; x < img.width; ++x) {
      curve += img.Get(x, y) == 0x1F5FBF;
      if (img.Get(x, y) == 0x202020) {
        ink_left += x < 50;          // y tick values and the y axis name
        ink_below += y > 200 - 34;   // x tick values and the x axis name
      }
    }
  }
  EXPECT_GT(curve, 100);                  // the line spans the plot
  EXPECT_EQ(img.Get(56, 100), 0x404040u);  // the y axis
  EXPECT_GT(ink_left, 50);
  EXPECT_GT(ink_below, 50);
  // The first point (highest loss) is near the top left, the last lower right.
  const std::string path = Tmp("chart.png");
  ASSERT_TRUE(fabric::trainers::WriteLineChartPng(path, {1, 2, 3}, {3, 2, 1}).ok());
  EXPECT_EQ(Check(absl::StrCat(path, " 640 400 0,0,ffffff")), 0);
}

// The chart replaces an old one in one rename and leaves no temp file; a
// folder that does not exist is an error naming the path.
TEST(Png, ReplacesAtomically) {
  const std::string dir = Tmp("replace");
  std::filesystem::create_directories(dir);
  const std::string path = dir + "/loss.png";
  { std::ofstream(path) << "an older chart"; }
  ASSERT_TRUE(fabric::trainers::WriteLineChartPng(path, {1, 2}, {2, 1}).ok());
  EXPECT_EQ(Check(absl::StrCat(path, " 640 400 0,0,ffffff")), 0);
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    ++files;
    EXPECT_EQ(e.path().filename(), "loss.png");
  }
  EXPECT_EQ(files, 1);
  const std::string missing = dir + "/no_such_folder/loss.png";
  const absl::Status s = fabric::trainers::WriteLineChartPng(missing, {1, 2}, {2, 1});
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("no_such_folder"), std::string::npos) << s;
}

}  // namespace

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s PYTHON CHECK_PNG_PY\n", argv[0]);
    return 2;
  }
  g_python = argv[1];
  g_checker = argv[2];
  return RUN_ALL_TESTS();
}
