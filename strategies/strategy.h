// Strategy: how Fabric places a model on devices, synchronizes training across
// processes, and saves and loads checkpoints. Fabric holds exactly one.
//
// Implementations: SingleDeviceStrategy (strategies/single_device_strategy.h),
// DdpStrategy (strategies/ddp_strategy.h) and FsdpStrategy
// (strategies/fsdp_strategy.h). The checkpoint formats they write live in
// checkpoint/; a strategy decides who writes what.
#ifndef FABRIC_STRATEGIES_STRATEGY_H_
#define FABRIC_STRATEGIES_STRATEGY_H_

#include <memory>
#include <string>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "checkpoint/load_options.h"
#include "checkpoint/value.h"
#include "checkpoint/state.h"
#include "checkpoint/state_filter.h"
#include "strategies/staged_write.h"

namespace fabric {
class StagingBuffers;
}  // namespace fabric

namespace fabric::strategies {

class DistributedContext;

class Strategy {
 public:
  virtual ~Strategy() = default;

  virtual std::string name() const = 0;
  // The device this process computes on.
  virtual c10::Device device() const = 0;
  virtual int global_rank() const { return 0; }
  virtual int world_size() const { return 1; }
  // Null for single-process strategies.
  virtual DistributedContext* context() const { return nullptr; }

  // Places the module on the device and prepares it for the strategy (DDP:
  // broadcast from rank 0 and gradient hooks; FSDP: sharding). Optimizers
  // must be created over module->parameters() after this call.
  virtual absl::Status SetupModule(const std::shared_ptr<torch::nn::Module>& module) = 0;

  // loss.backward() plus whatever the strategy must do before the optimizer
  // steps (gradient synchronization).
  virtual absl::Status Backward(const at::Tensor& loss);

  // A synchronous save: StageSave without copies, then its write over
  // context(). Every rank calls it; every rank returns the same verdict.
  virtual absl::Status Save(const std::string& path, const State& state,
                            const StateFilter& filter);
  // The first half of a save (all that an asynchronous one blocks for):
  // plans what this rank writes and copies it through `staging` (null:
  // nothing is copied, the write reads the live state). Not a collective;
  // errors only this rank sees travel in the returned write, which every
  // rank runs, so that the ranks' collectives stay in step.
  virtual absl::StatusOr<StagedWrite> StageSave(const std::string& path, const State& state,
                                                const StateFilter& filter,
                                                StagingBuffers* staging) = 0;
  virtual absl::StatusOr<Dict> Load(const std::string& path, State& state, bool strict) = 0;
  // Everything in the checkpoint, modules and optimizers as state dicts.
  virtual absl::StatusOr<Dict> LoadAll(const std::string& path) = 0;
  virtual absl::Status LoadRaw(const std::string& path, torch::nn::Module& module, bool strict) = 0;
  virtual absl::Status LoadRaw(const std::string& path, torch::optim::Optimizer& optimizer) = 0;

  virtual absl::Status Barrier() { return absl::OkStatus(); }

  // How loads read files (FabricOptions.verify_checksums): every strategy
  // opens checkpoints with these.
  void set_load_options(const LoadOptions& options) { load_options_ = options; }
  const LoadOptions& load_options() const { return load_options_; }

 protected:
  LoadOptions load_options_;
};

}  // namespace fabric::strategies

#endif  // FABRIC_STRATEGIES_STRATEGY_H_
