// The end-to-end case: the demo Transformer trained by fsdp_train (2
// ranks, sharded checkpoint) exports with `fabric convert` to one safetensors
// file and to a sharded Hugging Face folder, and Lightning's Python demo model
// loads each with load_state_dict(strict=True) and gives the eval loss that
// //trainers:load computes from the original checkpoint.
//
// Args: PYTHON DEMO_EVAL_PY FSDP_TRAIN LOAD FABRIC VALID_TXT
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>

#include <gtest/gtest.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "trainers/checkpoints.h"

namespace {
namespace fs = std::filesystem;

std::string g_python, g_eval, g_train, g_load, g_fabric, g_valid;

std::pair<int, std::string> Exec(const std::string& cmd) {
  std::string out;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  return {pclose(p), out};
}

std::string RunOk(const std::string& cmd) {
  auto [rc, out] = Exec(cmd);
  EXPECT_EQ(rc, 0) << cmd << "\n" << out;
  return out;
}

double EvalLoss(const std::string& out) {
  const size_t at = out.find("eval_loss ");
  double v = NAN;
  if (at == std::string::npos) return v;
  const std::string num = out.substr(at + 10, out.find_first_of(" \n", at + 10) - at - 10);
  return absl::SimpleAtod(num, &v) ? v : NAN;
}

TEST(TransformerExport, PythonDemoLoadsStrictAndGivesTheSameEvalLoss) {
  const fs::path dir = fs::path(std::getenv("TEST_TMPDIR")) / "export";
  fs::remove_all(dir);
  const std::string data = fs::path(g_valid).parent_path().string();
  RunOk(absl::StrCat(g_train, " --data_dir=", data, " --split=valid --preset=tiny --steps=3",
                     " --batch_size=8 --log_every=1000 --out_dir=", dir.string()));
  auto latest = fabric::trainers::LatestCheckpoint((dir / "checkpoints").string());
  ASSERT_TRUE(latest.ok() && latest->has_value()) << latest.status();
  const std::string ckpt = (*latest)->path;
  ASSERT_TRUE((*latest)->is_directory);

  const std::string file = (dir / "model.safetensors").string();
  const std::string folder = (dir / "hf").string();
  std::string out = RunOk(absl::StrCat(g_fabric, " convert ", ckpt, " --output_file ", file));
  EXPECT_NE(out.find("(safetensors)"), std::string::npos) << out;
  out = RunOk(absl::StrCat(g_fabric, " convert ", ckpt, " --output_file ", folder,
                           " --max_shard_size 400KB"));
  EXPECT_NE(out.find("(safetensors (sharded))"), std::string::npos) << out;
  EXPECT_TRUE(fs::exists(fs::path(folder) / "model.safetensors.index.json"));
  RunOk(absl::StrCat(g_fabric, " verify ", folder));

  const std::string eval = " --eval_batches=4 --batch_size=16";
  const double reference =
      EvalLoss(RunOk(absl::StrCat(g_load, " --checkpoint=", ckpt, " --data_dir=", data, eval)));
  ASSERT_FALSE(std::isnan(reference));
  const std::string py = absl::StrCat(g_python, " ", g_eval, " ");
  const double from_file = EvalLoss(RunOk(absl::StrCat(py, file, " ", ckpt, " ", g_valid, " 16 4")));
  out = RunOk(absl::StrCat(py, folder, " ", ckpt, " ", g_valid, " 16 4"));
  const double from_folder = EvalLoss(out);
  EXPECT_NE(out.find("shards"), std::string::npos) << out;
  std::printf("eval_loss: //trainers:load %.9g, Python demo from the file %.9g, from the "
              "folder %.9g\n", reference, from_file, from_folder);
  // The same weights: the same loss, up to C++ vs Python float32 kernels.
  EXPECT_NEAR(from_file, reference, 1e-5 * std::abs(reference));
  EXPECT_EQ(from_folder, from_file);
}

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (argc < 7) {
    std::fprintf(stderr, "usage: %s PYTHON DEMO_EVAL_PY FSDP_TRAIN LOAD FABRIC VALID_TXT\n", argv[0]);
    return 2;
  }
  g_python = argv[1];
  g_eval = argv[2];
  g_train = argv[3];
  g_load = argv[4];
  g_fabric = argv[5];
  g_valid = argv[6];
  return RUN_ALL_TESTS();
}
