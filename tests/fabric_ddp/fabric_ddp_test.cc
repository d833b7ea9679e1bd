// Fabric with DDP end to end: real ranks in separate processes launched by
// Fabric itself, checkpoints saved on N ranks and resumed on M ranks and on a
// single device, compared with single-process training on the global batch.
#include <cstdlib>
#include <string>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "fabric/fabric.h"
#include "tests/fabric_ddp/ddp_common.h"
#include "tests/fabric_ddp/program_test_util.h"

namespace fabric_test {
namespace {

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
    auto resumed = MakeModel();
    fabric::State s{{"model", resumed}, {"step", 0}};
    auto r = fabric->Load(out, s);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(s["step"].value().as_int(), 8);
    ExpectModelsClose(resumed, model);
  }
}

TEST(FabricDdp, FailedRankIsReportedAndNothingHangs) {
  // A resume from a missing file fails on every rank; the launching process
  // reports it and exits non-zero rather than hanging.
  const std::string cmd = ProgramCommand(absl::StrCat(
      "--devices=2 --steps=1 --resume=", Tmp("missing.pt"), " --out=", Tmp("never.pt")));
  EXPECT_NE(std::system(cmd.c_str()), 0);
}

}  // namespace
}  // namespace fabric_test

int main(int argc, char** argv) { return fabric_test::ProgramTestMain(argc, argv); }
