#include "fabric/fabric.h"

#include <iostream>
#include <utility>

#include <torch/cuda.h>

#include "absl/strings/str_cat.h"
#include "strategies/cluster_environment.h"
#include "strategies/launcher.h"
#include "strategies/process_group.h"
#include "strategies/single_file_strategy.h"
#include "strategies/strategy.h"

namespace fabric {

Fabric::Fabric(const FabricOptions& options) : options_(options) {}

Fabric::~Fabric() {
  if (launcher_ && launcher_->is_launcher()) {
    if (absl::Status s = Finish(); !s.ok()) std::cerr << "fabric: " << s << std::endl;
  }
}

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
  if (st != "auto" && st != "single_device" && st != "ddp") {
    return absl::InvalidArgumentError(absl::StrCat(
        "FabricOptions.strategy: '", st, "' is not one of auto, single_device, ddp"));
  }
  if (st == "single_device" && options.devices * options.num_nodes > 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "FabricOptions.strategy: 'single_device' runs one process, but devices * num_nodes = ",
        options.devices * options.num_nodes));
  }
  if (absl::StatusOr<Precision> p = ParsePrecision(options.precision); !p.ok()) return p.status();
  std::unique_ptr<Fabric> f(new Fabric(options));
  f->want_cuda_ = acc == "cuda" || acc == "gpu" || (acc == "auto" && torch::cuda::is_available());
  if (f->want_cuda_ && !torch::cuda::is_available()) {
    return absl::FailedPreconditionError(
        "FabricOptions.accelerator: 'cuda' requested but no CUDA device is available "
        "(build with --config=cuda and run on a machine with a GPU)");
  }
  return f;
}

absl::Status Fabric::Launch() {
  if (strategy_) return absl::OkStatus();
  absl::StatusOr<strategies::ClusterEnvironment> env = strategies::DetectClusterEnvironment();
  if (!env.ok()) return env.status();
  const bool distributed = options_.devices * options_.num_nodes > 1 || !env->needs_launch() ||
                           options_.strategy == "ddp";
  if (!distributed) return EnsureStrategy();

  strategies::LaunchOptions launch;
  launch.devices = options_.devices;
  launch.num_nodes = options_.num_nodes;
  absl::StatusOr<std::unique_ptr<strategies::Launcher>> launcher =
      strategies::Launcher::Launch(launch);
  if (!launcher.ok()) return launcher.status();
  launcher_ = *std::move(launcher);
  strategies::DistributedOptions dist;
  dist.backend = want_cuda_ ? strategies::CommBackend::kNccl : strategies::CommBackend::kGloo;
  dist.timeout = options_.timeout;
  absl::StatusOr<std::shared_ptr<strategies::DistributedContext>> context =
      strategies::DistributedContext::Create(launcher_->cluster(), dist);
  if (!context.ok()) return context.status();
  context_ = *std::move(context);
  strategy_ = std::make_unique<strategies::DdpStrategy>(context_);
  return absl::OkStatus();
}

absl::Status Fabric::EnsureStrategy() {
  if (strategy_) return absl::OkStatus();
  if (options_.devices * options_.num_nodes > 1) {
    return absl::FailedPreconditionError(absl::StrCat(
        "Fabric runs ", options_.devices * options_.num_nodes,
        " processes: call Launch() before setting up modules or saving"));
  }
  strategy_ = std::make_unique<strategies::SingleDeviceStrategy>(
      want_cuda_ ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU));
  return absl::OkStatus();
}

absl::Status Fabric::Finish(absl::Duration timeout) {
  if (!launcher_ || !launcher_->is_launcher()) return absl::OkStatus();
  absl::Status s = launcher_->Finish(timeout);
  launcher_.reset();
  return s;
}

strategies::Strategy& Fabric::strategy() {
  (void)EnsureStrategy();
  return *strategy_;
}

int Fabric::global_rank() const { return strategy_ ? strategy_->global_rank() : 0; }
int Fabric::world_size() const { return strategy_ ? strategy_->world_size() : 1; }

c10::Device Fabric::device() const {
  if (strategy_) return strategy_->device();
  return want_cuda_ ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU);
}

absl::Status Fabric::SetupModule(const std::shared_ptr<torch::nn::Module>& module) {
  if (!module) return absl::InvalidArgumentError("Fabric::SetupModule: module is null");
  if (absl::Status s = EnsureStrategy(); !s.ok()) return s;
  absl::StatusOr<Precision> precision = ParsePrecision(options_.precision);
  if (precision->param_dtype != c10::kFloat) module->to(precision->param_dtype);
  return strategy_->SetupModule(module);
}

absl::Status Fabric::Setup(const std::shared_ptr<torch::nn::Module>& module,
                           const std::shared_ptr<torch::optim::Optimizer>& optimizer) {
  (void)optimizer;  // the parameters stay the same tensors: nothing to rebind
  return SetupModule(module);
}

absl::Status Fabric::Backward(const at::Tensor& loss) {
  if (absl::Status s = EnsureStrategy(); !s.ok()) return s;
  return strategy_->Backward(loss);
}

AutocastGuard Fabric::Autocast() const {
  return AutocastGuard(device().type(), *ParsePrecision(options_.precision));
}

absl::Status Fabric::Save(const std::string& path, const State& state, const StateFilter& filter) {
  if (absl::Status s = EnsureStrategy(); !s.ok()) return s;
  return strategy_->Save(path, state, filter);
}

absl::StatusOr<Dict> Fabric::Load(const std::string& path, State& state, bool strict) {
  if (absl::Status s = EnsureStrategy(); !s.ok()) return s;
  return strategy_->Load(path, state, strict);
}

absl::StatusOr<Dict> Fabric::Load(const std::string& path) {
  if (absl::Status s = EnsureStrategy(); !s.ok()) return s;
  return strategy_->LoadAll(path);
}

absl::Status Fabric::LoadRaw(const std::string& path, torch::nn::Module& module, bool strict) {
  if (absl::Status s = EnsureStrategy(); !s.ok()) return s;
  return strategy_->LoadRaw(path, module, strict);
}

absl::Status Fabric::LoadRaw(const std::string& path, torch::optim::Optimizer& optimizer) {
  if (absl::Status s = EnsureStrategy(); !s.ok()) return s;
  return strategy_->LoadRaw(path, optimizer);
}

absl::Status Fabric::Barrier() {
  if (!strategy_) return absl::OkStatus();
  return strategy_->Barrier();
}

void Fabric::Print(const std::string& line) const {
  if (is_global_zero()) std::cout << line << std::endl;
}

}  // namespace fabric
