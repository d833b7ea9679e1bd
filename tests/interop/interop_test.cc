// Checkpoints cross between C++ and Python in both directions: the files load
// bit-exact on the other side, models and optimizers restore there, and
// training continues to the same parameters. Runs the real Python torch and
// Lightning from the project's virtual environment.
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "checkpoint/torch_save.h"
#include "fabric/fabric.h"

namespace fabric {
namespace {

std::string g_python, g_make_script, g_check_script;

std::string TmpDir() { return std::getenv("TEST_TMPDIR"); }

void RunPython(const std::string& script, const std::string& args) {
  const std::string cmd = absl::StrCat(g_python, " ", script, " ", args);
  ASSERT_EQ(std::system(cmd.c_str()), 0) << "failed: " << cmd;
}

torch::nn::Sequential MakeModel() {
  return torch::nn::Sequential(torch::nn::Linear(4, 8), torch::nn::ReLU(),
                               torch::nn::Linear(8, 2));
}

// The same optimizers and hyperparameters as interop_common.py.
std::shared_ptr<torch::optim::Optimizer> MakeOptimizer(const std::string& name,
                                                       torch::nn::Sequential& m) {
  if (name == "sgd") {
    return std::make_shared<torch::optim::SGD>(m->parameters(),
                                               torch::optim::SGDOptions(0.05).momentum(0.9));
  }
  if (name == "adam") {
    return std::make_shared<torch::optim::Adam>(
        m->parameters(), torch::optim::AdamOptions(0.01).weight_decay(0.01));
  }
  return std::make_shared<torch::optim::AdamW>(m->parameters(),
                                               torch::optim::AdamWOptions(0.01).weight_decay(0.1));
}

void Train(torch::nn::Sequential& m, torch::optim::Optimizer& opt, const at::Tensor& x,
           const at::Tensor& y, int steps) {
  for (int i = 0; i < steps; ++i) {
    opt.zero_grad();
    (m->forward(x) - y).pow(2).mean().backward();
    opt.step();
  }
}

std::unique_ptr<Fabric> CpuFabric() {
  FabricOptions options;
  options.accelerator = "cpu";
  return Fabric::Create(options).value();
}

// LibTorch's and Python's single-tensor optimizer updates are the same
// formulas with a few operations ordered differently (e.g. Python's Adam uses
// lerp_ for the first moment where LibTorch uses mul_ + add_), so parameters
// after resumed steps agree to float32 rounding, not bit for bit.
void ExpectClose(const at::Tensor& a, const at::Tensor& b, const std::string& what) {
  ASSERT_EQ(a.sizes(), b.sizes()) << what;
  EXPECT_TRUE(at::allclose(a, b, /*rtol=*/1e-5, /*atol=*/1e-6))
      << what << ": max diff " << (a - b).abs().max().item<double>();
}

const char* kOptimizers[] = {"sgd", "adam", "adamw"};

TEST(Interop, PythonCheckpointsLoadInCpp) {
  RunPython(g_make_script, TmpDir());
  auto fabric = CpuFabric();
  const std::string path = TmpDir() + "/python_ckpt.pt";
  auto expected = TorchLoad(TmpDir() + "/python_expected.pt");
  ASSERT_TRUE(expected.ok()) << expected.status();

  for (const char* name : kOptimizers) {
    SCOPED_TRACE(name);
    auto model = MakeModel();
    auto opt = MakeOptimizer(name, model);
    State state{{absl::StrCat("model_", name), model}, {absl::StrCat("optimizer_", name), opt}};
    auto rest = fabric->Load(path, state);
    ASSERT_TRUE(rest.ok()) << rest.status();
    EXPECT_EQ(rest->Find("step")->as_int(), 3);
    const at::Tensor x = rest->Find("x")->as_tensor();
    const at::Tensor y = rest->Find("y")->as_tensor();
    Train(model, *opt, x, y, 2);
    for (const auto& item : model->named_parameters()) {
      const Value* want = expected->as_dict().Find(absl::StrCat(name, ".", item.key()));
      ASSERT_NE(want, nullptr) << item.key();
      ExpectClose(item.value(), want->as_tensor(), item.key());
    }
  }

  // Every dtype, views and plain values, bit-exact against the raw bytes
  // Python wrote beside the checkpoint.
  auto all = fabric->Load(path);
  ASSERT_TRUE(all.ok()) << all.status();
  const Dict& misc = all->Find("misc")->as_dict();
  std::ifstream manifest(TmpDir() + "/python_misc.txt");
  std::ifstream raw(TmpDir() + "/python_misc.bin", std::ios::binary);
  std::string line;
  int checked = 0;
  while (std::getline(manifest, line)) {
    std::vector<std::string> f = absl::StrSplit(line, ' ');
    ASSERT_EQ(f.size(), 5u) << line;
    SCOPED_TRACE(f[0]);
    const Value* v = misc.Find(f[0]);
    ASSERT_NE(v, nullptr);
    const at::Tensor t = v->as_tensor().contiguous();
    EXPECT_EQ(DtypeName(t.scalar_type()).value_or("?"), f[1]);
    std::vector<std::string> dims;
    for (int64_t d : t.sizes()) dims.push_back(std::to_string(d));
    EXPECT_EQ(dims.empty() ? "-" : absl::StrJoin(dims, ","), f[2]);
    std::string bytes(std::stoull(f[4]), '\0');
    raw.seekg(std::stoll(f[3]));
    raw.read(bytes.data(), bytes.size());
    ASSERT_EQ(static_cast<size_t>(t.numel() * t.element_size()), bytes.size());
    EXPECT_EQ(0, std::memcmp(t.data_ptr(), bytes.data(), bytes.size()));
    ++checked;
  }
  EXPECT_EQ(checked, 16);
  EXPECT_TRUE(misc.Find("view_t")->as_tensor().storage().is_alias_of(
      misc.Find("base")->as_tensor().storage()));
  EXPECT_EQ(misc.Find("big_int")->as_int(), int64_t{1} << 40);
  EXPECT_EQ(misc.Find("neg")->as_int(), -7);
  EXPECT_EQ(misc.Find("unicode")->as_string(), "h\xc3\xa9llo \xe2\x9c\x93");
  const auto& nested = misc.Find("nested")->items();
  ASSERT_EQ(nested.size(), 7u);
  EXPECT_EQ(nested[0].as_int(), 1);
  EXPECT_EQ(nested[1].as_float(), 2.5);
  EXPECT_EQ(nested[2].as_string(), "str");
  EXPECT_TRUE(nested[3].is_none());
  EXPECT_TRUE(nested[4].as_bool());
  EXPECT_TRUE(nested[5].is_tuple());
  EXPECT_EQ(nested[6].as_dict().Find("k")->items()[1].as_int(), 8);

  // A bare state dict, through LoadRaw.
  auto model = MakeModel();
  ASSERT_TRUE(fabric->LoadRaw(TmpDir() + "/python_raw_state_dict.pt", *model).ok());
  auto raw_sd = TorchLoad(TmpDir() + "/python_raw_state_dict.pt");
  ASSERT_TRUE(raw_sd.ok());
  for (const auto& item : model->named_parameters()) {
    EXPECT_TRUE(item.value().equal(raw_sd->as_dict().Find(item.key())->as_tensor())) << item.key();
  }

  // Lightning Fabric's save.
  auto lmodel = MakeModel();
  auto lopt = MakeOptimizer("adamw", lmodel);
  State lstate{{"model", lmodel}, {"optimizer", lopt}, {"epoch", 0}};
  auto lrest = fabric->Load(TmpDir() + "/lightning_ckpt.pt", lstate);
  ASSERT_TRUE(lrest.ok()) << lrest.status();
  EXPECT_EQ(lstate["epoch"].value().as_int(), 4);
}

TEST(Interop, CppCheckpointsLoadInPython) {
  auto fabric = CpuFabric();
  torch::manual_seed(11);
  const at::Tensor x = torch::randn({16, 4});
  const at::Tensor y = torch::randn({16, 2});
  State state{{"step", 3}, {"x", x}, {"y", y}};
  std::vector<torch::nn::Sequential> models;
  std::vector<std::shared_ptr<torch::optim::Optimizer>> opts;
  for (const char* name : kOptimizers) {
    models.push_back(MakeModel());
    opts.push_back(MakeOptimizer(name, models.back()));
    Train(models.back(), *opts.back(), x, y, 3);
    state.Set(absl::StrCat("model_", name), models.back());
    state.Set(absl::StrCat("optimizer_", name), opts.back());
  }
  at::Tensor base = at::arange(12, at::kFloat).reshape({3, 4});
  Dict misc{{"f32", at::randn({5})},
            {"f64", at::randn({3}, at::kDouble)},
            {"f16", at::randn({4}).to(at::kHalf)},
            {"bf16", at::randn({4}).to(at::kBFloat16)},
            {"i64", at::arange(-3, 3, at::kLong)},
            {"i32", at::arange(5, at::kInt)},
            {"i16", at::arange(4, at::kShort)},
            {"i8", at::arange(-2, 2, at::kChar)},
            {"u8", at::arange(3, at::kByte)},
            {"bool", at::arange(3).gt(0)},
            {"c64", at::randn({3}, at::kComplexFloat)},
            {"base", base},
            {"view_t", base.t()},
            {"row", base.select(0, 1)},
            {"scalar", at::scalar_tensor(3.5)},
            {"empty", at::zeros({0, 3})},
            {"nested", Value::List({1, 2.5, "str", Value(), true, Value::Tuple({1, "a"})})},
            {"big_int", int64_t{1} << 40}};
  state.Set("misc", misc);
  const std::string path = TmpDir() + "/cpp_ckpt.pt";
  ASSERT_TRUE(fabric->Save(path, state).ok());

  RunPython(g_check_script, absl::StrCat(path, " ", TmpDir()));
  auto continued = TorchLoad(TmpDir() + "/python_continued.pt");
  ASSERT_TRUE(continued.ok()) << continued.status();
  for (size_t i = 0; i < models.size(); ++i) {
    SCOPED_TRACE(kOptimizers[i]);
    Train(models[i], *opts[i], x, y, 2);
    for (const auto& item : models[i]->named_parameters()) {
      const Value* got = continued->as_dict().Find(absl::StrCat(kOptimizers[i], ".", item.key()));
      ASSERT_NE(got, nullptr) << item.key();
      ExpectClose(item.value(), got->as_tensor(), item.key());
    }
  }
  // What Python loaded and saved again is bit-exact what C++ saved.
  EXPECT_EQ(*continued->as_dict().Find("misc"), Value(misc));
}

}  // namespace
}  // namespace fabric

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s PYTHON MAKE_SCRIPT CHECK_SCRIPT\n", argv[0]);
    return 2;
  }
  fabric::g_python = argv[1];
  fabric::g_make_script = argv[2];
  fabric::g_check_script = argv[3];
  return RUN_ALL_TESTS();
}
