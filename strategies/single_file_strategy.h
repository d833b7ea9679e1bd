// The strategies whose checkpoints are one torch.save file: single device and
// DDP. Every rank holds the whole model, so rank 0 writes the file (the others
// wait) and every rank reads it.
#ifndef FABRIC_STRATEGIES_SINGLE_FILE_STRATEGY_H_
#define FABRIC_STRATEGIES_SINGLE_FILE_STRATEGY_H_

#include <memory>
#include <string>

#include "strategies/ddp.h"
#include "strategies/process_group.h"
#include "strategies/strategy.h"

namespace fabric::strategies {

// Shared save/load of the single-file format; `context` may be null.
class SingleFileStrategy : public Strategy {
 public:
  absl::Status Save(const std::string& path, const State& state,
                    const StateFilter& filter) override;
  absl::StatusOr<Dict> Load(const std::string& path, State& state, bool strict) override;
  absl::StatusOr<Dict> LoadAll(const std::string& path) override;
  absl::Status LoadRaw(const std::string& path, torch::nn::Module& module, bool strict) override;
  absl::Status LoadRaw(const std::string& path, torch::optim::Optimizer& optimizer) override;
};

class SingleDeviceStrategy : public SingleFileStrategy {
 public:
  explicit SingleDeviceStrategy(c10::Device device) : device_(device) {}
  std::string name() const override { return "single_device"; }
  c10::Device device() const override { return device_; }
  absl::Status SetupModule(const std::shared_ptr<torch::nn::Module>& module) override;

 private:
  c10::Device device_;
};

class DdpStrategy : public SingleFileStrategy {
 public:
  DdpStrategy(std::shared_ptr<DistributedContext> context, DdpOptions options = {});
  ~DdpStrategy() override;
  std::string name() const override { return "ddp"; }
  c10::Device device() const override;
  int global_rank() const override;
  int world_size() const override;
  DistributedContext* context() const override { return context_.get(); }
  absl::Status SetupModule(const std::shared_ptr<torch::nn::Module>& module) override;
  absl::Status Backward(const at::Tensor& loss) override;
  absl::Status Barrier() override;

  // The DDP wrapper of a module set up by this strategy, or null.
  DistributedDataParallel* ddp(const torch::nn::Module& module) const;

 private:
  std::shared_ptr<DistributedContext> context_;
  DdpOptions options_;
  std::vector<std::unique_ptr<DistributedDataParallel>> wrapped_;
};

}  // namespace fabric::strategies

#endif  // FABRIC_STRATEGIES_SINGLE_FILE_STRATEGY_H_
