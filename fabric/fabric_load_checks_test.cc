// Loads through Fabric are checked and all or nothing: a checkpoint with one
// damaged byte is refused naming the file and key, and the live model,
// optimizer and values hold exactly what they held before the call.
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/adam.h>

#include "checkpoint/optimizer_state.h"
#include "checkpoint/torch_save.h"
#include "fabric/fabric.h"

namespace fabric {
namespace {

std::string TmpPath(const std::string& name) {
  return std::string(std::getenv("TEST_TMPDIR")) + "/" + name;
}

std::unique_ptr<Fabric> CpuFabric(bool verify = true, bool all_or_nothing = true) {
  FabricOptions options;
  options.accelerator = "cpu";
  options.verify_checksums = verify;
  options.all_or_nothing_loads = all_or_nothing;
  auto f = Fabric::Create(options);
  EXPECT_TRUE(f.ok()) << f.status();
  return *std::move(f);
}

torch::nn::Sequential Net() {
  return torch::nn::Sequential(torch::nn::Linear(4, 8), torch::nn::Linear(8, 2));
}

void Step(torch::nn::Sequential& net, torch::optim::Optimizer& opt) {
  opt.zero_grad();
  net->forward(torch::ones({3, 4})).pow(2).sum().backward();
  opt.step();
}

// Every tensor of the model and the optimizer, as bytes.
std::vector<at::Tensor> Snapshot(torch::nn::Sequential& net, torch::optim::Optimizer& opt) {
  std::vector<at::Tensor> out;
  for (const auto& p : net->named_parameters()) out.push_back(p.value().detach().clone());
  absl::StatusOr<Dict> d = OptimizerStateDict(opt);
  EXPECT_TRUE(d.ok());
  for (const auto& [idx, per_param] : d->Find("state")->as_dict()) {
    for (const auto& [k, v] : per_param.as_dict()) {
      if (v.is_tensor()) out.push_back(v.as_tensor().clone());
    }
  }
  return out;
}

bool Same(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!a[i].sizes().equals(b[i].sizes()) || !at::equal(a[i], b[i])) return false;
  }
  return true;
}

// Flips a byte inside the last storage record of the file (the optimizer's
// state, read after the model's weights were already read into place), or
// the first (the model's first weight); returns its key.
std::string FlipStorage(const std::string& path, bool last) {
  absl::StatusOr<std::unique_ptr<TorchFile>> f = TorchFile::Open(path);
  EXPECT_TRUE(f.ok()) << f.status();
  uint64_t at = 0, chosen = 0;
  std::string key;
  for (const ZipReader::Entry& e : (*f)->zip().entries()) {
    if (e.name.rfind("data/", 0) != 0 || e.size == 0) continue;
    if (key.empty() || (last ? e.data_offset > chosen : e.data_offset < chosen)) {
      chosen = e.data_offset;
      at = e.data_offset + e.size / 2;
      key = (*f)->KeyOf(e.name.substr(5));
    }
  }
  std::fstream io(path, std::ios::in | std::ios::out | std::ios::binary);
  io.seekg(static_cast<std::streamoff>(at));
  char c = 0;
  io.read(&c, 1);
  c = static_cast<char>(c ^ 0x01);
  io.seekp(static_cast<std::streamoff>(at));
  io.write(&c, 1);
  return key;
}
std::string FlipLastStorage(const std::string& path) { return FlipStorage(path, true); }

// A set-up model and Adam after one step, saved (step 1) to `name`.
struct Saved {
  std::unique_ptr<Fabric> fabric;
  torch::nn::Sequential net = Net();
  std::shared_ptr<torch::optim::Adam> opt;
  std::string path;
};

Saved TrainOneStepAndSave(std::unique_ptr<Fabric> fabric, const std::string& name) {
  Saved s;
  s.fabric = std::move(fabric);
  EXPECT_TRUE(s.fabric->SetupModule(s.net.ptr()).ok());
  s.opt = std::make_shared<torch::optim::Adam>(s.net->parameters(), 1e-2);
  Step(s.net, *s.opt);
  s.path = TmpPath(name);
  State saved{{"model", s.net.ptr()}, {"optimizer", s.opt}, {"step", 1}};
  EXPECT_TRUE(s.fabric->Save(s.path, saved).ok());
  return s;
}

TEST(FabricLoadChecks, RefusedLoadLeavesModelAndOptimizerAsTheyWere) {
  Saved t = TrainOneStepAndSave(CpuFabric(), "flipped.pt");
  auto& [fabric, net, opt, path] = t;
  const std::string key = FlipLastStorage(path);
  ASSERT_FALSE(key.empty());

  // Train on, so that the live state differs from the file everywhere.
  Step(net, *opt);
  Step(net, *opt);
  const std::vector<at::Tensor> before = Snapshot(net, *opt);
  State state{{"model", net.ptr()}, {"optimizer", opt}, {"step", 3}};
  absl::StatusOr<Dict> rest = fabric->Load(path, state);
  ASSERT_FALSE(rest.ok());
  EXPECT_EQ(rest.status().code(), absl::StatusCode::kDataLoss) << rest.status();
  EXPECT_NE(rest.status().message().find(path), std::string::npos) << rest.status();
  EXPECT_NE(rest.status().message().find("'" + key + "'"), std::string::npos) << rest.status();
  EXPECT_TRUE(Same(Snapshot(net, *opt), before)) << "a refused load changed the live state";
  EXPECT_EQ(state["step"].value().as_int(), 3);

  // LoadRaw of the optimizer's part alone is refused the same way.
  const std::string raw = TmpPath("raw_opt.pt");
  absl::StatusOr<Dict> opt_dict = OptimizerStateDict(*opt);
  ASSERT_TRUE(opt_dict.ok());
  ASSERT_TRUE(TorchSave(raw, Value(*opt_dict)).ok());
  FlipLastStorage(raw);
  Step(net, *opt);
  const std::vector<at::Tensor> before_raw = Snapshot(net, *opt);
  EXPECT_FALSE(fabric->LoadRaw(raw, *opt).ok());
  EXPECT_TRUE(Same(Snapshot(net, *opt), before_raw));

  // With the checks off the damaged file loads (the caller asked for it).
  auto unchecked = CpuFabric(/*verify=*/false);
  State again{{"model", net.ptr()}, {"optimizer", opt}, {"step", 3}};
  EXPECT_TRUE(unchecked->Load(path, again).ok());
  EXPECT_FALSE(Same(Snapshot(net, *opt), before_raw));
}

// All-or-nothing loads read the optimizer first, whatever the entries'
// order (its state goes into new tensors while the model's copy is taken),
// and the model's record is refused after it: the optimizer's new state is
// dropped and its own, kept without a copy, put back.
TEST(FabricLoadChecks, AnOptimizerLoadedBeforeTheRefusedRecordIsPutBack) {
  for (const bool optimizer_entry_first : {true, false}) {
    SCOPED_TRACE(optimizer_entry_first ? "optimizer entry first" : "model entry first");
    Saved t = TrainOneStepAndSave(CpuFabric(), optimizer_entry_first ? "flipped_model_a.pt"
                                                                     : "flipped_model_b.pt");
    auto& [fabric, net, opt, path] = t;
    const std::string key = FlipStorage(path, /*last=*/false);
    ASSERT_NE(key.find("model"), std::string::npos) << key;
    Step(net, *opt);
    Step(net, *opt);
    const std::vector<at::Tensor> before = Snapshot(net, *opt);
    State state = optimizer_entry_first ? State{{"optimizer", opt}, {"model", net.ptr()}}
                                        : State{{"model", net.ptr()}, {"optimizer", opt}};
    absl::StatusOr<Dict> rest = fabric->Load(path, state);
    ASSERT_FALSE(rest.ok());
    EXPECT_EQ(rest.status().code(), absl::StatusCode::kDataLoss) << rest.status();
    EXPECT_NE(rest.status().message().find("'" + key + "'"), std::string::npos) << rest.status();
    EXPECT_TRUE(Same(Snapshot(net, *opt), before)) << "a refused load changed the live state";
  }
}

// all_or_nothing_loads = false: no copy is taken, so a load refused at the
// optimizer's record still fails, naming it, but the model weights read
// before it stay loaded.
TEST(FabricLoadChecks, WithoutAllOrNothingARefusedLoadFailsAndIsNotUndone) {
  Saved t = TrainOneStepAndSave(CpuFabric(/*verify=*/true, /*all_or_nothing=*/false),
                                "flipped_no_snapshot.pt");
  auto& [fabric, net, opt, path] = t;
  std::vector<at::Tensor> saved_weights;
  for (const auto& p : net->parameters()) saved_weights.push_back(p.detach().clone());
  const std::string key = FlipLastStorage(path);
  Step(net, *opt);
  State state{{"model", net.ptr()}, {"optimizer", opt}, {"step", 2}};
  absl::StatusOr<Dict> rest = fabric->Load(path, state);
  ASSERT_FALSE(rest.ok());
  EXPECT_EQ(rest.status().code(), absl::StatusCode::kDataLoss) << rest.status();
  EXPECT_NE(rest.status().message().find("'" + key + "'"), std::string::npos) << rest.status();
  std::vector<at::Tensor> now;
  for (const auto& p : net->parameters()) now.push_back(p.detach().clone());
  EXPECT_TRUE(Same(now, saved_weights)) << "the weights read before the refused record";
}

// An intact checkpoint still loads in full (the snapshot is dropped).
TEST(FabricLoadChecks, IntactLoadRestoresTheSavedState) {
  Saved t = TrainOneStepAndSave(CpuFabric(), "intact.pt");
  auto& [fabric, net, opt, path] = t;
  const std::vector<at::Tensor> at_save = Snapshot(net, *opt);
  Step(net, *opt);
  State state{{"model", net.ptr()}, {"optimizer", opt}, {"step", 0}};
  ASSERT_TRUE(fabric->Load(path, state).ok());
  EXPECT_TRUE(Same(Snapshot(net, *opt), at_save));
  EXPECT_EQ(state["step"].value().as_int(), 1);
}

}  // namespace
}  // namespace fabric
