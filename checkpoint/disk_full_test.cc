// Disk full and file-size limits while saving, for real: an 8 MiB tmpfs
// mounted by the test (needs root and mount(2); skipped with a message
// elsewhere), and RLIMIT_FSIZE (EFBIG; runs everywhere). A failed save names
// the path, leaves no temp file and leaves the previous file untouched.
#include <signal.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/status/status.h"
#include "checkpoint/atomic_file_writer.h"
#include "checkpoint/remove_checkpoint.h"

namespace fabric {
namespace {
namespace fs = std::filesystem;

std::string Read(const fs::path& p) {
  std::ifstream in(p);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::vector<std::string> Names(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  return out;
}

// Streams `bytes` through an AtomicFileWriter to `path` and commits.
absl::Status Save(const std::string& path, size_t bytes, bool direct_io) {
  AtomicFileWriter::Options o;
  o.direct_io = direct_io;
  o.buffer_bytes = size_t{1} << 20;
  absl::StatusOr<std::unique_ptr<AtomicFileWriter>> w = AtomicFileWriter::Create(path, o);
  if (!w.ok()) return w.status();
  const std::string chunk(size_t{1} << 20, 'n');
  for (size_t done = 0; done < bytes; done += chunk.size()) {
    absl::Status s = (*w)->Write(chunk.data(), std::min(chunk.size(), bytes - done));
    if (!s.ok()) return s;
  }
  return (*w)->Commit();
}

class SmallTmpfs : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (fs::path(std::getenv("TEST_TMPDIR")) / "tmpfs").string();
    fs::create_directories(dir_);
    if (mount("tmpfs", dir_.c_str(), "tmpfs", 0, "size=8m") != 0) {
      GTEST_SKIP() << "cannot mount a tmpfs here (" << strerror(errno)
                   << "): the disk-full test needs root and mount(2)";
    }
    mounted_ = true;
  }
  void TearDown() override {
    if (mounted_) umount(dir_.c_str());
  }
  std::string dir_;
  bool mounted_ = false;
};

TEST_F(SmallTmpfs, FullDiskFailsCleanlyAndKeepsTheOldFile) {
  const std::string path = dir_ + "/model.ckpt";
  for (bool direct : {true, false}) {
    ASSERT_TRUE(Save(path, 3 << 20, direct).ok());
    const std::string before = Read(path);
    const absl::Status s = Save(path, 16 << 20, direct);  // does not fit next to the old one
    ASSERT_FALSE(s.ok());
    EXPECT_NE(std::string(s.message()).find(path), std::string::npos) << s;
    EXPECT_NE(std::string(s.message()).find("No space"), std::string::npos) << s;
    EXPECT_EQ(Names(dir_), std::vector<std::string>{"model.ckpt"}) << "direct=" << direct;
    EXPECT_EQ(Read(path), before);
  }
}

TEST_F(SmallTmpfs, FullDiskDuringAFolderReplacementKeepsTheOldFolder) {
  // The sharded save's pattern: a new folder beside the old, swapped in only
  // once complete; a failure removes the new folder.
  const std::string ckpt = dir_ + "/step.ckpt";
  ASSERT_TRUE(Save(ckpt + ".tmp", 1 << 20, false).ok());
  fs::create_directories(ckpt);
  fs::rename(ckpt + ".tmp", ckpt + "/__0_0.distcp");
  std::ofstream(ckpt + "/.metadata") << "old";
  const std::string fresh = dir_ + "/" + SavingName("step.ckpt");
  fs::create_directories(fresh);
  const absl::Status s = Save(fresh + "/__0_0.distcp", 16 << 20, false);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(std::string(s.message()).find(fresh), std::string::npos) << s;
  ASSERT_TRUE(RemoveCheckpoint(fresh).ok());
  EXPECT_EQ(Names(dir_), std::vector<std::string>{"step.ckpt"});
  EXPECT_EQ(Read(ckpt + "/.metadata"), "old");
  EXPECT_EQ(fs::file_size(ckpt + "/__0_0.distcp"), 1u << 20);
}

TEST(FileSizeLimit, EfbigFailsCleanlyAndKeepsTheOldFile) {
  const std::string dir = (fs::path(std::getenv("TEST_TMPDIR")) / "fsize").string();
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string path = dir + "/model.ckpt";
  ASSERT_TRUE(Save(path, 1 << 20, false).ok());
  signal(SIGXFSZ, SIG_IGN);  // EFBIG instead of the signal
  rlimit old;
  getrlimit(RLIMIT_FSIZE, &old);
  rlimit small = old;
  small.rlim_cur = 2 << 20;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  const absl::Status s = Save(path, 5 << 20, false);
  setrlimit(RLIMIT_FSIZE, &old);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(std::string(s.message()).find(path), std::string::npos) << s;
  EXPECT_EQ(Names(dir), std::vector<std::string>{"model.ckpt"});
  EXPECT_EQ(fs::file_size(path), 1u << 20);
}

}  // namespace
}  // namespace fabric
