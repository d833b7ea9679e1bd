// Streaming consolidation against the library's in-memory load, against the
// source state, and against Python (Lightning's consolidation, torch.load).
#include "tools/consolidate.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "checkpoint/torch_save.h"
#include "checkpoint/value.h"
#include "tools/test_util.h"

namespace fabric::tools {
namespace {

namespace fs = std::filesystem;

std::string g_python;  // argv[1]
std::string g_script;  // argv[2]: testdata/fabric_py.py

// Runs the Python helper; returns its exit code and output.
int Py(const std::string& args, std::string* out) {
  const std::string log = FreshTestPath("py.log");
  const std::string cmd = absl::StrCat(g_python, " ", g_script, " ", args, " > ", log, " 2>&1");
  const int rc = std::system(cmd.c_str());
  std::ifstream f(log);
  std::stringstream ss;
  ss << f.rdbuf();
  *out = ss.str();
  return rc;
}

bool NoTempFiles(const std::string& dir) {
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().filename().string().find(".tmp.") != std::string::npos) return false;
  }
  return true;
}

class ConsolidateRanks : public ::testing::TestWithParam<int> {};

TEST_P(ConsolidateRanks, BitExactAgainstLibraryLoadAndSource) {
  const int world = GetParam();
  const std::string dir = FreshTestPath(absl::StrCat("ck", world));
  absl::StatusOr<Value> expected = WriteTestCheckpoint(dir, world, /*with_meta=*/true);
  ASSERT_TRUE(expected.ok()) << expected.status();

  absl::StatusOr<ConsolidateStats> stats = Consolidate(dir + "/");
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->output_file, dir + ".consolidated");
  EXPECT_TRUE(stats->merged_meta);
  EXPECT_GT(stats->storages, 0);

  absl::StatusOr<Value> got = TorchLoad(stats->output_file);
  ASSERT_TRUE(got.ok()) << got.status();
  absl::StatusOr<Value> library = LoadShardedCheckpoint(dir);
  ASSERT_TRUE(library.ok()) << library.status();
  EXPECT_TRUE(*got == *library) << got->DebugString(100) << "\nvs\n" << library->DebugString(100);
  EXPECT_TRUE(*got == *expected) << got->DebugString(100) << "\nvs\n"
                                 << expected->DebugString(100);
  // Top-level order: the DCP keys in `.metadata` order (bytes items come
  // first in a rank's file, so "optimizer" precedes "model" here, as in
  // Python), then meta.pt's (as dict.update appends them).
  std::vector<std::string> keys;
  for (const auto& [k, v] : got->as_dict()) keys.push_back(k.as_string());
  EXPECT_EQ(keys, (std::vector<std::string>{"optimizer", "model", "step", "hparams", "views"}));

  // Tiny slabs: every tensor streams in many pieces, with the same bytes.
  ConsolidateOptions small;
  small.output_file = dir + ".small";
  small.slab_bytes = 16;
  small.direct_io = false;
  uint64_t last_done = 0, last_total = 0;
  int calls = 0;
  small.progress = [&](uint64_t done, uint64_t total) {
    EXPECT_GE(done, last_done);
    last_done = done;
    last_total = total;
    ++calls;
  };
  ASSERT_TRUE(Consolidate(dir, small).ok());
  EXPECT_EQ(last_done, last_total);
  EXPECT_GT(calls, stats->storages);
  absl::StatusOr<Value> got_small = TorchLoad(small.output_file);
  ASSERT_TRUE(got_small.ok()) << got_small.status();
  EXPECT_TRUE(*got_small == *library);

  // Python reads it, and it equals Lightning's own consolidation bit for bit.
  std::string out;
  ASSERT_EQ(Py(absl::StrCat("lightning ", dir, " ", dir, ".lightning"), &out), 0) << out;
  ASSERT_EQ(Py(absl::StrCat("compare ", stats->output_file, " ", dir, ".lightning"), &out), 0)
      << out;
  EXPECT_NE(out.find("EQUAL"), std::string::npos) << out;
}

INSTANTIATE_TEST_SUITE_P(Ranks, ConsolidateRanks, ::testing::Values(1, 2, 3));

TEST(Consolidate, WithoutMetaPt) {
  const std::string dir = FreshTestPath("nometa");
  absl::StatusOr<Value> expected = WriteTestCheckpoint(dir, 2, /*with_meta=*/false);
  ASSERT_TRUE(expected.ok()) << expected.status();
  absl::StatusOr<ConsolidateStats> stats = Consolidate(dir);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_FALSE(stats->merged_meta);
  absl::StatusOr<Value> got = TorchLoad(stats->output_file);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(*got == *expected);
  std::string out;
  ASSERT_EQ(Py(absl::StrCat("dcp_to_torch_save ", dir, " ", dir, ".tts"), &out), 0) << out;
  ASSERT_EQ(Py(absl::StrCat("compare ", stats->output_file, " ", dir, ".tts"), &out), 0) << out;
}

// Folders written by Python: Lightning-style FSDP (model + optimizer keyed by
// parameter name + meta.pt) and plain DCP on 1 and 2 ranks.
class PythonFolders : public ::testing::TestWithParam<std::pair<std::string, int>> {};

TEST_P(PythonFolders, MatchesLightningConsolidation) {
  const auto& [kind, world] = GetParam();
  const std::string dir = FreshTestPath(absl::StrCat("py_", kind, world));
  std::string out;
  ASSERT_EQ(Py(absl::StrCat(kind, " ", dir, " ", world), &out), 0) << out;
  const std::string output = dir + ".ours";
  ConsolidateOptions options;
  options.output_file = output;
  absl::StatusOr<ConsolidateStats> stats = Consolidate(dir, options);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->merged_meta, kind == "fsdp");

  ASSERT_EQ(Py(absl::StrCat("lightning ", dir, " ", dir, ".lightning"), &out), 0) << out;
  ASSERT_EQ(Py(absl::StrCat("compare ", output, " ", dir, ".lightning"), &out), 0) << out;
  EXPECT_NE(out.find("EQUAL"), std::string::npos);

  // And the library's own load of the folder equals the file we wrote.
  absl::StatusOr<Value> got = TorchLoad(output);
  ASSERT_TRUE(got.ok()) << got.status();
  absl::StatusOr<Value> library = LoadShardedCheckpoint(dir);
  ASSERT_TRUE(library.ok()) << library.status();
  EXPECT_TRUE(*got == *library);
  if (kind == "fsdp") {
    // Optimizer state keyed by parameter name, with its param_groups.
    const Dict& opt = got->as_dict().Find("optimizer")->as_dict();
    ASSERT_NE(opt.Find("state"), nullptr);
    EXPECT_NE(opt.Find("state")->as_dict().Find("0.weight"), nullptr);
    ASSERT_NE(opt.Find("param_groups"), nullptr);
    EXPECT_TRUE(opt.Find("param_groups")->is_list());
    EXPECT_NE(got->as_dict().Find("model")->as_dict().Find("2.bias"), nullptr);
    EXPECT_EQ(got->as_dict().Find("step")->as_int(), 7);
  }
}

INSTANTIATE_TEST_SUITE_P(Kinds, PythonFolders,
                         ::testing::Values(std::make_pair(std::string("fsdp"), 2),
                                           std::make_pair(std::string("dcp"), 1),
                                           std::make_pair(std::string("dcp"), 2)));

TEST(Consolidate, ExistingOutputNeedsForce) {
  const std::string dir = FreshTestPath("exists");
  ASSERT_TRUE(WriteTestCheckpoint(dir, 2, true).ok());
  const std::string output = dir + ".consolidated";
  { std::ofstream(output) << "precious"; }
  absl::StatusOr<ConsolidateStats> stats = Consolidate(dir);
  ASSERT_FALSE(stats.ok());
  EXPECT_TRUE(absl::IsAlreadyExists(stats.status())) << stats.status();
  EXPECT_NE(stats.status().message().find("--force"), std::string::npos);
  std::ifstream f(output);
  std::string content;
  f >> content;
  EXPECT_EQ(content, "precious");

  ConsolidateOptions force;
  force.force = true;
  ASSERT_TRUE(Consolidate(dir, force).ok());
  EXPECT_TRUE(TorchLoad(output).ok());
}

TEST(Consolidate, CancelledLeavesNoOutput) {
  const std::string dir = FreshTestPath("cancel");
  ASSERT_TRUE(WriteTestCheckpoint(dir, 2, true).ok());
  std::atomic<bool> cancel{false};
  ConsolidateOptions options;
  options.cancel = &cancel;
  // Raise the flag midway, as a signal handler would.
  options.progress = [&](uint64_t done, uint64_t total) {
    if (done > total / 2) cancel = true;
  };
  options.slab_bytes = 64;
  absl::StatusOr<ConsolidateStats> stats = Consolidate(dir, options);
  ASSERT_FALSE(stats.ok());
  EXPECT_TRUE(absl::IsCancelled(stats.status())) << stats.status();
  EXPECT_FALSE(fs::exists(dir + ".consolidated"));
  EXPECT_TRUE(NoTempFiles(fs::path(dir).parent_path().string()));
}

TEST(Consolidate, RefusesWhatIsNotAShardedCheckpoint) {
  const std::string dir = FreshTestPath("plain_folder");
  fs::create_directories(dir);
  { std::ofstream(dir + "/notes.txt") << "hello"; }
  absl::StatusOr<ConsolidateStats> s = Consolidate(dir);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("not a checkpoint"), std::string::npos) << s.status();

  const std::string file = FreshTestPath("single.pt");
  ASSERT_TRUE(TorchSave(file, TestMeta()).ok());
  s = Consolidate(file);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("single-file checkpoint already"), std::string::npos)
      << s.status();

  s = Consolidate(FreshTestPath("does_not_exist"));
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(absl::IsNotFound(s.status())) << s.status();
}

}  // namespace
}  // namespace fabric::tools

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s PYTHON SCRIPT\n", argv[0]);
    return 2;
  }
  fabric::tools::g_python = argv[1];
  fabric::tools::g_script = argv[2];
  return RUN_ALL_TESTS();
}
