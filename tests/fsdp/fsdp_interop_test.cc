// FSDP checkpoints and Python: a sharded folder written by a 3-rank C++ run
// loads in Python (torch.distributed.checkpoint without a process group,
// dcp_to_torch_save, Lightning's loader) and its full file with torch.load;
// a sharded checkpoint written by Python's FSDP2 + dcp.save on 2 Gloo ranks
// loads here on 1, 2 and 3 ranks (and into a plain module), bit-exact.
//
// Usage (Bazel passes both): fsdp_interop_test <python> <fsdp_interop.py>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/optim/adamw.h>

#include "absl/strings/str_cat.h"
#include "checkpoint/torch_save.h"
#include "checkpoint/value.h"
#include "strategies/cluster_environment.h"
#include "strategies/fsdp.h"
#include "checkpoint/state.h"
#include "strategies/fsdp_checkpoint.h"
#include "tests/fsdp/fsdp_test_util.h"
#include "tests/distributed/rank_main.h"

namespace fabric::testing {
namespace {

namespace fs = std::filesystem;

std::string g_python, g_script;

std::string Env(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v != nullptr ? std::string(v) : fallback;
}
std::string Dir() {
  return Env("FSDP_TEST_DIR", absl::StrCat(Env("TEST_TMPDIR", "/tmp"), "/fsdp_interop"));
}

#define CHECK_OK(expr)                             \
  do {                                             \
    absl::Status check_status_ = (expr);           \
    if (!check_status_.ok()) return check_status_; \
  } while (false)

absl::Status Check(bool ok, const std::string& what) {
  return ok ? absl::OkStatus() : absl::InternalError(what);
}

absl::Status Same(const at::Tensor& got, const at::Tensor& want, const std::string& what) {
  if (got.sizes() != want.sizes() || got.scalar_type() != want.scalar_type() ||
      !at::equal(got, want)) {
    return absl::InternalError(what + ": not bit-identical to Python's");
  }
  return absl::OkStatus();
}

// Loads Python's checkpoint on this world and compares with Python's
// gathered tensors.
absl::Status LoadPython(const strategies::ClusterEnvironment& c) {
  auto ctx_or = MakeContext(c);
  if (!ctx_or.ok()) return ctx_or.status();
  auto ctx = *ctx_or;
  auto ref_v = TorchLoad(Dir() + "/py_ref.pt");
  if (!ref_v.ok()) return ref_v.status();
  const Dict& ref = ref_v->as_dict();
  const std::string folder = Dir() + "/py_sharded";
  const std::string what = absl::StrCat("[python 2 ranks -> ", ctx->world_size(), " ranks] ");

  std::shared_ptr<Net> net = MakeNet(77);
  absl::Status s;
  auto fsdp = WrapBlocks(net, ctx, &s);
  CHECK_OK(s);
  auto opt_ptr = std::make_shared<torch::optim::AdamW>(
      fsdp->parameters(), torch::optim::AdamWOptions(0.5));
  torch::optim::AdamW& opt = *opt_ptr;
  State state{{"model", fsdp->module_ptr()}, {"optimizer", opt_ptr}};
  auto remaining = strategies::FsdpLoadCheckpoint(folder, state, strategies::WrapperLookup({fsdp.get()}));
  if (!remaining.ok()) return absl::InternalError(what + remaining.status().ToString());
  const auto& group = static_cast<const torch::optim::AdamWOptions&>(opt.param_groups()[0].options());
  CHECK_OK(Check(group.lr() == 2e-2 && group.weight_decay() == 0.03, what + "param_groups"));
  const auto& params = fsdp->params();
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& p = params[i];
    CHECK_OK(Same(p.shard.detach(), p.LocalRows(ref.Find("p." + p.fqn)->as_tensor()), what + p.fqn));
    auto st = ParamState(opt, static_cast<int>(i));
    if (!st.ok()) return st.status();
    for (const char* name : {"exp_avg", "exp_avg_sq"}) {
      CHECK_OK(Same(st->Find(name)->as_tensor(),
                    p.LocalRows(ref.Find(absl::StrCat(name, ".", p.fqn))->as_tensor()),
                    absl::StrCat(what, name, ".", p.fqn)));
    }
    CHECK_OK(Same(st->Find("step")->as_tensor(), ref.Find("step." + p.fqn)->as_tensor(),
                  what + "step"));
  }
  // Training continues from it.
  CHECK_OK(TrainStep(*net, fsdp.get(), opt, 0, ctx->rank(), ctx->world_size()));

  if (ctx->world_size() == 1) {  // and into a plain module, no FSDP
    std::shared_ptr<Net> plain = MakeNet(78);
    auto popt_ptr = std::make_shared<torch::optim::AdamW>(
        plain->parameters(), torch::optim::AdamWOptions(0.5));
    State ps{{"model", plain}, {"optimizer", popt_ptr}};
    auto r = strategies::FsdpLoadCheckpoint(folder, ps, nullptr);
    if (!r.ok()) return absl::InternalError("[python -> plain] " + r.status().ToString());
    for (const auto& item : plain->named_parameters()) {
      CHECK_OK(Same(item.value().detach(), ref.Find("p." + item.key())->as_tensor(),
                    "[python -> plain] " + item.key()));
    }
  }
  return ctx->Barrier();
}

absl::Status Dispatch(const strategies::ClusterEnvironment& c) {
  const std::string which = Env("FSDP_TEST_CASE", "");
  if (which == "save") return SaveReferenceRun(c, Dir());
  if (which == "py_load") return LoadPython(c);
  return absl::InvalidArgumentError("unknown FSDP_TEST_CASE " + which);
}

int RunPython(const std::string& args) {
  const std::string cmd = absl::StrCat(g_python, " ", g_script, " ", args);
  return std::system(cmd.c_str());
}

TEST(FsdpInterop, CppCheckpointsLoadInPython) {
  ASSERT_FALSE(g_python.empty()) << "usage: fsdp_interop_test <python> <fsdp_interop.py>";
  fs::create_directories(Dir());
  setenv("FSDP_TEST_DIR", Dir().c_str(), 1);
  setenv("FSDP_TEST_CASE", "save", 1);
  absl::Status s = RunRanks(3, {{"FSDP_TEST_CASE", "save"}, {"FSDP_TEST_DIR", Dir()}}, Dispatch);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(RunPython(absl::StrCat("check_cpp ", Dir(), " 3")), 0);
}

TEST(FsdpInterop, PythonCheckpointLoadsOnOneTwoThreeRanks) {
  ASSERT_FALSE(g_python.empty()) << "usage: fsdp_interop_test <python> <fsdp_interop.py>";
  fs::create_directories(Dir());
  setenv("FSDP_TEST_DIR", Dir().c_str(), 1);
  ASSERT_EQ(RunPython(absl::StrCat("save_py ", Dir())), 0);
  for (int m = 1; m <= 3; ++m) {
    setenv("FSDP_TEST_CASE", "py_load", 1);
    absl::Status s =
        RunRanks(m, {{"FSDP_TEST_CASE", "py_load"}, {"FSDP_TEST_DIR", Dir()}}, Dispatch);
    EXPECT_TRUE(s.ok()) << "load on " << m << ": " << s;
  }
}

}  // namespace

}  // namespace fabric::testing

int main(int argc, char** argv) {
  if (getenv("RANK") != nullptr) return fabric::testing::RankMain(fabric::testing::Dispatch);
  ::testing::InitGoogleTest(&argc, argv);
  if (argc >= 3) {
    fabric::testing::g_python = argv[1];
    fabric::testing::g_script = argv[2];
  }
  return RUN_ALL_TESTS();
}
