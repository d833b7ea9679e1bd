// Trains a small regression MLP for a few steps with Fabric on one device,
// saves the whole training state, restores it into a fresh model and
// optimizer, and checks that training continues identically.
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/adamw.h>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "fabric/fabric.h"

namespace {

torch::nn::Sequential MakeModel() {
  return torch::nn::Sequential(torch::nn::Linear(16, 64), torch::nn::ReLU(),
                               torch::nn::Linear(64, 1));
}

float TrainStep(torch::nn::Sequential& model, torch::optim::Optimizer& opt, int step,
                const c10::Device& device) {
  torch::manual_seed(1000 + step);  // the batch depends on the step only
  at::Tensor x = torch::randn({32, 16}).to(device);
  at::Tensor y = x.sum(1, /*keepdim=*/true).sin();
  opt.zero_grad();
  at::Tensor loss = torch::mse_loss(model->forward(x), y);
  loss.backward();
  opt.step();
  return loss.item<float>();
}

// Train, save, restore, continue; true when the restored run matches.
absl::StatusOr<bool> Run(const std::string& path) {
  fabric::FabricOptions options;
  options.accelerator = "auto";
  FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<fabric::Fabric> fabric_owner,
                          fabric::Fabric::Create(options));
  fabric::Fabric& fabric = *fabric_owner;
  fabric.Print(absl::StrCat("device: ", fabric.device().str()));

  torch::manual_seed(0);
  auto model = MakeModel();
  auto opt = std::make_shared<torch::optim::AdamW>(model->parameters(),
                                                   torch::optim::AdamWOptions(1e-2));
  FABRIC_RETURN_IF_ERROR(fabric.Setup(model, opt));

  int64_t step = 0;
  for (; step < 20; ++step) {
    const float loss = TrainStep(model, *opt, static_cast<int>(step), fabric.device());
    if (step % 5 == 0) fabric.Print(absl::StrCat("step ", step, "  loss ", loss));
  }
  fabric::State state{{"model", model}, {"optimizer", opt}, {"step", step},
                      {"note", "single-device example"}};
  FABRIC_RETURN_IF_ERROR(fabric.Save(path, state));
  fabric.Print(absl::StrCat("saved step ", step, " to ", path));

  // A fresh model and optimizer restored from the file.
  torch::manual_seed(123);
  auto model2 = MakeModel();
  auto opt2 = std::make_shared<torch::optim::AdamW>(model2->parameters(),
                                                    torch::optim::AdamWOptions(1e-2));
  FABRIC_RETURN_IF_ERROR(fabric.Setup(model2, opt2));
  fabric::State restored{{"model", model2}, {"optimizer", opt2}, {"step", 0}};
  FABRIC_ASSIGN_OR_RETURN(const fabric::Dict remainder, fabric.Load(path, restored));
  fabric.Print(absl::StrCat("loaded step ", restored["step"].value().as_int(), ", remainder keys: ",
                            remainder.size()));

  // Both continue for 5 steps: the losses must match exactly.
  bool same = true;
  for (int i = 0; i < 5; ++i) {
    const float a = TrainStep(model, *opt, static_cast<int>(step + i), fabric.device());
    const float b = TrainStep(model2, *opt2, static_cast<int>(step + i), fabric.device());
    same = same && a == b;
    fabric.Print(absl::StrCat("step ", step + i, "  loss original ", a, "  restored ", b));
  }
  fabric.Print(same ? "resumed training matches the original exactly"
                    : "MISMATCH: resumed training differs");
  fabric.Print(absl::StrCat("Python reads it too: python -c \"import torch; print(torch.load('",
                            path, "').keys())\""));
  return same;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string path = argc > 1 ? argv[1] : "/tmp/fabric_single_device_example.pt";
  absl::StatusOr<bool> same = Run(path);
  if (!same.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(same.status().message()).c_str());
    return 1;
  }
  return *same ? 0 : 1;
}
