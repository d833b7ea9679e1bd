// Fabric with DDP end to end: real ranks in separate processes launched by
// Fabric itself, checkpoints saved on N ranks and resumed on M ranks and on a
// single device, compared with single-process training on the global batch.
#include <cstdlib>
#include <string>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "checkpoint/torch_save.h"
#include "fabric/fabric.h"
#include "tests/fabric_ddp/ddp_common.h"

namespace {

std::string g_program;

std::string Tmp(const std::string& name) { return std::string(std::getenv("TEST_TMPDIR")) + "/" + name; }

void RunProgram(const std::string& args) {
  const std::string cmd = absl::StrCat(g_program, " ", args);
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
}

// Single-process training on the whole global batch from `ckpt` (or from
// scratch), the reference DDP must match.
void Reference(torch::nn::Sequential& model, std::shared_ptr<torch::optim::SGD>& opt,
               int64_t first_step, int steps) {
  for (int64_t step = first_step; step < first_step + steps; ++step) {
    auto [x, y] = fabric_test::GlobalBatch(step);
    opt->zero_grad();
    fabric_test::Loss(model, x, y).backward();
    opt->step();
  }
}

// DDP averages the ranks' mean losses' gradients where the reference takes
// the mean over the global batch: equal in exact arithmetic, different only
// in float32 summation order, hence a tolerance of a few ulps times the steps.
void ExpectModelsClose(torch::nn::Sequential& a, torch::nn::Sequential& b) {
  auto pa = a->named_parameters();
  auto pb = b->named_parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (size_t i = 0; i < pa.size(); ++i) {
    EXPECT_TRUE(at::allclose(pa[i].value(), pb[i].value(), 1e-5, 1e-6))
        << pa[i].key() << " max diff " << (pa[i].value() - pb[i].value()).abs().max().item<float>();
  }
}

std::unique_ptr<fabric::Fabric> SingleDevice() {
  fabric::FabricOptions o;
  o.accelerator = "cpu";
  return fabric::Fabric::Create(o).value();
}

// Loads `path` (saved after 5 steps) into a new model and optimizer in a
// single-device Fabric and checks it against 5 steps of single-process
// training; the loaded model and optimizer come back in `model` and `opt`.
void LoadFiveStepsAndCompare(fabric::Fabric& fabric, const std::string& path,
                             torch::nn::Sequential& model,
                             std::shared_ptr<torch::optim::SGD>& opt) {
  model = fabric_test::MakeModel();
  opt = fabric_test::MakeOptimizer(model);
  fabric::State state{{"model", model}, {"optimizer", opt}, {"step", 0}};
  auto rest = fabric.Load(path, state);
  ASSERT_TRUE(rest.ok()) << rest.status();
  EXPECT_EQ(state["step"].value().as_int(), 5);
  auto ref = fabric_test::MakeModel();
  auto ref_opt = fabric_test::MakeOptimizer(ref);
  Reference(ref, ref_opt, 0, 5);
  ExpectModelsClose(model, ref);
}

TEST(FabricDdp, SaveOnFourResumeOnOneTwoAndThree) {
  const std::string first = Tmp("ddp4.pt");
  RunProgram(absl::StrCat("--devices=4 --steps=5 --out=", first));

  // The file is an ordinary single-device checkpoint of the reference state.
  auto fabric = SingleDevice();
  torch::nn::Sequential model;
  std::shared_ptr<torch::optim::SGD> opt;
  LoadFiveStepsAndCompare(*fabric, first, model, opt);
  if (HasFatalFailure()) return;
  // No "module." prefixes: the keys are the plain module's.
  auto all = fabric->Load(first);
  ASSERT_TRUE(all.ok());
  EXPECT_TRUE(all->Find("model")->as_dict().Contains("0.weight"));

  // Resume on 1, 2 and 3 ranks: all continue like the single process would.
  Reference(model, opt, 5, 3);
  for (int m : {1, 2, 3}) {
    SCOPED_TRACE(m);
    const std::string out = Tmp(absl::StrCat("resumed_on_", m, ".pt"));
    RunProgram(absl::StrCat("--devices=", m, " --steps=3 --resume=", first, " --out=", out));
    auto resumed = fabric_test::MakeModel();
    fabric::State s{{"model", resumed}, {"step", 0}};
    auto r = fabric->Load(out, s);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(s["step"].value().as_int(), 8);
    ExpectModelsClose(resumed, model);
  }
}

// FSDP through Fabric: sharded (DCP folder) and full (one file) checkpoints
// saved on 2 ranks resume on 1 and 3 FSDP ranks, and load in a single-device
// program without any process group.
TEST(FabricFsdp, SavesShardedAndFullAndResumesOnOtherWorldSizes) {
  for (const std::string type : {"sharded", "full"}) {
    SCOPED_TRACE(type);
    const std::string first = Tmp("fsdp2_" + type + (type == "full" ? ".pt" : ""));
    RunProgram(absl::StrCat("--strategy=fsdp --devices=2 --steps=5 --state_dict_type=", type,
                            " --out=", first));
    auto fabric = SingleDevice();
    torch::nn::Sequential model;
    std::shared_ptr<torch::optim::SGD> opt;
    LoadFiveStepsAndCompare(*fabric, first, model, opt);
    if (HasFatalFailure()) return;

    Reference(model, opt, 5, 3);
    for (int m : {1, 3}) {
      SCOPED_TRACE(m);
      const std::string out = Tmp(absl::StrCat("fsdp_resumed_", type, "_", m));
      RunProgram(absl::StrCat("--strategy=fsdp --devices=", m, " --steps=3 --resume=", first,
                              " --state_dict_type=", type, " --out=", out));
      auto resumed = fabric_test::MakeModel();
      fabric::State s{{"model", resumed}, {"step", 0}};
      auto r = fabric->Load(out, s, /*strict=*/false);
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_EQ(s["step"].value().as_int(), 8);
      ExpectModelsClose(resumed, model);
    }
  }
}

TEST(FabricDdp, FailedRankIsReportedAndNothingHangs) {
  // A resume from a missing file fails on every rank; the launching process
  // reports it and exits non-zero rather than hanging.
  const std::string cmd = absl::StrCat(g_program, " --devices=2 --steps=1 --resume=",
                                       Tmp("missing.pt"), " --out=", Tmp("never.pt"));
  EXPECT_NE(std::system(cmd.c_str()), 0);
}

}  // namespace

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DDP_PROGRAM\n", argv[0]);
    return 2;
  }
  g_program = argv[1];
  return RUN_ALL_TESTS();
}
