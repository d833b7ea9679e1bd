// Fabric: one small API to run a LibTorch training program on one device or
// many, and to save and load its whole state.
//
//   fabric::FabricOptions options;
//   options.accelerator = "cpu";
//   auto fabric = fabric::Fabric::Create(options).value();
//   fabric->Launch().IgnoreError();          // starts/joins the other ranks
//   auto model = std::make_shared<Net>();
//   auto opt = std::make_shared<torch::optim::AdamW>(model->parameters(), 1e-3);
//   fabric->Setup(model, opt).IgnoreError();  // device placement, DDP wrapping
//   ...
//   fabric::State state{{"model", model}, {"optimizer", opt}, {"step", step}};
//   fabric->Save("ckpt.pt", state);
//   absl::StatusOr<fabric::Dict> rest = fabric->Load("ckpt.pt", state);
//
// Every fallible call returns absl::Status or absl::StatusOr.
#ifndef FABRIC_FABRIC_FABRIC_H_
#define FABRIC_FABRIC_FABRIC_H_

#include <memory>
#include <string>

#include <c10/core/Device.h>
#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "checkpoint/value.h"
#include "fabric/state.h"
#include "fabric/state_io.h"

namespace fabric {

struct FabricOptions {
  // "cpu", "cuda" or "auto" (cuda when available).
  std::string accelerator = "auto";
  // Processes per node (one per device).
  int devices = 1;
  int num_nodes = 1;
  // "auto", "single_device" or "ddp".
  std::string strategy = "auto";
  // "32-true" (others arrive with mixed precision support).
  std::string precision = "32-true";
};

class Fabric {
 public:
  // Validates the options; bad values give an error naming the option.
  static absl::StatusOr<std::unique_ptr<Fabric>> Create(const FabricOptions& options);
  ~Fabric();

  // Starts or joins the processes of a multi-process run. A no-op for a
  // single device.
  absl::Status Launch();

  // Moves the module to this rank's device and prepares it for the strategy.
  // The optimizer must have been built over the module's parameters.
  absl::Status Setup(const std::shared_ptr<torch::nn::Module>& module,
                     const std::shared_ptr<torch::optim::Optimizer>& optimizer = nullptr);
  template <typename M>
  absl::Status Setup(const torch::nn::ModuleHolder<M>& module,
                     const std::shared_ptr<torch::optim::Optimizer>& optimizer = nullptr) {
    return Setup(std::static_pointer_cast<torch::nn::Module>(module.ptr()), optimizer);
  }

  // Saves `state` to `path` in torch.save's format (Python's torch.load reads
  // it). Modules and optimizers are saved as their state dicts. Atomic: the
  // file at `path` is replaced only when the new one is complete on disk.
  absl::Status Save(const std::string& path, const State& state, const StateFilter& filter = {});

  // Restores `state` from `path` in place and returns the entries of the file
  // that `state` did not ask for.
  absl::StatusOr<Dict> Load(const std::string& path, State& state, bool strict = true);
  // Everything in the file.
  absl::StatusOr<Dict> Load(const std::string& path);
  // A file holding a bare state dict (e.g. Python's torch.save(model.state_dict())).
  absl::Status LoadRaw(const std::string& path, torch::nn::Module& module, bool strict = true);
  absl::Status LoadRaw(const std::string& path, torch::optim::Optimizer& optimizer);

  int global_rank() const { return global_rank_; }
  int world_size() const { return world_size_; }
  bool is_global_zero() const { return global_rank_ == 0; }
  const c10::Device& device() const { return device_; }
  const FabricOptions& options() const { return options_; }

  absl::Status Barrier();
  // Prints on global rank 0 only.
  void Print(const std::string& line) const;

 private:
  explicit Fabric(const FabricOptions& options);

  FabricOptions options_;
  c10::Device device_ = c10::kCPU;
  int global_rank_ = 0;
  int world_size_ = 1;
};

}  // namespace fabric

#endif  // FABRIC_FABRIC_FABRIC_H_
