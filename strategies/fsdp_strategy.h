// FSDP under Fabric: every module set up is sharded across the ranks
// (strategies/fsdp.h) and checkpoints are sharded DCP folders or full
// single files (strategies/fsdp_checkpoint.h).
#ifndef FABRIC_STRATEGIES_FSDP_STRATEGY_H_
#define FABRIC_STRATEGIES_FSDP_STRATEGY_H_

#include <memory>
#include <string>
#include <vector>

#include "strategies/fsdp.h"
#include "strategies/fsdp_checkpoint.h"
#include "strategies/process_group.h"
#include "strategies/strategy.h"

namespace fabric::strategies {

class FsdpStrategy : public Strategy {
 public:
  FsdpStrategy(std::shared_ptr<DistributedContext> context, FsdpOptions options,
               StateDictType state_dict_type);
  ~FsdpStrategy() override;

  std::string name() const override { return "fsdp"; }
  c10::Device device() const override { return context_->device(); }
  int global_rank() const override { return context_->rank(); }
  int world_size() const override { return context_->world_size(); }
  DistributedContext* context() const override { return context_.get(); }

  // Shards the module; create its optimizer over Parameters(module).
  absl::Status SetupModule(const std::shared_ptr<torch::nn::Module>& module) override;
  // The FSDP wrapper of a module set up here, or null.
  FullyShardedDataParallel* fsdp(const torch::nn::Module& module) const;
  // fsdp() as the lookup the checkpoint functions take.
  FsdpWrapperOf wrapper_of() const;

  absl::StatusOr<StagedWrite> StageSave(const std::string& path, const State& state,
                                        const StateFilter& filter,
                                        StagingBuffers* staging) override;
  absl::StatusOr<Dict> Load(const std::string& path, State& state, bool strict) override;
  absl::StatusOr<Dict> LoadAll(const std::string& path) override;
  absl::Status LoadRaw(const std::string& path, torch::nn::Module& module, bool strict) override;
  absl::Status LoadRaw(const std::string& path, torch::optim::Optimizer& optimizer) override;
  absl::Status Barrier() override { return context_->Barrier(); }

 private:
  std::shared_ptr<DistributedContext> context_;
  FsdpOptions options_;
  StateDictType state_dict_type_;
  std::vector<std::unique_ptr<FullyShardedDataParallel>> wrapped_;
};

}  // namespace fabric::strategies

#endif  // FABRIC_STRATEGIES_FSDP_STRATEGY_H_
