#include "fabric/fabric.h"

#include <iostream>

#include <torch/cuda.h>

#include "absl/strings/str_cat.h"

namespace fabric {

Fabric::Fabric(const FabricOptions& options) : options_(options) {}
Fabric::~Fabric() = default;

absl::StatusOr<std::unique_ptr<Fabric>> Fabric::Create(const FabricOptions& options) {
  const std::string& acc = options.accelerator;
  if (acc != "auto" && acc != "cpu" && acc != "cuda" && acc != "gpu") {
    return absl::InvalidArgumentError(absl::StrCat(
        "FabricOptions.accelerator: '", acc, "' is not one of auto, cpu, cuda, gpu"));
  }
  if (options.devices < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("FabricOptions.devices: must be at least 1, got ", options.devices));
  }
  if (options.num_nodes < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("FabricOptions.num_nodes: must be at least 1, got ", options.num_nodes));
  }
  const std::string& st = options.strategy;
  if (st != "auto" && st != "single_device") {
    return absl::InvalidArgumentError(absl::StrCat(
        "FabricOptions.strategy: '", st, "' is not supported (auto, single_device)"));
  }
  if (options.devices * options.num_nodes > 1) {
    return absl::UnimplementedError(
        "FabricOptions.devices/num_nodes: multi-process strategies are not available in this build");
  }
  if (options.precision != "32-true" && options.precision != "32") {
    return absl::InvalidArgumentError(absl::StrCat(
        "FabricOptions.precision: '", options.precision, "' is not supported (32-true)"));
  }
  std::unique_ptr<Fabric> f(new Fabric(options));
  const bool want_cuda = acc == "cuda" || acc == "gpu" || (acc == "auto" && torch::cuda::is_available());
  if (want_cuda) {
    if (!torch::cuda::is_available()) {
      return absl::FailedPreconditionError(
          "FabricOptions.accelerator: 'cuda' requested but no CUDA device is available "
          "(build with --config=cuda and run on a machine with a GPU)");
    }
    f->device_ = c10::Device(c10::kCUDA, 0);
  }
  return f;
}

absl::Status Fabric::Launch() { return absl::OkStatus(); }

absl::Status Fabric::Setup(const std::shared_ptr<torch::nn::Module>& module,
                           const std::shared_ptr<torch::optim::Optimizer>& optimizer) {
  if (!module) return absl::InvalidArgumentError("Fabric::Setup: module is null");
  module->to(device_);
  (void)optimizer;
  return absl::OkStatus();
}

absl::Status Fabric::Save(const std::string& path, const State& state, const StateFilter& filter) {
  absl::StatusOr<Dict> tree = StateToCheckpoint(state, filter);
  if (!tree.ok()) return tree.status();
  absl::Status s = absl::OkStatus();
  if (is_global_zero()) s = TorchSave(path, Value(*std::move(tree)));
  if (absl::Status b = Barrier(); s.ok()) s = b;
  return s;
}

absl::StatusOr<Dict> Fabric::Load(const std::string& path, State& state, bool strict) {
  absl::StatusOr<std::unique_ptr<TorchFile>> file = TorchFile::Open(path);
  if (!file.ok()) return file.status();
  return LoadStateFromCheckpoint(**file, state, strict);
}

absl::StatusOr<Dict> Fabric::Load(const std::string& path) {
  absl::StatusOr<std::unique_ptr<TorchFile>> file = TorchFile::Open(path);
  if (!file.ok()) return file.status();
  return LoadAllFromCheckpoint(**file);
}

absl::Status Fabric::LoadRaw(const std::string& path, torch::nn::Module& module, bool strict) {
  absl::StatusOr<std::unique_ptr<TorchFile>> file = TorchFile::Open(path);
  if (!file.ok()) return file.status();
  return LoadRawModule(**file, module, strict);
}

absl::Status Fabric::LoadRaw(const std::string& path, torch::optim::Optimizer& optimizer) {
  absl::StatusOr<std::unique_ptr<TorchFile>> file = TorchFile::Open(path);
  if (!file.ok()) return file.status();
  return LoadRawOptimizer(**file, optimizer);
}

absl::Status Fabric::Barrier() { return absl::OkStatus(); }

void Fabric::Print(const std::string& line) const {
  if (is_global_zero()) std::cout << line << std::endl;
}

}  // namespace fabric
