// DDP under Fabric: every rank holds the whole model (strategies/ddp.h
// synchronizes the gradients); checkpoints are one torch.save file written
// by rank 0.
#ifndef FABRIC_STRATEGIES_DDP_STRATEGY_H_
#define FABRIC_STRATEGIES_DDP_STRATEGY_H_

#include <memory>
#include <string>
#include <vector>

#include "strategies/ddp.h"
#include "strategies/process_group.h"
#include "strategies/single_file_strategy.h"

namespace fabric::strategies {

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

#endif  // FABRIC_STRATEGIES_DDP_STRATEGY_H_
