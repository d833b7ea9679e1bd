#include "trainers/checkpoints.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "checkpoint/remove_checkpoint.h"

namespace fabric::trainers {
namespace {
namespace fs = std::filesystem;

std::string FreshDir(const std::string& name) {
  const fs::path d = fs::path(std::getenv("TEST_TMPDIR")) / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

void Touch(const fs::path& p) { std::ofstream(p) << "x"; }

TEST(Checkpoints, NamesRoundTrip) {
  EXPECT_EQ(CheckpointName(42), "step-00000042.ckpt");
  EXPECT_EQ(ParseCheckpointName(CheckpointName(42)), 42);
  EXPECT_EQ(ParseCheckpointName("step-123456789.ckpt"), 123456789);
  EXPECT_FALSE(ParseCheckpointName("step-.ckpt").has_value());
  EXPECT_FALSE(ParseCheckpointName("step-12a.ckpt").has_value());
  EXPECT_FALSE(ParseCheckpointName("step-12.ckpt.tmp").has_value());
  EXPECT_FALSE(ParseCheckpointName("metrics.csv").has_value());
}

TEST(Checkpoints, LatestSkipsIncompleteFolders) {
  const std::string dir = FreshDir("latest");
  Touch(fs::path(dir) / CheckpointName(10));
  fs::create_directories(fs::path(dir) / CheckpointName(20));
  Touch(fs::path(dir) / CheckpointName(20) / ".metadata");
  fs::create_directories(fs::path(dir) / CheckpointName(30));  // no .metadata yet
  Touch(fs::path(dir) / "metrics.csv");
  auto all = ListCheckpoints(dir);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 3u);
  EXPECT_EQ((*all)[0].step, 10);
  EXPECT_FALSE((*all)[0].is_directory);
  EXPECT_TRUE((*all)[1].complete);
  EXPECT_FALSE((*all)[2].complete);
  auto latest = LatestCheckpoint(dir);
  ASSERT_TRUE(latest.ok());
  ASSERT_TRUE(latest->has_value());
  EXPECT_EQ((*latest)->step, 20);
  auto none = LatestCheckpoint(dir + "/missing");
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
}

TEST(Checkpoints, PruneKeepsNewestCompleteAndInProgress) {
  const std::string dir = FreshDir("prune");
  for (int s : {1, 2, 3, 4}) Touch(fs::path(dir) / CheckpointName(s));
  fs::create_directories(fs::path(dir) / CheckpointName(0));  // interrupted, older
  fs::create_directories(fs::path(dir) / CheckpointName(5));  // being written
  auto removed = PruneCheckpoints(dir, 2);
  ASSERT_TRUE(removed.ok());
  EXPECT_EQ(removed->size(), 3u);  // steps 2, 1 and the stale 0
  EXPECT_FALSE(fs::exists(fs::path(dir) / CheckpointName(0)));
  EXPECT_FALSE(fs::exists(fs::path(dir) / CheckpointName(1)));
  EXPECT_FALSE(fs::exists(fs::path(dir) / CheckpointName(2)));
  EXPECT_TRUE(fs::exists(fs::path(dir) / CheckpointName(3)));
  EXPECT_TRUE(fs::exists(fs::path(dir) / CheckpointName(4)));
  EXPECT_TRUE(fs::exists(fs::path(dir) / CheckpointName(5)));
  // keep <= 0 keeps every complete checkpoint.
  auto none = PruneCheckpoints(dir, 0);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
}

TEST(Checkpoints, InterruptedRemovalIsNeverListedAndIsCleaned) {
  // What a crash in the middle of RemoveCheckpoint leaves: the folder under
  // its deleting name, `.metadata` still in it, a shard already gone.
  const std::string dir = FreshDir("deleting");
  const fs::path remain = fs::path(dir) / DeletingName(CheckpointName(1));
  fs::create_directories(remain);
  Touch(remain / ".metadata");
  Touch(fs::path(dir) / DeletingName(CheckpointName(2)));
  Touch(fs::path(dir) / CheckpointName(3));
  auto all = ListCheckpoints(dir);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 1u);
  EXPECT_EQ((*all)[0].step, 3);
  auto removed = PruneCheckpoints(dir, 2);
  ASSERT_TRUE(removed.ok()) << removed.status();
  EXPECT_EQ(removed->size(), 2u);
  EXPECT_FALSE(fs::exists(remain));
  EXPECT_TRUE(fs::exists(fs::path(dir) / CheckpointName(3)));
  int left = 0;
  for (const auto& e : fs::directory_iterator(dir)) (void)e, ++left;
  EXPECT_EQ(left, 1);
}

TEST(Checkpoints, PathBytesCountsFolders) {
  const std::string dir = FreshDir("bytes");
  std::ofstream(fs::path(dir) / "a") << "12345";
  fs::create_directories(fs::path(dir) / "sub");
  std::ofstream(fs::path(dir) / "sub" / "b") << "123";
  EXPECT_EQ(PathBytes(dir), 8);
  EXPECT_EQ(PathBytes(dir + "/a"), 5);
}

TEST(Checkpoints, ResolveUserPathUsesBazelWorkingDirectory) {
  setenv("BUILD_WORKING_DIRECTORY", "/home/user/proj", 1);
  EXPECT_EQ(ResolveUserPath("runs/x"), "/home/user/proj/runs/x");
  EXPECT_EQ(ResolveUserPath("/abs/y"), "/abs/y");
  unsetenv("BUILD_WORKING_DIRECTORY");
  EXPECT_EQ(ResolveUserPath("runs/x"), "runs/x");
}

}  // namespace
}  // namespace fabric::trainers
