#include "tests/fabric_ddp/program_test_util.h"

#include <cstdio>
#include <cstdlib>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "tests/fabric_ddp/ddp_common.h"

namespace fabric_test {
namespace {

std::string g_program;

}  // namespace

std::string Tmp(const std::string& name) {
  return std::string(std::getenv("TEST_TMPDIR")) + "/" + name;
}

std::string ProgramCommand(const std::string& args) { return absl::StrCat(g_program, " ", args); }

void RunProgram(const std::string& args) {
  const std::string cmd = ProgramCommand(args);
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
}

void Reference(torch::nn::Sequential& model, std::shared_ptr<torch::optim::SGD>& opt,
               int64_t first_step, int steps) {
  for (int64_t step = first_step; step < first_step + steps; ++step) {
    auto [x, y] = GlobalBatch(step);
    opt->zero_grad();
    Loss(model, x, y).backward();
    opt->step();
  }
}

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

void LoadFiveStepsAndCompare(fabric::Fabric& fabric, const std::string& path,
                             torch::nn::Sequential& model,
                             std::shared_ptr<torch::optim::SGD>& opt) {
  model = MakeModel();
  opt = MakeOptimizer(model);
  fabric::State state{{"model", model}, {"optimizer", opt}, {"step", 0}};
  auto rest = fabric.Load(path, state);
  ASSERT_TRUE(rest.ok()) << rest.status();
  EXPECT_EQ(state["step"].value().as_int(), 5);
  auto ref = MakeModel();
  auto ref_opt = MakeOptimizer(ref);
  Reference(ref, ref_opt, 0, 5);
  ExpectModelsClose(model, ref);
}

int ProgramTestMain(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DDP_PROGRAM\n", argv[0]);
    return 2;
  }
  g_program = argv[1];
  return RUN_ALL_TESTS();
}

}  // namespace fabric_test
