// The `fabric` binary end to end: exit codes, messages, output files, and the
// streaming memory bound (peak RSS of the child process).
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "checkpoint/torch_save.h"
#include "tools/test_util.h"

namespace fabric::tools {
namespace {

namespace fs = std::filesystem;

std::string g_fabric;  // argv[1]

ChildResult Fabric(std::vector<std::string> args) {
  args.insert(args.begin(), g_fabric);
  return RunChild(args);
}

#define EXPECT_CONTAINS(haystack, needle) \
  EXPECT_TRUE(absl::StrContains(haystack, needle)) << "'" << (haystack) << "' lacks '" << (needle) << "'"

bool NoTempFiles(const std::string& dir) {
  for (const auto& e : fs::directory_iterator(dir)) {
    if (absl::StrContains(e.path().filename().string(), ".tmp.")) return false;
  }
  return true;
}

std::string Checkpoint(const std::string& name, int world = 2) {
  const std::string dir = FreshTestPath(name);
  fs::remove(dir + ".consolidated");
  EXPECT_TRUE(WriteTestCheckpoint(dir, world, true).ok());
  return dir;
}

TEST(Cli, HelpEverywhere) {
  for (const std::string cmd : {"consolidate", "inspect", "verify"}) {
    ChildResult r = Fabric({cmd, "--help"});
    EXPECT_EQ(r.exit_code, 0) << cmd;
    EXPECT_CONTAINS(r.out, "usage: fabric " + cmd);
    r = Fabric({"help", cmd});
    EXPECT_EQ(r.exit_code, 0);
    EXPECT_CONTAINS(r.out, "usage: fabric " + cmd);
  }
  ChildResult r = Fabric({"--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_CONTAINS(r.out, "consolidate");
}

TEST(Cli, BadUsageIsExitCode2) {
  ChildResult r = Fabric({});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_CONTAINS(r.err, "usage: fabric");
  r = Fabric({"frobnicate"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_CONTAINS(r.err, "unknown command 'frobnicate'");
  r = Fabric({"consolidate"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_CONTAINS(r.err, "missing CHECKPOINT_FOLDER");
  r = Fabric({"consolidate", "x", "--bogus"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_CONTAINS(r.err, "unknown flag '--bogus'");
  r = Fabric({"consolidate", "x", "--output_file"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_CONTAINS(r.err, "needs a value");
  r = Fabric({"inspect", "a", "b"});
  EXPECT_EQ(r.exit_code, 2);
  r = Fabric({"verify", "x", "--progress=sometimes"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(r.out.empty());
}

TEST(Cli, ConsolidateDefaultOutputAndExistingOutput) {
  const std::string dir = Checkpoint("cli_ok");
  ChildResult r = Fabric({"consolidate", dir + "/"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_CONTAINS(r.out, "wrote " + dir + ".consolidated");
  EXPECT_TRUE(r.err.empty()) << r.err;  // no progress bar when not a terminal
  absl::StatusOr<Value> got = TorchLoad(dir + ".consolidated");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_NE(got->as_dict().Find("step"), nullptr);

  // Again: the output exists.
  const auto before = fs::last_write_time(dir + ".consolidated");
  r = Fabric({"consolidate", dir});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_CONTAINS(r.err, "already exists");
  EXPECT_CONTAINS(r.err, "--force");
  EXPECT_EQ(fs::last_write_time(dir + ".consolidated"), before);

  r = Fabric({"consolidate", dir, "--force"});
  EXPECT_EQ(r.exit_code, 0) << r.err;

  const std::string other = FreshTestPath("cli_other.pt");
  r = Fabric({"consolidate", dir, "--output_file", other, "--progress=always"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::exists(other));
  EXPECT_CONTAINS(r.err, "100%");
  EXPECT_CONTAINS(r.err, "/s");
  r = Fabric({"verify", other});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_CONTAINS(r.out, "OK: " + other);
}

TEST(Cli, MissingMetadata) {
  const std::string dir = Checkpoint("cli_nomd");
  fs::remove(dir + "/.metadata");
  for (const std::string cmd : {"consolidate", "inspect", "verify"}) {
    ChildResult r = Fabric({cmd, dir});
    EXPECT_EQ(r.exit_code, 1) << cmd;
    EXPECT_CONTAINS(r.err, "fabric " + cmd + ": error: incomplete checkpoint (no .metadata)");
    EXPECT_CONTAINS(r.err, dir);
  }
  EXPECT_FALSE(fs::exists(dir + ".consolidated"));
}

TEST(Cli, MissingShard) {
  const std::string dir = Checkpoint("cli_noshard", 3);
  fs::remove(dir + "/__1_0.distcp");
  ChildResult r = Fabric({"consolidate", dir});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_CONTAINS(r.err, "missing shard file " + dir + "/__1_0.distcp");
  EXPECT_FALSE(fs::exists(dir + ".consolidated"));
  EXPECT_TRUE(NoTempFiles(fs::path(dir).parent_path().string()));
  r = Fabric({"verify", dir});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_CONTAINS(r.err, "missing shard file " + dir + "/__1_0.distcp");
}

TEST(Cli, TruncatedShard) {
  const std::string dir = Checkpoint("cli_trunc", 3);
  const std::string file = dir + "/__2_0.distcp";
  fs::resize_file(file, fs::file_size(file) - 700);
  ChildResult r = Fabric({"consolidate", dir});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_CONTAINS(r.err, file);
  EXPECT_FALSE(fs::exists(dir + ".consolidated"));
  EXPECT_TRUE(NoTempFiles(fs::path(dir).parent_path().string()));
  r = Fabric({"verify", dir});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_CONTAINS(r.err, "truncated shard file " + file);
}

TEST(Cli, NotACheckpoint) {
  const std::string dir = FreshTestPath("cli_plain");
  fs::create_directories(dir);
  std::ofstream(dir + "/readme.txt") << "hi";
  for (const std::string cmd : {"consolidate", "inspect", "verify"}) {
    ChildResult r = Fabric({cmd, dir});
    EXPECT_EQ(r.exit_code, 1) << cmd;
    EXPECT_CONTAINS(r.err, "not a checkpoint: '" + dir + "'");
  }
  ChildResult r = Fabric({"inspect", dir + "/readme.txt"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_CONTAINS(r.err, "not a torch.save zip archive");
  r = Fabric({"verify", FreshTestPath("cli_nowhere")});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_CONTAINS(r.err, "no such file or folder");
}

TEST(Cli, InspectTextAndJson) {
  const std::string dir = Checkpoint("cli_inspect", 3);
  ChildResult r = Fabric({"inspect", dir});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_CONTAINS(r.out, "format:     sharded");
  EXPECT_CONTAINS(r.out, "world size: 3");
  EXPECT_CONTAINS(r.out, "model.layer.weight  float32  [7, 5]  140 B");
  EXPECT_CONTAINS(r.out, "chunk offsets [0, 4] sizes [4, 2]  __2_0.distcp");
  EXPECT_CONTAINS(r.out, "optimizer.param_groups.0.betas  tuple  (0.9, 0.999)");
  r = Fabric({"inspect", dir, "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(absl::StartsWith(r.out, "{\"path\":"));
  EXPECT_CONTAINS(r.out, "\"world_size\":3");
}

// The child's own VmHWM, from --report_memory. (wait4's ru_maxrss is no use
// here: posix_spawn's vfork makes the child inherit the parent's peak.)
long ReportedPeakKib(const ChildResult& r) {
  const std::string tag = "peak memory (VmHWM): ";
  const size_t at = r.err.find(tag);
  if (at == std::string::npos) return -1;
  return std::stol(r.err.substr(at + tag.size()));
}

// Peak memory stays under 256 MiB + the largest tensor above the process's
// baseline (the same binary inspecting the same checkpoint), for a checkpoint
// many times that size.
TEST(Cli, ConsolidationMemoryIsBounded) {
  const std::string dir = FreshTestPath("cli_big");
  fs::remove(dir + ".consolidated");
  constexpr uint64_t kTensor = uint64_t{64} << 20;
  absl::StatusOr<uint64_t> bytes = WriteLargeCheckpoint(dir, 2, 12, kTensor);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  ChildResult base = Fabric({"inspect", dir, "--report_memory"});
  ASSERT_EQ(base.exit_code, 0) << base.err;
  const long base_kib = ReportedPeakKib(base);
  ASSERT_GT(base_kib, 0) << base.err;
  ChildResult r = Fabric({"consolidate", dir, "--report_memory"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const long peak_kib = ReportedPeakKib(r);
  ASSERT_GT(peak_kib, 0) << r.err;
  std::printf("checkpoint %llu MiB: consolidate peak RSS %ld KiB (baseline %ld KiB, +%ld KiB)\n",
              static_cast<unsigned long long>(*bytes >> 20), peak_kib, base_kib,
              peak_kib - base_kib);
  EXPECT_LT(peak_kib - base_kib, static_cast<long>((uint64_t{256} << 10) + (kTensor >> 10)));
  EXPECT_GT(fs::file_size(dir + ".consolidated"), *bytes);
  ChildResult v = Fabric({"verify", dir + ".consolidated", "--report_memory"});
  EXPECT_EQ(v.exit_code, 0) << v.err;
  EXPECT_LT(ReportedPeakKib(v) - base_kib, 256 << 10) << v.err;
  fs::remove_all(dir);
  fs::remove(dir + ".consolidated");
}

}  // namespace
}  // namespace fabric::tools

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s FABRIC_BINARY\n", argv[0]);
    return 2;
  }
  fabric::tools::g_fabric = argv[1];
  return RUN_ALL_TESTS();
}
