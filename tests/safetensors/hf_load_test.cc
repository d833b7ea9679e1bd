// Fabric::LoadRaw of Hugging Face weights (safetensors file and sharded
// folder) on real processes: FSDP on 2 and 3 ranks (each rank's shards are
// its rows and it reads about its share of the bytes), DDP on 2, one device;
// a strict mismatch is refused on every rank with every key listed.
//
// Args: HF_LOAD_PROGRAM
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "checkpoint/module_state.h"
#include "checkpoint/safetensors_index.h"
#include "checkpoint/safetensors_module.h"
#include "checkpoint/safetensors_writer.h"
#include "tests/safetensors/hf_model.h"

namespace {
namespace fs = std::filesystem;

std::string g_program;

std::string Dir(const std::string& name) {
  const fs::path d = fs::path(std::getenv("TEST_TMPDIR")) / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

std::pair<int, std::string> RunProgram(const std::string& args) {
  const std::string cmd = absl::StrCat(g_program, " ", args, " 2>&1");
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  return {pclose(p), out};
}

// The weights a Hugging Face user starts from: another seed than the
// program's own initialisation, so a load that did nothing is caught.
std::string Weights(const std::string& dir) {
  auto model = hf_test::MakeModel(/*seed=*/7);
  const std::string path = dir + "/model.safetensors";
  EXPECT_TRUE(fabric::SaveSafetensorsModule(path, *model, std::map<std::string, std::string>{{"format", "pt"}}).ok());
  return path;
}

// "read X of Y" of each rank's line.
std::vector<double> ReadShares(const std::string& out) {
  std::vector<double> shares;
  for (absl::string_view line : absl::StrSplit(out, '\n')) {
    const size_t at = line.find("; read ");
    if (at == absl::string_view::npos) continue;
    std::vector<std::string> w = absl::StrSplit(line.substr(at + 7), ' ');
    double read = 0, total = 0;
    if (w.size() >= 3 && absl::SimpleAtod(w[0], &read) && absl::SimpleAtod(w[2], &total)) {
      shares.push_back(read / total);
    }
  }
  return shares;
}

TEST(HfLoad, FsdpRanksReadOnlyTheirRows) {
  const std::string file = Weights(Dir("fsdp"));
  for (int world : {2, 3}) {
    auto [rc, out] = RunProgram(absl::StrCat("--devices=", world, " --strategy=fsdp --weights=", file));
    ASSERT_EQ(rc, 0) << out;
    std::vector<double> shares = ReadShares(out);
    ASSERT_EQ(shares.size(), static_cast<size_t>(world)) << out;
    for (double s : shares) {
      // About 1/world of the bytes (rows of the big tensors), never the whole.
      EXPECT_GT(s, 0.8 / world) << out;
      EXPECT_LT(s, 1.2 / world + 0.02) << out;
    }
  }
}

TEST(HfLoad, DdpAndSingleDeviceLoadWholeTensors) {
  const std::string file = Weights(Dir("ddp"));
  auto [rc, out] = RunProgram(absl::StrCat("--devices=2 --strategy=ddp --weights=", file));
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("rank 1/2: ok"), std::string::npos) << out;
  std::tie(rc, out) = RunProgram(absl::StrCat("--devices=1 --weights=", file));
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("rank 0/1: ok, 4 parameters"), std::string::npos) << out;
}

TEST(HfLoad, ShardedFolderIntoFsdp) {
  const std::string dir = Dir("folder");
  auto model = hf_test::MakeModel(/*seed=*/9);
  std::vector<std::pair<std::string, at::Tensor>> a, b;
  std::map<std::string, std::string> weight_map;
  uint64_t total = 0;
  int i = 0;
  for (const auto& [k, v] : fabric::ModuleStateDict(*model)) {
    const std::string shard = fabric::SafetensorsShardName(i % 2 + 1, 2);
    (i++ % 2 ? b : a).emplace_back(k.as_string(), v.as_tensor());
    weight_map[k.as_string()] = shard;
    total += v.as_tensor().nbytes();
  }
  ASSERT_TRUE(fabric::SaveSafetensors(dir + "/" + fabric::SafetensorsShardName(1, 2), a).ok());
  ASSERT_TRUE(fabric::SaveSafetensors(dir + "/" + fabric::SafetensorsShardName(2, 2), b).ok());
  ASSERT_TRUE(fabric::WriteSafetensorsIndex(dir, total, weight_map).ok());
  auto [rc, out] = RunProgram(absl::StrCat("--devices=2 --strategy=fsdp --weights=", dir));
  ASSERT_EQ(rc, 0) << out;
  EXPECT_EQ(ReadShares(out).size(), 2u) << out;
}

TEST(HfLoad, StrictMismatchIsRefusedOnEveryRank) {
  const std::string dir = Dir("strict");
  auto model = hf_test::MakeModel(/*seed=*/7);
  auto sd = fabric::ModuleStateDict(*model);
  // "2.bias" missing, "lm_head.weight" unexpected.
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& [k, v] : sd) {
    if (k.as_string() != "2.bias") tensors.emplace_back(k.as_string(), v.as_tensor());
  }
  tensors.emplace_back("lm_head.weight", at::ones({2, 2}));
  ASSERT_TRUE(fabric::SaveSafetensors(dir + "/odd.safetensors", tensors).ok());
  for (const std::string strategy : {"fsdp", "ddp"}) {
    auto [rc, out] = RunProgram(absl::StrCat("--devices=2 --strategy=", strategy, " --weights=", dir,
                                      "/odd.safetensors --expect_error='1 missing key(s), 1 "
                                      "unexpected key(s)'"));
    ASSERT_EQ(rc, 0) << out;
    EXPECT_NE(out.find("\"2.bias\""), std::string::npos) << out;
    EXPECT_NE(out.find("\"lm_head.weight\""), std::string::npos) << out;
    EXPECT_NE(out.find("rank 1/2: refused"), std::string::npos) << out;
  }
  // A missing file names the path.
  auto [rc, out] = RunProgram(absl::StrCat("--devices=2 --strategy=fsdp --weights=", dir,
                                    "/nope.safetensors --expect_error=nope.safetensors"));
  EXPECT_EQ(rc, 0) << out;
}

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (argc > 1) g_program = argv[1];
  return RUN_ALL_TESTS();
}
