// Fabric with FSDP end to end: ranks launched by Fabric itself (ddp_program
// --strategy=fsdp), sharded and full checkpoints resumed on other world
// sizes and loaded in a single-device program; a save filter under FSDP.
#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "fabric/fabric.h"
#include "tests/fabric_ddp/ddp_common.h"
#include "tests/fabric_ddp/program_test_util.h"

namespace fabric_test {
namespace {

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
      auto resumed = MakeModel();
      fabric::State s{{"model", resumed}, {"step", 0}};
      auto r = fabric->Load(out, s, /*strict=*/false);
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_EQ(s["step"].value().as_int(), 8);
      ExpectModelsClose(resumed, model);
    }
  }
}

// A save filter sees the value under FSDP as under DDP: the tensor this rank
// holds (a sharded parameter's shard), not None; what it rejects is not
// saved.
TEST(FabricFsdp, SaveFilterSeesTheTensors) {
  for (const std::string type : {"sharded", "full"}) {
    SCOPED_TRACE(type);
    fabric::FabricOptions o;
    o.accelerator = "cpu";
    o.strategy = "fsdp";
    o.state_dict_type = type;
    auto f = fabric::Fabric::Create(o);
    ASSERT_TRUE(f.ok()) << f.status();
    fabric::Fabric& fabric = **f;
    ASSERT_TRUE(fabric.Launch().ok());
    auto model = MakeModel();
    ASSERT_TRUE(fabric.SetupModule(model).ok());
    auto opt = MakeOptimizer(fabric.Parameters(model));
    std::map<std::string, std::vector<int64_t>> seen;
    bool saw_non_tensor = false;
    fabric::StateFilter filter;
    filter["model"] = [&](const std::string& key, const fabric::Value& value) {
      if (value.is_tensor()) {
        seen[key] = value.as_tensor().sizes().vec();
      } else {
        saw_non_tensor = true;
      }
      return key != "0.bias";
    };
    fabric::State state{{"model", model}, {"optimizer", opt}, {"step", 3}};
    const std::string path = Tmp("fsdp_filtered_" + type);
    absl::Status saved = fabric.Save(path, state, filter);
    ASSERT_TRUE(saved.ok()) << saved;
    EXPECT_FALSE(saw_non_tensor);
    // One process: each shard is the whole parameter.
    EXPECT_EQ(seen["0.weight"], (std::vector<int64_t>{16, 6}));
    EXPECT_EQ(seen["0.bias"], (std::vector<int64_t>{16}));
    EXPECT_EQ(seen["2.weight"], (std::vector<int64_t>{3, 16}));
    EXPECT_EQ(seen.size(), 4u);

    absl::StatusOr<fabric::Dict> all = fabric.Load(path);
    ASSERT_TRUE(all.ok()) << all.status();
    const fabric::Value* m = all->Find("model");
    ASSERT_NE(m, nullptr);
    ASSERT_TRUE(m->is_dict());
    EXPECT_FALSE(m->as_dict().Contains("0.bias"));
    ASSERT_TRUE(m->as_dict().Contains("0.weight"));
    for (const auto& p : fabric.Fsdp(*model)->params()) {
      if (p.fqn == "0.weight") {
        EXPECT_TRUE(at::equal(m->as_dict().Find("0.weight")->as_tensor(), p.shard.detach()));
      }
    }
  }
}

}  // namespace
}  // namespace fabric_test

int main(int argc, char** argv) { return fabric_test::ProgramTestMain(argc, argv); }
