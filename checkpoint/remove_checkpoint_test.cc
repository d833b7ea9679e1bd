#include "checkpoint/remove_checkpoint.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include <gtest/gtest.h>

namespace fabric {
namespace {
namespace fs = std::filesystem;

std::string FreshDir(const std::string& name) {
  const fs::path d = fs::path(std::getenv("TEST_TMPDIR")) / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

void Touch(const fs::path& p) { std::ofstream(p) << "x"; }

int Entries(const std::string& dir) {
  int n = 0;
  for (const auto& e : fs::directory_iterator(dir)) (void)e, ++n;
  return n;
}

TEST(RemoveCheckpoint, DeletingNamesAreHiddenAndRecognized) {
  const std::string a = DeletingName("step-00000001.ckpt");
  const std::string b = DeletingName("step-00000001.ckpt");
  EXPECT_EQ(a[0], '.');
  EXPECT_NE(a, b);  // a second removal of the same name never collides
  EXPECT_TRUE(IsDeletingName(a));
  EXPECT_FALSE(IsDeletingName("step-00000001.ckpt"));
  EXPECT_FALSE(IsDeletingName(".metadata"));
  EXPECT_FALSE(IsDeletingName("x.deleting.1.2"));  // not hidden: not ours
}

TEST(RemoveCheckpoint, RemovesFoldersAndFilesLeavingNothing) {
  const std::string dir = FreshDir("both");
  const fs::path folder = fs::path(dir) / "sharded";
  fs::create_directories(folder / "sub");
  Touch(folder / ".metadata");
  Touch(folder / "__0_0.distcp");
  Touch(folder / "sub" / "x");
  Touch(fs::path(dir) / "single.ckpt");
  Touch(fs::path(dir) / "keep");
  ASSERT_TRUE(RemoveCheckpoint(folder.string()).ok());
  ASSERT_TRUE(RemoveCheckpoint(dir + "/single.ckpt").ok());
  EXPECT_TRUE(RemoveCheckpoint(dir + "/missing").ok());
  EXPECT_EQ(Entries(dir), 1);  // only "keep": no deleting remains
  EXPECT_TRUE(fs::exists(fs::path(dir) / "keep"));
}

std::string Read(const fs::path& p) {
  std::ifstream in(p);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(ReplaceCheckpoint, SwapsFoldersAndFilesEitherWay) {
  const std::string dir = FreshDir("replace");
  const fs::path ckpt = fs::path(dir) / "step.ckpt";
  // Nothing there yet: a plain rename.
  fs::path fresh = fs::path(dir) / SavingName("step.ckpt");
  EXPECT_TRUE(IsDeletingName(DeletingName("a")) && !IsDeletingName(SavingName("a")));
  std::ofstream(fresh) << "v1";
  ASSERT_TRUE(ReplaceCheckpoint(fresh.string(), ckpt.string()).ok());
  EXPECT_EQ(Read(ckpt), "v1");
  // A file replaced by a folder.
  fresh = fs::path(dir) / SavingName("step.ckpt");
  fs::create_directories(fresh);
  std::ofstream(fresh / ".metadata") << "v2";
  ASSERT_TRUE(ReplaceCheckpoint(fresh.string(), ckpt.string()).ok());
  EXPECT_EQ(Read(ckpt / ".metadata"), "v2");
  // A folder replaced by a folder, then by a file.
  fresh = fs::path(dir) / SavingName("step.ckpt");
  fs::create_directories(fresh);
  std::ofstream(fresh / ".metadata") << "v3";
  ASSERT_TRUE(ReplaceCheckpoint(fresh.string(), ckpt.string()).ok());
  EXPECT_EQ(Read(ckpt / ".metadata"), "v3");
  fresh = fs::path(dir) / SavingName("step.ckpt");
  std::ofstream(fresh) << "v4";
  ASSERT_TRUE(ReplaceCheckpoint(fresh.string(), ckpt.string()).ok());
  EXPECT_EQ(Read(ckpt), "v4");
  EXPECT_EQ(Entries(dir), 1);  // the old ones are gone, no temp left
}

// Kills mid-save leave saving folders and deleting remains; the next
// replacement of the same checkpoint removes those of dead processes only.
TEST(ReplaceCheckpoint, RemovesRemainsOfDeadProcessesOnly) {
  const std::string dir = FreshDir("stale");
  const fs::path path = fs::path(dir) / "state.ckpt";
  fs::create_directories(path);
  Touch(path / ".metadata");
  // pid 2^30 is above Linux's pid_max (2^22): never a live process.
  const fs::path dead_saving = fs::path(dir) / ".state.ckpt.saving.1073741824.ab";
  const fs::path dead_deleting = fs::path(dir) / "..state.ckpt.saving.5.cd.deleting.1073741824.ef";
  const fs::path live_saving = fs::path(dir) / SavingName("state.ckpt");  // this process
  const fs::path other = fs::path(dir) / ".other.ckpt.saving.1073741824.ab";
  for (const fs::path& p : {dead_saving, dead_deleting, live_saving, other}) {
    fs::create_directories(p);
    Touch(p / "__0_0.distcp");
  }
  const fs::path fresh = fs::path(dir) / SavingName("state.ckpt");
  fs::create_directories(fresh);
  Touch(fresh / ".metadata");
  ASSERT_TRUE(ReplaceCheckpoint(fresh.string(), path.string()).ok());
  EXPECT_TRUE(fs::exists(path / ".metadata"));
  EXPECT_FALSE(fs::exists(fresh));
  EXPECT_FALSE(fs::exists(dead_saving));
  EXPECT_FALSE(fs::exists(dead_deleting));
  EXPECT_TRUE(fs::exists(live_saving));  // a save of a live process may be running
  EXPECT_TRUE(fs::exists(other));        // another checkpoint's: not ours to judge
}

TEST(RemoveCheckpoint, CleanDeletingRemainsTouchesNothingElse) {
  const std::string dir = FreshDir("clean");
  fs::create_directories(fs::path(dir) / DeletingName("step-00000003.ckpt"));
  Touch(fs::path(dir) / DeletingName("step-00000004.ckpt"));
  Touch(fs::path(dir) / "step-00000005.ckpt");
  Touch(fs::path(dir) / ".hidden");
  auto cleaned = CleanDeletingRemains(dir);
  ASSERT_TRUE(cleaned.ok()) << cleaned.status();
  EXPECT_EQ(cleaned->size(), 2u);
  EXPECT_EQ(Entries(dir), 2);
  auto none = CleanDeletingRemains(dir + "/missing");
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
}

}  // namespace
}  // namespace fabric
