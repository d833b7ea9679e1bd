#include "fabric/fabric.h"

#include "checkpoint/module_state.h"
#include "strategies/strategy.h"

#include <cstdlib>
#include <string>

#include <gtest/gtest.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/adam.h>
#include <torch/optim/sgd.h>

namespace fabric {
namespace {

std::string TmpPath(const std::string& name) {
  return std::string(std::getenv("TEST_TMPDIR")) + "/" + name;
}

std::unique_ptr<Fabric> CpuFabric() {
  FabricOptions options;
  options.accelerator = "cpu";
  auto f = Fabric::Create(options);
  EXPECT_TRUE(f.ok()) << f.status();
  return *std::move(f);
}

torch::nn::Sequential Net(int hidden = 8) {
  return torch::nn::Sequential(torch::nn::Linear(4, hidden), torch::nn::Linear(hidden, 2));
}

void Step(torch::nn::Sequential& net, torch::optim::Optimizer& opt) {
  opt.zero_grad();
  net->forward(torch::ones({3, 4})).pow(2).sum().backward();
  opt.step();
}

TEST(Fabric, RejectsBadOptionsNamingTheOption) {
  FabricOptions o;
  o.accelerator = "tpu";
  auto f = Fabric::Create(o);
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("accelerator"), std::string::npos);
  o = FabricOptions();
  o.devices = -1;  // 0 means "from the launcher's environment" (multi-node launches)
  f = Fabric::Create(o);
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("devices"), std::string::npos);
  o = FabricOptions();
  o.precision = "7-bit";
  f = Fabric::Create(o);
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("precision"), std::string::npos);
}

// A Fabric of several processes has no strategy before Launch(): asking for
// it is an error naming Launch() (it used to dereference null).
TEST(Fabric, StrategyBeforeLaunchIsAnErrorForSeveralProcesses) {
  FabricOptions o;
  o.accelerator = "cpu";
  o.devices = 2;
  auto f = Fabric::Create(o);
  ASSERT_TRUE(f.ok()) << f.status();
  absl::StatusOr<strategies::Strategy*> s = (*f)->strategy();
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(std::string(s.status().message()).find("Launch()"), std::string::npos) << s.status();

  // A single-device Fabric makes its strategy on first use.
  std::unique_ptr<Fabric> cpu = CpuFabric();
  absl::StatusOr<strategies::Strategy*> single = cpu->strategy();
  ASSERT_TRUE(single.ok()) << single.status();
  EXPECT_EQ((*single)->name(), "single_device");
}

TEST(Fabric, SaveLoadRestoresModulesOptimizersAndValuesAndReturnsRemainder) {
  auto fabric = CpuFabric();
  auto net = Net();
  auto opt = std::make_shared<torch::optim::Adam>(net->parameters(), torch::optim::AdamOptions(0.1));
  ASSERT_TRUE(fabric->Setup(net, opt).ok());
  for (int i = 0; i < 3; ++i) Step(net, *opt);
  State state{{"model", net}, {"optimizer", opt}, {"step", 3}, {"name", "run-1"},
              {"extra", Dict{{"lr_scale", 0.5}}}};
  const std::string path = TmpPath("full.pt");
  ASSERT_TRUE(fabric->Save(path, state).ok());

  auto net2 = Net();
  auto opt2 = std::make_shared<torch::optim::Adam>(net2->parameters(), torch::optim::AdamOptions(0.1));
  State restored{{"model", net2}, {"optimizer", opt2}, {"step", 0}};
  auto rest = fabric->Load(path, restored);
  ASSERT_TRUE(rest.ok()) << rest.status();
  EXPECT_EQ(restored["step"].value().as_int(), 3);
  ASSERT_EQ(rest->size(), 2u);
  EXPECT_EQ(rest->Find("name")->as_string(), "run-1");
  EXPECT_DOUBLE_EQ(rest->Find("extra")->as_dict().Find("lr_scale")->as_float(), 0.5);

  // Training continues identically.
  Step(net, *opt);
  Step(net2, *opt2);
  auto p1 = net->parameters();
  auto p2 = net2->parameters();
  for (size_t i = 0; i < p1.size(); ++i) EXPECT_TRUE(p1[i].equal(p2[i])) << i;

  // Load(path) returns everything, modules as state dicts.
  auto all = fabric->Load(path);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_TRUE(all->Find("model")->as_dict().Contains("0.weight"));
  EXPECT_TRUE(all->Find("optimizer")->as_dict().Contains("param_groups"));
}

TEST(Fabric, StrictLoadListsEveryMissingKey) {
  auto fabric = CpuFabric();
  auto net = Net();
  const std::string path = TmpPath("partial.pt");
  ASSERT_TRUE(fabric->Save(path, State{{"model", net}}).ok());
  auto net2 = Net();
  State want{{"model", net2}, {"optimizer", Value()}, {"epoch", 0}};
  auto strict = fabric->Load(path, want, /*strict=*/true);
  ASSERT_FALSE(strict.ok());
  EXPECT_NE(strict.status().message().find("optimizer"), std::string::npos) << strict.status();
  EXPECT_NE(strict.status().message().find("epoch"), std::string::npos) << strict.status();
  // Non-strict loads what is there and leaves the rest alone.
  auto loose = fabric->Load(path, want, /*strict=*/false);
  ASSERT_TRUE(loose.ok()) << loose.status();
  EXPECT_EQ(want["epoch"].value().as_int(), 0);
  EXPECT_TRUE(net2[0]->as<torch::nn::Linear>()->weight.equal(net[0]->as<torch::nn::Linear>()->weight));
}

TEST(Fabric, StrictModuleMismatchReportsAllProblems) {
  auto fabric = CpuFabric();
  const std::string path = TmpPath("mismatch.pt");
  ASSERT_TRUE(fabric->Save(path, State{{"model", Net(8)}}).ok());
  // Same names, other shapes; plus a module with an extra layer.
  auto other = torch::nn::Sequential(torch::nn::Linear(4, 5), torch::nn::Linear(5, 2),
                                     torch::nn::Linear(2, 2));
  State want{{"model", other}};
  auto r = fabric->Load(path, want);
  ASSERT_FALSE(r.ok());
  const std::string msg(r.status().message());
  for (const char* key : {"0.weight", "0.bias", "1.weight", "2.weight", "2.bias"}) {
    EXPECT_NE(msg.find(key), std::string::npos) << key << " not in: " << msg;
  }
}

TEST(Fabric, FilterKeepsOnlyAcceptedKeys) {
  auto fabric = CpuFabric();
  auto net = Net();
  const std::string path = TmpPath("filtered.pt");
  StateFilter filter{{"model", [](const std::string& key, const Value&) {
                        return key.find("weight") != std::string::npos;
                      }}};
  ASSERT_TRUE(fabric->Save(path, State{{"model", net}, {"step", 1}}, filter).ok());
  auto all = fabric->Load(path);
  ASSERT_TRUE(all.ok()) << all.status();
  const Dict& model = all->Find("model")->as_dict();
  EXPECT_TRUE(model.Contains("0.weight"));
  EXPECT_TRUE(model.Contains("1.weight"));
  EXPECT_FALSE(model.Contains("0.bias"));
  // A filter for an entry that does not exist is a usage error.
  StateFilter wrong{{"modle", [](const std::string&, const Value&) { return true; }}};
  EXPECT_FALSE(fabric->Save(path, State{{"model", net}}, wrong).ok());
}

TEST(Fabric, LoadRawRestoresABareStateDict) {
  auto fabric = CpuFabric();
  auto net = Net();
  const std::string path = TmpPath("raw.pt");
  ASSERT_TRUE(TorchSave(path, Value(ModuleStateDict(*net))).ok());
  auto net2 = Net();
  ASSERT_TRUE(fabric->LoadRaw(path, *net2).ok());
  auto p1 = net->parameters();
  auto p2 = net2->parameters();
  for (size_t i = 0; i < p1.size(); ++i) EXPECT_TRUE(p1[i].equal(p2[i])) << i;
  auto bigger = Net(16);
  absl::Status s = fabric->LoadRaw(path, *bigger);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("raw.pt"), std::string::npos) << s;
}

}  // namespace
}  // namespace fabric
