// Checkpoints of CUDA tensors: saved from the GPU (location "cuda:0" in the
// file, bytes staged through pinned host memory), loaded onto the CPU and back
// onto the GPU (the loader's choice, like Python's map_location), restored into
// a CUDA model by Fabric. Skipped where no GPU is visible (CI); run on the GPU
// machine from a --config=cuda build. With $FABRIC_TEST_PYTHON set, Python
// torch.load reads the file too.
#include <cstdlib>
#include <string>

#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/adamw.h>

#include "absl/strings/str_cat.h"
#include "checkpoint/torch_save.h"
#include "fabric/fabric.h"

namespace fabric {
namespace {

std::string Tmp(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return std::string(dir ? dir : "/tmp") + "/" + name;
}

class CudaCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device visible";
  }
};

TEST_F(CudaCheckpoint, SavesFromGpuAndLoadsOnCpuAndGpu) {
  const c10::Device gpu(c10::kCUDA, 0);
  at::Tensor big = at::randn({3, 1 << 20}, at::TensorOptions().device(gpu));  // 12 MiB
  at::Tensor half = at::randn({7, 5}, at::TensorOptions().device(gpu)).to(at::kBFloat16);
  Dict d{{"big", big}, {"view", big.select(0, 1)}, {"half", half}, {"cpu", at::arange(4)}};
  const std::string path = Tmp("cuda.pt");
  ASSERT_TRUE(TorchSave(path, Value(d)).ok());

  auto file = TorchFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->root().as_dict().Find("big")->as_tensor_ref().location, "cuda:0");
  auto on_cpu = (*file)->Materialize((*file)->root(), c10::kCPU);
  ASSERT_TRUE(on_cpu.ok()) << on_cpu.status();
  EXPECT_TRUE(on_cpu->as_dict().Find("big")->as_tensor().device().is_cpu());
  EXPECT_TRUE(on_cpu->as_dict().Find("big")->as_tensor().equal(big.cpu()));
  EXPECT_TRUE(on_cpu->as_dict().Find("half")->as_tensor().equal(half.cpu()));
  auto on_gpu = (*file)->Materialize((*file)->root(), gpu);
  ASSERT_TRUE(on_gpu.ok()) << on_gpu.status();
  const at::Tensor& v = on_gpu->as_dict().Find("view")->as_tensor();
  EXPECT_TRUE(v.is_cuda());
  EXPECT_TRUE(v.equal(big.select(0, 1)));
  EXPECT_TRUE(v.storage().is_alias_of(on_gpu->as_dict().Find("big")->as_tensor().storage()));

  if (const char* py = std::getenv("FABRIC_TEST_PYTHON")) {
    const std::string cmd = absl::StrCat(
        py, " -c \"import torch; d = torch.load('", path, "', map_location='cpu');",
        " assert d['big'].shape == (3, 1 << 20) and d['half'].dtype == torch.bfloat16;",
        " g = torch.load('", path, "'); assert g['big'].is_cuda;",
        " assert torch.equal(g['view'], g['big'][1]); print('python: OK')\"");
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  }
}

TEST_F(CudaCheckpoint, FabricRestoresACudaModelFromItsCheckpoint) {
  FabricOptions options;
  options.accelerator = "cuda";
  auto fabric = Fabric::Create(options);
  ASSERT_TRUE(fabric.ok()) << fabric.status();
  torch::nn::Linear a(64, 32), b(64, 32);
  ASSERT_TRUE((*fabric)->SetupModule(a).ok());
  ASSERT_TRUE((*fabric)->SetupModule(b).ok());
  EXPECT_TRUE(a->weight.is_cuda());
  auto opt = std::make_shared<torch::optim::AdamW>(a->parameters(), torch::optim::AdamWOptions(1e-2));
  for (int i = 0; i < 3; ++i) {
    opt->zero_grad();
    ASSERT_TRUE((*fabric)->Backward(a->forward(at::ones({8, 64}, a->weight.options())).sum()).ok());
    opt->step();
  }
  const std::string path = Tmp("cuda_model.pt");
  ASSERT_TRUE((*fabric)->Save(path, State{{"model", a}, {"optimizer", opt}}).ok());
  auto opt_b = std::make_shared<torch::optim::AdamW>(b->parameters(), torch::optim::AdamWOptions(1e-2));
  State state{{"model", b}, {"optimizer", opt_b}};
  auto rest = (*fabric)->Load(path, state);
  ASSERT_TRUE(rest.ok()) << rest.status();
  EXPECT_TRUE(b->weight.is_cuda());
  EXPECT_TRUE(b->weight.equal(a->weight));
  // A CPU program loads the GPU checkpoint.
  torch::nn::Linear c(64, 32);
  FabricOptions cpu_options;
  cpu_options.accelerator = "cpu";
  auto cpu = Fabric::Create(cpu_options);
  ASSERT_TRUE(cpu.ok());
  State cpu_state{{"model", c}};
  ASSERT_TRUE((*cpu)->Load(path, cpu_state, /*strict=*/false).ok());
  EXPECT_TRUE(c->weight.equal(a->weight.cpu()));
}

}  // namespace
}  // namespace fabric
