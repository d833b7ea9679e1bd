#include "checkpoint/module_state.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/sgd.h>

#include "checkpoint/load_report.h"
#include "checkpoint/value.h"

namespace fabric {
namespace {

std::string g_python;  // argv[1]: the venv interpreter

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return std::string(dir != nullptr ? dir : "/tmp") + "/" + name;
}

// Runs `python script` and returns its stdout; fails the test on error.
std::string RunPython(const std::string& script) {
  const std::string path = TempPath("module_state_test.py");
  std::ofstream(path) << script;
  const std::string command = g_python + " " + path;
  FILE* pipe = popen(command.c_str(), "r");
  EXPECT_NE(pipe, nullptr);
  if (pipe == nullptr) return "";
  std::string out;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) out.append(buffer, n);
  EXPECT_EQ(pclose(pipe), 0) << "python failed: " << command;
  return out;
}

// Parameters and buffers registered in an order that tells Python's
// state_dict order (per module: parameters, buffers, then children) from
// LibTorch's recursive named_parameters() order.
struct NetImpl : torch::nn::Module {
  NetImpl() {
    a = register_parameter("a", at::arange(2, at::kFloat));
    fc1 = register_module("fc1", torch::nn::Linear(3, 4));
    running = register_buffer("running", at::zeros({3}));
    c = register_parameter("c", at::ones({1}));
    bn = register_module("bn", torch::nn::BatchNorm1d(4));
    seq = register_module(
        "seq", torch::nn::Sequential(torch::nn::Linear(torch::nn::LinearOptions(4, 2).bias(false)),
                                     torch::nn::ReLU(), torch::nn::Linear(2, 2)));
  }
  at::Tensor forward(const at::Tensor& x) {
    return seq->forward(bn->forward(fc1->forward(x * c))) + a.sum() + running.sum();
  }
  at::Tensor a, running, c;
  torch::nn::Linear fc1{nullptr};
  torch::nn::BatchNorm1d bn{nullptr};
  torch::nn::Sequential seq{nullptr};
};
TORCH_MODULE(Net);

constexpr char kPythonNet[] = R"py(
import torch
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.arange(2.0))
        self.fc1 = torch.nn.Linear(3, 4)
        self.register_buffer('running', torch.zeros(3))
        self.c = torch.nn.Parameter(torch.ones(1))
        self.bn = torch.nn.BatchNorm1d(4)
        self.seq = torch.nn.Sequential(torch.nn.Linear(4, 2, bias=False), torch.nn.ReLU(),
                                       torch.nn.Linear(2, 2))
for k, v in Net().state_dict().items():
    print(k, v.dtype, list(v.shape))
)py";

std::vector<std::string> Keys(const Dict& d) {
  std::vector<std::string> keys;
  for (const auto& [k, v] : d) keys.push_back(k.as_string());
  return keys;
}

at::Tensor Input() { return at::linspace(-1.0, 1.0, 5 * 3, at::kFloat).reshape({5, 3}); }

// A few SGD steps (stateless: no momentum) on fixed data.
void Train(Net& net, int steps) {
  torch::optim::SGD sgd(net->parameters(), torch::optim::SGDOptions(0.05));
  for (int i = 0; i < steps; ++i) {
    sgd.zero_grad();
    at::Tensor loss = net->forward(Input() * (i + 1)).pow(2).mean();
    loss.backward();
    sgd.step();
  }
}

// A deep copy of a state dict, as saving and loading a file would make.
Dict Snapshot(const Dict& state) {
  Dict out;
  for (const auto& [k, v] : state) out.Set(k, Value(v.as_tensor().clone()));
  return out;
}

void ExpectModulesEqual(Net& a, Net& b) {
  Dict sa = ModuleStateDict(*a), sb = ModuleStateDict(*b);
  ASSERT_EQ(Keys(sa), Keys(sb));
  for (const auto& [k, v] : sa) {
    EXPECT_TRUE(at::equal(v.as_tensor(), sb.Find(k)->as_tensor())) << k.as_string();
  }
}

TEST(ModuleStateDict, KeyOrderDtypesAndShapesMatchPython) {
  Net net;
  Dict state = ModuleStateDict(*net);
  std::string ours;
  for (const auto& [k, v] : state) {
    const at::Tensor& t = v.as_tensor();
    std::string shape = "[";
    for (int64_t i = 0; i < t.dim(); ++i) {
      shape += (i ? ", " : "") + std::to_string(t.size(i));
    }
    ours += k.as_string() + " torch." + *DtypeName(t.scalar_type()) + " " + shape + "]\n";
  }
  EXPECT_EQ(ours, RunPython(kPythonNet));
  // Spelled out as well, so a failure reads clearly.
  EXPECT_EQ(Keys(state), (std::vector<std::string>{
                             "a", "c", "running", "fc1.weight", "fc1.bias", "bn.weight",
                             "bn.bias", "bn.running_mean", "bn.running_var",
                             "bn.num_batches_tracked", "seq.0.weight", "seq.2.weight",
                             "seq.2.bias"}));
}

TEST(ModuleStateDict, ValuesAreDetachedAliasesOfTheModuleTensors) {
  Net net;
  Dict state = ModuleStateDict(*net);
  const at::Tensor& w = state.Find("fc1.weight")->as_tensor();
  EXPECT_FALSE(w.requires_grad());
  EXPECT_TRUE(net->fc1->weight.requires_grad());
  EXPECT_EQ(w.data_ptr(), net->fc1->weight.data_ptr());
  {
    c10::NoGradGuard no_grad;
    net->fc1->weight.fill_(7.0);
  }
  EXPECT_EQ(w[0][0].item<float>(), 7.0f);
}

TEST(ModuleStateDict, FilterSelectsKeys) {
  Net net;
  Dict state = ModuleStateDict(*net, [](std::string_view key) {
    return key.substr(0, 3) == "bn.";
  });
  EXPECT_EQ(Keys(state), (std::vector<std::string>{"bn.weight", "bn.bias", "bn.running_mean",
                                                   "bn.running_var", "bn.num_batches_tracked"}));
}

TEST(LoadModuleState, RoundTripContinuesTrainingBitExact) {
  at::manual_seed(1);
  Net a;
  Train(a, 3);
  Dict saved = Snapshot(ModuleStateDict(*a));
  Train(a, 3);

  at::manual_seed(2);  // different initial weights
  Net b;
  absl::StatusOr<StateLoadReport> report = LoadModuleState(*b, saved, /*strict=*/true);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_TRUE(report->ok());
  Train(b, 3);
  ExpectModulesEqual(a, b);
  EXPECT_EQ(b->bn->num_batches_tracked.item<int64_t>(), 6);
}

TEST(LoadModuleState, LoadsItsOwnStateIntoItself) {
  Net net;
  Dict before = Snapshot(ModuleStateDict(*net));
  absl::StatusOr<StateLoadReport> report = LoadModuleState(*net, ModuleStateDict(*net), true);
  ASSERT_TRUE(report.ok()) << report.status();
  for (const auto& [k, v] : ModuleStateDict(*net)) {
    EXPECT_TRUE(at::equal(v.as_tensor(), before.Find(k)->as_tensor())) << k.as_string();
  }
}

// An in-memory "file": storages by key, read by memcpy, which is only right
// when the loader keeps TensorSource's contract (contiguous CPU destination
// of the ref's dtype and shape).
struct MemoryFile {
  std::map<std::string, at::Tensor> storages;
  std::vector<void*> destinations;  // every destination the source wrote to

  Value Add(const at::Tensor& t) {
    at::Tensor c = t.contiguous().clone();
    TensorRef ref;
    ref.storage_key = std::to_string(storages.size());
    ref.dtype = c.scalar_type();
    ref.storage_numel = c.numel();
    ref.sizes = c.sizes().vec();
    ref.strides = c.strides().vec();
    storages[ref.storage_key] = c;
    return Value(ref);
  }

  TensorSource Source() {
    return [this](const TensorRef& ref, at::Tensor& dst) -> absl::Status {
      auto it = storages.find(ref.storage_key);
      if (it == storages.end()) return absl::NotFoundError("no storage " + ref.storage_key);
      EXPECT_TRUE(dst.is_contiguous());
      EXPECT_EQ(dst.scalar_type(), ref.dtype);
      EXPECT_EQ(dst.sizes().vec(), ref.sizes);
      std::memcpy(dst.data_ptr(), it->second.data_ptr(), it->second.nbytes());
      destinations.push_back(dst.data_ptr());
      return absl::OkStatus();
    };
  }
};

TEST(LoadModuleState, ReadsTensorRefsStraightIntoParametersAndConverts) {
  at::manual_seed(3);
  Net source_net;
  Train(source_net, 2);
  MemoryFile file;
  Dict state;
  for (const auto& [k, v] : ModuleStateDict(*source_net)) {
    // fc1.weight is stored as float64: it must be converted on load.
    at::Tensor t = k.as_string() == "fc1.weight" ? v.as_tensor().to(at::kDouble) : v.as_tensor();
    state.Set(k, file.Add(t));
  }
  Net net;
  absl::StatusOr<StateLoadReport> report =
      LoadModuleState(*net, state, /*strict=*/true, file.Source(), "mem.pt");
  ASSERT_TRUE(report.ok()) << report.status();
  ExpectModulesEqual(source_net, net);
  ASSERT_EQ(file.destinations.size(), state.size());
  // Same-dtype tensors were read straight into the parameter's memory.
  EXPECT_NE(std::find(file.destinations.begin(), file.destinations.end(),
                      net->fc1->bias.data_ptr()),
            file.destinations.end());
  EXPECT_EQ(std::find(file.destinations.begin(), file.destinations.end(),
                      net->fc1->weight.data_ptr()),
            file.destinations.end());
}

TEST(LoadModuleState, StrictFailureListsEveryProblemAndChangesNothing) {
  Net net;
  Dict before = Snapshot(ModuleStateDict(*net));
  Dict state = Snapshot(ModuleStateDict(*net));
  for (const auto& [k, v] : state) {
    state.Set(k, Value(at::full_like(v.as_tensor(), 3)));
  }
  ASSERT_TRUE(state.Erase(Value("a")));
  ASSERT_TRUE(state.Erase(Value("bn.running_var")));
  state.Set("extra.weight", Value(at::zeros({2})));
  state.Set("head.bias", Value(at::zeros({2})));
  state.Set("fc1.weight", Value(at::zeros({3, 4})));  // module has [4,3]
  state.Set("c", Value(at::zeros({1}, at::kComplexFloat)));
  state.Set("seq.2.bias", Value(int64_t{5}));

  absl::StatusOr<StateLoadReport> report = LoadModuleState(*net, state, /*strict=*/true,
                                                           nullptr, "/ckpt/last.pt");
  ASSERT_FALSE(report.ok());
  const std::string message(report.status().message());
  for (const char* expected :
       {"/ckpt/last.pt", "2 missing key(s)", "2 unexpected key(s)", "3 mismatch(es)", "\"a\"",
        "\"bn.running_var\"", "\"extra.weight\"", "\"head.bias\"",
        "fc1.weight: shape [3,4] in file vs [4,3] in module",
        "c: dtype complex64 in file cannot be loaded into float32 in module",
        "seq.2.bias: expected a tensor, got int"}) {
    EXPECT_NE(message.find(expected), std::string::npos) << expected << "\n" << message;
  }
  // Nothing was copied, not even the good keys.
  for (const auto& [k, v] : ModuleStateDict(*net)) {
    EXPECT_TRUE(at::equal(v.as_tensor(), before.Find(k)->as_tensor())) << k.as_string();
  }
}

TEST(LoadModuleState, NonStrictReportsMissingAndUnexpectedKeysButLoads) {
  Net net;
  Dict state = Snapshot(ModuleStateDict(*net));
  state.Set("fc1.bias", Value(at::full({4}, 2.5)));
  ASSERT_TRUE(state.Erase(Value("c")));
  state.Set("extra", Value(at::zeros({1})));
  absl::StatusOr<StateLoadReport> report = LoadModuleState(*net, state, /*strict=*/false);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_FALSE(report->ok());
  EXPECT_EQ(report->missing_keys, std::vector<std::string>{"c"});
  EXPECT_EQ(report->unexpected_keys, std::vector<std::string>{"extra"});
  EXPECT_TRUE(report->mismatches.empty());
  EXPECT_TRUE(at::equal(net->fc1->bias, at::full({4}, 2.5)));
  EXPECT_TRUE(report->ToStatus("x.pt", /*strict=*/false).ok());
  EXPECT_FALSE(report->ToStatus("x.pt", /*strict=*/true).ok());
  EXPECT_NE(report->ToString("x.pt").find("\"extra\""), std::string::npos);
}

TEST(LoadModuleState, ShapeMismatchFailsEvenWhenNotStrict) {
  Net net;
  Dict state = Snapshot(ModuleStateDict(*net));
  state.Set("bn.running_mean", Value(at::zeros({5})));
  absl::StatusOr<StateLoadReport> report = LoadModuleState(*net, state, /*strict=*/false);
  ASSERT_FALSE(report.ok());
  EXPECT_NE(report.status().message().find("bn.running_mean: shape [5] in file vs [4] in module"),
            std::string::npos)
      << report.status();
}

TEST(LoadModuleState, SourceErrorsNameTheFileAndKey) {
  Net net;
  MemoryFile file;
  Dict state;
  for (const auto& [k, v] : ModuleStateDict(*net)) state.Set(k, file.Add(v.as_tensor()));
  file.storages.erase(state.Find("bn.bias")->as_tensor_ref().storage_key);
  absl::StatusOr<StateLoadReport> report =
      LoadModuleState(*net, state, /*strict=*/true, file.Source(), "broken.pt");
  ASSERT_FALSE(report.ok());
  EXPECT_NE(report.status().message().find("broken.pt"), std::string::npos) << report.status();
  EXPECT_NE(report.status().message().find("bn.bias"), std::string::npos) << report.status();

  // A ref and no source at all.
  report = LoadModuleState(*net, state, /*strict=*/true, nullptr, "nosource.pt");
  ASSERT_FALSE(report.ok());
  EXPECT_NE(report.status().message().find("no TensorSource"), std::string::npos)
      << report.status();
}

TEST(LoadModuleState, CastsDtypesAsPythonDoes) {
  torch::nn::Linear lin(2, 2);
  Dict state;
  state.Set("weight", Value(at::tensor({1, 2, 3, 4}, at::kLong).reshape({2, 2})));
  state.Set("bias", Value(at::tensor({0.5, -0.5}, at::kDouble)));
  absl::StatusOr<StateLoadReport> report = LoadModuleState(*lin, state, true);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(lin->weight.scalar_type(), at::kFloat);
  EXPECT_TRUE(at::equal(lin->weight, at::tensor({1.f, 2.f, 3.f, 4.f}).reshape({2, 2})));
  EXPECT_TRUE(at::equal(lin->bias, at::tensor({0.5f, -0.5f})));
}

}  // namespace
}  // namespace fabric

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s PYTHON\n", argv[0]);
    return 2;
  }
  fabric::g_python = argv[1];
  return RUN_ALL_TESTS();
}
