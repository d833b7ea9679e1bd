// Asynchronous saves end to end, with real processes launched by Fabric
// (async_program): snapshot semantics, exact resume, background failures,
// a rank killed mid-save, and Python reading what they wrote.
#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "checkpoint/module_state.h"
#include "checkpoint/optimizer_state.h"
#include "checkpoint/test_python.h"
#include "fabric/fabric.h"
#include "tests/fabric_ddp/ddp_common.h"

namespace fabric_test {
namespace {

std::string g_program, g_python;

std::string Dir(const std::string& name) {
  const std::string d = fabric::testing::TmpDir() + "/" + name;
  std::system(absl::StrCat("rm -rf ", d, " && mkdir -p ", d).c_str());
  return d;
}

// Runs async_program; its stdout.
std::string Program(const std::string& args, int* status = nullptr) {
  const std::string cmd = absl::StrCat(g_program, " ", args, " 2>&1");
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int rc = pclose(p);
  if (status != nullptr) {
    *status = rc;
  } else {
    EXPECT_EQ(rc, 0) << cmd << "\n" << out;
  }
  return out;
}

// A checkpoint loaded into a fresh model and optimizer (single device), as
// state dicts: equal iff every tensor is equal bit for bit.
struct Loaded {
  fabric::Dict model, optimizer;
  int64_t step = -1;
};

Loaded LoadState(const std::string& path) {
  fabric::FabricOptions o;
  o.accelerator = "cpu";
  auto fabric = fabric::Fabric::Create(o).value();
  auto model = MakeModel();
  auto opt = MakeOptimizer(model);
  fabric::State state{{"model", model}, {"optimizer", opt}, {"step", 0}};
  Loaded out;
  auto rest = fabric->Load(path, state);
  EXPECT_TRUE(rest.ok()) << path << ": " << rest.status();
  if (!rest.ok()) return out;
  out.model = fabric::ModuleStateDict(*model);
  out.optimizer = fabric::OptimizerStateDict(*opt).value();
  out.step = state["step"].value().as_int();
  return out;
}

bool SameBits(const Loaded& a, const Loaded& b) {
  return fabric::Value(a.model) == fabric::Value(b.model) &&
         fabric::Value(a.optimizer) == fabric::Value(b.optimizer) && a.step == b.step;
}

struct Config {
  std::string name, args, ext;
};

std::vector<Config> Configs() {
  std::vector<Config> c = {{"single", "--strategy=single_device --devices=1", ".pt"}};
  for (int n : {2, 3}) c.push_back({absl::StrCat("ddp", n), absl::StrCat("--strategy=ddp --devices=", n), ".pt"});
  for (int n : {1, 2, 3}) {
    c.push_back({absl::StrCat("fsdp_sharded", n),
                 absl::StrCat("--strategy=fsdp --state_dict_type=sharded --devices=", n), ""});
  }
  for (int n : {1, 2}) {
    c.push_back({absl::StrCat("fsdp_full", n),
                 absl::StrCat("--strategy=fsdp --state_dict_type=full --devices=", n), ".pt"});
  }
  return c;
}

// The checkpoint holds the state at the call although the optimizer stepped
// right after it, for every strategy and both FSDP state-dict types; the
// next save of the same state reuses every staging buffer (the program
// checks that its staging allocated nothing).
TEST(AsyncSave, SnapshotIsTheStateAtTheCall) {
  for (const Config& c : Configs()) {
    SCOPED_TRACE(c.name);
    const std::string d = Dir("snap_" + c.name);
    Program(absl::StrCat(c.args, " --mode=snapshot --steps=4 --dir=", d));
    if (HasFailure()) return;
    const Loaded ref = LoadState(d + "/ref" + c.ext);
    const Loaded async = LoadState(d + "/async" + c.ext);
    const Loaded async2 = LoadState(d + "/async2" + c.ext);
    const Loaded final_state = LoadState(d + "/final" + c.ext);
    EXPECT_EQ(ref.step, 3);
    EXPECT_TRUE(SameBits(ref, async)) << "the async checkpoint is not the state at the call";
    EXPECT_TRUE(SameBits(final_state, async2));
    // The steps after the call did change the state (else the test proves nothing).
    EXPECT_FALSE(fabric::Value(async.model) == fabric::Value(final_state.model));
  }
}

std::map<int, std::string> Losses(const std::string& out) {
  std::map<int, std::string> losses;
  for (absl::string_view line : absl::StrSplit(out, '\n')) {
    std::vector<std::string> f = absl::StrSplit(line, ' ');
    int step;
    if (f.size() == 3 && f[0] == "loss" && absl::SimpleAtoi(f[1], &step)) losses[step] = f[2];
  }
  return losses;
}

// An FSDP run with asynchronous saves, stopped after step 4 and resumed from
// its last (asynchronous) checkpoint, logs the same losses as one run.
TEST(AsyncSave, ExactResume) {
  const std::string a = Dir("resume_a"), b = Dir("resume_b");
  const std::string fsdp = "--strategy=fsdp --devices=2 --mode=losses";
  const auto whole = Losses(Program(absl::StrCat(fsdp, " --steps=8 --dir=", a)));
  Program(absl::StrCat(fsdp, " --steps=4 --dir=", b));
  const auto resumed =
      Losses(Program(absl::StrCat(fsdp, " --steps=8 --dir=", b, " --resume=", b, "/step-4")));
  ASSERT_EQ(whole.size(), 8u);
  ASSERT_EQ(resumed.size(), 4u);
  for (int s = 5; s <= 8; ++s) EXPECT_EQ(resumed.at(s), whole.at(s)) << "step " << s;
}

// A background failure comes back at the next save and, for a later one, at
// Finish, naming the path and the cause; the earlier checkpoint loads.
TEST(AsyncSave, BackgroundFailureIsReported) {
  for (const Config& c : {Configs()[0], Configs()[1], Configs()[4]}) {
    SCOPED_TRACE(c.name);
    const std::string d = Dir("fail_" + c.name);
    const std::string out = Program(absl::StrCat(c.args, " --mode=fail --dir=", d));
    const std::string bad = d + "/not_a_dir/ckpt" + c.ext;
    EXPECT_NE(out.find("rank 0: NEXT_SAVE"), std::string::npos) << out;
    for (const std::string what : {"NEXT_SAVE", "FINISH"}) {
      const size_t at = out.find(absl::StrCat("rank 0: ", what, " "));
      ASSERT_NE(at, std::string::npos) << out;
      const std::string line = out.substr(at, out.find('\n', at) - at);
      EXPECT_NE(line.find("asynchronous save of " + bad + " failed"), std::string::npos) << line;
      // "Not a directory" (errno text) or "is not a directory" (our own check).
      EXPECT_NE(line.find("ot a directory"), std::string::npos) << line;
    }
    EXPECT_EQ(LoadState(d + "/good" + c.ext).step, 1);
    // The save that was refused because of the failure never started.
    struct stat st;
    EXPECT_NE(::stat((d + "/next" + c.ext).c_str(), &st), 0);
  }
}

// A host copy over the staging budget is refused on every rank (the DDP
// rank that stages nothing learns it too), before anything is written.
TEST(AsyncSave, StagingOverTheBudgetIsRefusedEverywhere) {
  for (const Config& c : {Configs()[1], Configs()[4]}) {
    SCOPED_TRACE(c.name);
    const std::string d = Dir("budget_" + c.name);
    const std::string out =
        Program(absl::StrCat(c.args, " --mode=budget --max_staging_bytes=64 --dir=", d));
    for (int r = 0; r < 2; ++r) {
      const size_t at = out.find(absl::StrCat("rank ", r, ": BUDGET "));
      ASSERT_NE(at, std::string::npos) << out;
      const std::string line = out.substr(at, out.find('\n', at) - at);
      EXPECT_NE(line.find("RESOURCE_EXHAUSTED"), std::string::npos) << line;
      EXPECT_NE(line.find("SaveAsync(" + d + "/over" + c.ext + ") on rank "), std::string::npos)
          << line;
      EXPECT_NE(line.find("of new host buffers"), std::string::npos) << line;
    }
    struct stat st;
    EXPECT_NE(::stat((d + "/over" + c.ext).c_str(), &st), 0) << "a refused save wrote";
    EXPECT_EQ(LoadState(d + "/sync" + c.ext).step, 1);
  }
}

// A rank that dies with its save in flight: the survivor's wait fails within
// seconds (not the 60 s collective timeout); the new checkpoint is
// incomplete and refused, the previous one loads.
TEST(AsyncSave, KilledRankFailsTheOthersQuickly) {
  const std::string d = Dir("kill");
  int rc = 0;
  const std::string out =
      Program(absl::StrCat("--strategy=fsdp --devices=2 --mode=kill --dir=", d), &rc);
  const size_t at = out.find("rank 0: KILL_WAIT ");
  ASSERT_NE(at, std::string::npos) << out;
  double seconds = 0;
  ASSERT_EQ(std::sscanf(out.c_str() + at, "rank 0: KILL_WAIT %lf", &seconds), 1);
  const std::string line = out.substr(at, out.find('\n', at) - at);
  EXPECT_LT(seconds, 15.0) << line;
  EXPECT_NE(line.find("asynchronous save of " + d + "/killed failed"), std::string::npos) << line;
  EXPECT_EQ(LoadState(d + "/good").step, 1);
  fabric::FabricOptions o;
  o.accelerator = "cpu";
  auto fabric = fabric::Fabric::Create(o).value();
  auto model = MakeModel();
  fabric::State state{{"model", model}};
  auto rest = fabric->Load(d + "/killed", state);
  EXPECT_FALSE(rest.ok()) << "an interrupted save loaded";
}

// Python reads asynchronously written checkpoints as the synchronous ones
// of the same state: torch.load for a file, DCP for a folder.
TEST(AsyncSave, PythonReadsThemAsSyncOnes) {
  const char* script = R"(
import sys, os, tempfile, torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
def load(p):
    if os.path.isdir(p):
        out = tempfile.mktemp(suffix=".pt")
        dcp_to_torch_save(p, out)
        p = out
    return torch.load(p, weights_only=True)
def same(a, b, where):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), (where, list(a), list(b))
        for k in a: same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)): same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)
sync, async_ = load(sys.argv[1]), load(sys.argv[2])
same(sync, async_, "ckpt")
assert "model" in sync and "optimizer" in sync
print("SAME", len(sync["model"]))
)";
  for (const Config& c : {Configs()[1], Configs()[4], Configs()[7]}) {
    SCOPED_TRACE(c.name);
    const std::string d = Dir("py_" + c.name);
    Program(absl::StrCat(c.args, " --mode=snapshot --steps=2 --dir=", d));
    if (HasFailure()) return;
    std::string out;
    const int rc = fabric::testing::RunPythonScript(
        g_python, script, {d + "/ref" + c.ext, d + "/async" + c.ext}, &out);
    EXPECT_EQ(rc, 0) << out;
    EXPECT_NE(out.find("SAME 4"), std::string::npos) << out;
  }
}

}  // namespace
}  // namespace fabric_test

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s ASYNC_PROGRAM PYTHON\n", argv[0]);
    return 2;
  }
  fabric_test::g_program = argv[1];
  fabric_test::g_python = argv[2];
  return RUN_ALL_TESTS();
}
