#include "tools/progress.h"

#include <cstdio>
#include <string>

#include <gtest/gtest.h>

#include "absl/strings/match.h"

namespace fabric::tools {
namespace {

TEST(Progress, RenderShowsBytesThroughputAndEta) {
  const std::string line = ProgressBar::Render("consolidate", uint64_t{1} << 30, uint64_t{4} << 30, 2.0);
  EXPECT_TRUE(absl::StrContains(line, "consolidate [")) << line;
  EXPECT_TRUE(absl::StrContains(line, " 25% ")) << line;
  EXPECT_TRUE(absl::StrContains(line, "1.00 GiB / 4.00 GiB")) << line;
  EXPECT_TRUE(absl::StrContains(line, "512.00 MiB/s")) << line;
  EXPECT_TRUE(absl::StrContains(line, "ETA 6s")) << line;
  const std::string done = ProgressBar::Render("x", 10, 10, 1.0);
  EXPECT_TRUE(absl::StrContains(done, "100%")) << done;
  EXPECT_TRUE(absl::StrContains(done, "in 1.0s")) << done;
}

TEST(Progress, HumanBytes) {
  EXPECT_EQ(HumanBytes(512), "512 B");
  EXPECT_EQ(HumanBytes(1536), "1.50 KiB");
  EXPECT_EQ(HumanBytes(3.0 * (1 << 30)), "3.00 GiB");
}

TEST(Progress, DisabledBarWritesNothing) {
  std::FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  {
    ProgressBar bar("x", /*enabled=*/false, f);
    bar.Update(5, 10);
    bar.Update(10, 10);
  }
  EXPECT_EQ(std::ftell(f), 0);
  {
    ProgressBar bar("x", /*enabled=*/true, f);
    bar.Update(10, 10);
  }
  EXPECT_GT(std::ftell(f), 0);
  std::fclose(f);
}

}  // namespace
}  // namespace fabric::tools
