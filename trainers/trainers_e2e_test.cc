// The example trainers end to end, as real programs on the real WikiText-2
// text (tiny preset, a few steps): the loss falls, a stopped and resumed run
// logs exactly the losses of an uninterrupted one (1 and 2 ranks), a
// checkpoint trained on 2 ranks loads and evaluates on 1, and the saved state
// dicts are those of Lightning's demo Transformer in Python.
//
// Args: PYTHON CHECK_DEMO_KEYS_PY SINGLE_DEVICE_TRAIN DDP_TRAIN FSDP_TRAIN LOAD DATA_DIR
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "trainers/checkpoints.h"

namespace {
namespace fs = std::filesystem;

std::string g_python, g_check_keys, g_single, g_ddp, g_fsdp, g_load, g_data;

std::string Dir(const std::string& name) {
  const fs::path d = fs::path(std::getenv("TEST_TMPDIR")) / name;
  fs::remove_all(d);
  return d.string();
}

// Runs `cmd`, returns (exit status, stdout + stderr).
std::pair<int, std::string> Exec(const std::string& cmd) {
  std::string out;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (p == nullptr) return {-1, "popen failed"};
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  const int rc = pclose(p);
  return {rc, out};
}

std::string Train(const std::string& binary, const std::string& out_dir, const std::string& args) {
  return absl::StrCat(binary, " --data_dir=", g_data, " --split=valid --preset=tiny --lr=3e-3",
                      " --batch_size=8 --log_every=1000 --out_dir=", out_dir, " ", args);
}

// Exec, expecting success.
std::string RunOk(const std::string& cmd) {
  auto r = Exec(cmd);
  EXPECT_EQ(r.first, 0) << cmd << "\n" << r.second;
  return r.second;
}

// metrics.csv: step -> loss as written (compared as text: bit-exact).
std::map<int64_t, std::string> Losses(const std::string& out_dir) {
  std::map<int64_t, std::string> m;
  std::ifstream in(fs::path(out_dir) / "metrics.csv");
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line, "step,epoch,loss,tokens_per_sec,step_seconds,rss_mib,peak_rss_mib");
  while (std::getline(in, line)) {
    std::vector<std::string> f = absl::StrSplit(line, ',');
    int64_t step = 0;
    if (f.size() == 7 && absl::SimpleAtoi(f[0], &step)) m[step] = f[2];
  }
  return m;
}

double Loss(const std::map<int64_t, std::string>& m, int64_t step) {
  double v = NAN;
  auto it = m.find(step);
  if (it != m.end()) {
    EXPECT_TRUE(absl::SimpleAtod(it->second, &v));
  }
  return v;
}

// "eval_loss X" from the load program's output.
double EvalLoss(const std::string& out) {
  const size_t at = out.find("eval_loss ");
  if (at == std::string::npos) return NAN;
  double v = NAN;
  std::string num = out.substr(at + 10, out.find(' ', at + 10) - at - 10);
  return absl::SimpleAtod(num, &v) ? v : NAN;
}

// Runs `binary` to `steps` with a checkpoint every `interval` steps, once
// straight through and once stopped at `stop` and resumed, and expects the
// same losses at every step.
// Returns the resumed run's output.
std::string ExpectExactResume(const std::string& binary, const std::string& name, int steps,
                              int interval, int stop, const std::string& extra = "") {
  const std::string a = Dir(name + "_straight"), b = Dir(name + "_resumed");
  const std::string every = absl::StrCat(" --checkpoint_interval=", interval, " ", extra);
  RunOk(Train(binary, a, absl::StrCat("--steps=", steps, every)));
  RunOk(Train(binary, b, absl::StrCat("--steps=", stop, every)));
  const std::string out = RunOk(Train(binary, b, absl::StrCat("--steps=", steps, every, " --resume")));
  EXPECT_NE(out.find(absl::StrCat("at step ", stop)), std::string::npos) << out;
  const auto straight = Losses(a), resumed = Losses(b);
  EXPECT_EQ(straight.size(), static_cast<size_t>(steps));
  EXPECT_EQ(resumed, straight);
  return out;
}

TEST(SingleDevice, LossFallsOnWikiText2AndCurveIsWritten) {
  const std::string dir = Dir("falls");
  RunOk(Train(g_single, dir, "--steps=30 --save_last=false"));
  const auto losses = Losses(dir);
  ASSERT_EQ(losses.size(), 30u);
  double first = 0, last = 0;
  for (int s = 1; s <= 3; ++s) first += Loss(losses, s) / 3;
  for (int s = 28; s <= 30; ++s) last += Loss(losses, s) / 3;
  // From about ln(13777) = 9.5: a real drop, not noise.
  EXPECT_GT(first, 9.0);
  EXPECT_LT(last, first - 1.0) << "first " << first << " last " << last;
  std::ifstream png(fs::path(dir) / "loss.png", std::ios::binary);
  char sig[8] = {};
  png.read(sig, 8);
  EXPECT_EQ(std::string(sig, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  EXPECT_FALSE(fs::exists(fs::path(dir) / "checkpoints" / fabric::trainers::CheckpointName(30)));
}

TEST(SingleDevice, ResumeIsExact) { ExpectExactResume(g_single, "single", 8, 4, 4); }

TEST(SingleDevice, VersionedCheckpointsKeepTheNewest) {
  const std::string dir = Dir("keep");
  RunOk(Train(g_single, dir, "--steps=6 --checkpoint_interval=1 --keep_checkpoints=2"));
  auto list = fabric::trainers::ListCheckpoints(dir + "/checkpoints");
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[0].step, 5);
  EXPECT_EQ((*list)[1].step, 6);
}

TEST(SingleDevice, StateDictMatchesPythonDemo) {
  const std::string dir = Dir("keys_single");
  RunOk(Train(g_single, dir, "--steps=2"));
  const std::string ckpt = dir + "/checkpoints/" + fabric::trainers::CheckpointName(2);
  const std::string out = RunOk(absl::StrCat(g_python, " ", g_check_keys, " ", ckpt));
  EXPECT_NE(out.find("ok: file, 67 model tensors in the demo's order"), std::string::npos) << out;
}

TEST(SingleDevice, BadFlagsAreClearErrors) {
  auto [rc, out] = Exec(Train(g_single, Dir("bad"), "--devices=2"));
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("--devices=2"), std::string::npos) << out;
  std::tie(rc, out) = Exec(Train(g_single, Dir("bad"), "--state_dict_type=sharded"));
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("--state_dict_type=sharded needs --strategy=fsdp"), std::string::npos) << out;
  std::tie(rc, out) = Exec(absl::StrCat(g_single, " --data_dir=", Dir("nodata"),
                                       " --split=train --steps=1 --out_dir=", Dir("bad")));
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("--data_dir"), std::string::npos) << out;
}

TEST(Fsdp, TwoRanksResumeIsExact) { ExpectExactResume(g_fsdp, "fsdp", 6, 3, 3); }

TEST(Ddp, TwoRanksResumeIsExact) { ExpectExactResume(g_ddp, "ddp", 4, 2, 2); }

// --async_save: the checkpoints written in the background resume exactly;
// each save says how long training was blocked and how long the write took.
TEST(Fsdp, AsyncSaveResumeIsExact) {
  const std::string out = ExpectExactResume(g_fsdp, "fsdp_async", 6, 2, 4, "--async_save");
  EXPECT_NE(out.find("in the background: training blocked"), std::string::npos) << out;
  EXPECT_NE(out.find(": background write "), std::string::npos) << out;
  EXPECT_NE(out.find("async: training blocked"), std::string::npos) << out;
}

// Train on 2 ranks (sharded and full checkpoints of the same deterministic
// run), load each on 1: the same weights, so the same evaluation loss, below
// the untrained model's.
TEST(Fsdp, TrainOnTwoLoadOnOne) {
  const std::string sharded = Dir("two_sharded"), full = Dir("two_full");
  RunOk(Train(g_fsdp, sharded, "--steps=8"));
  RunOk(Train(g_fsdp, full, "--steps=8 --state_dict_type=full"));
  ASSERT_TRUE(fs::is_directory(sharded + "/checkpoints/" + fabric::trainers::CheckpointName(8)));
  ASSERT_TRUE(fs::is_regular_file(full + "/checkpoints/" + fabric::trainers::CheckpointName(8)));
  const std::string eval = absl::StrCat(" --data_dir=", g_data, " --eval_batches=10");
  const std::string a = RunOk(absl::StrCat(g_load, " --checkpoint=", sharded, "/checkpoints", eval));
  const std::string b = RunOk(absl::StrCat(g_load, " --checkpoint=", full, "/checkpoints", eval));
  EXPECT_NE(a.find("sharded, saved on 2 rank(s)"), std::string::npos) << a;
  EXPECT_NE(b.find("full, saved on 2 rank(s)"), std::string::npos) << b;
  const double la = EvalLoss(a), lb = EvalLoss(b);
  EXPECT_TRUE(std::isfinite(la)) << a;
  EXPECT_EQ(la, lb);
  EXPECT_LT(la, std::log(13777.0) - 0.3);  // learned something
  // The sharded folder is a DCP checkpoint of the demo's keys and shapes.
  const std::string out = RunOk(absl::StrCat(g_python, " ", g_check_keys, " ", sharded,
                                              "/checkpoints/", fabric::trainers::CheckpointName(8)));
  EXPECT_NE(out.find("ok: DCP folder, 67 model tensors"), std::string::npos) << out;
}

}  // namespace

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  if (argc != 8) {
    std::fprintf(stderr,
                 "usage: %s PYTHON CHECK_DEMO_KEYS_PY SINGLE_DEVICE_TRAIN DDP_TRAIN FSDP_TRAIN LOAD "
                 "DATA_DIR\n",
                 argv[0]);
    return 2;
  }
  g_python = argv[1];
  g_check_keys = argv[2];
  g_single = argv[3];
  g_ddp = argv[4];
  g_fsdp = argv[5];
  g_load = argv[6];
  g_data = argv[7];
  // Given a file of the data set (valid.txt through runfiles), use its folder,
  // as an absolute path since the trainers may run from elsewhere.
  if (g_data.size() > 4 && g_data.substr(g_data.size() - 4) == ".txt") {
    g_data = g_data.substr(0, g_data.rfind('/'));
  }
  if (!g_data.empty() && g_data[0] != '/') {
    char cwd[4096];
    if (getcwd(cwd, sizeof(cwd)) != nullptr) g_data = std::string(cwd) + "/" + g_data;
  }
  return RUN_ALL_TESTS();
}
