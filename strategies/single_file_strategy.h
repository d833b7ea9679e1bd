// The save and load shared by the strategies whose checkpoints are one
// torch.save file (SingleDeviceStrategy, DdpStrategy): every rank holds the
// whole model, so rank 0 writes the file (the others wait for its verdict)
// and every rank reads it. A sharded (DCP) folder from an FSDP run loads too.
#ifndef FABRIC_STRATEGIES_SINGLE_FILE_STRATEGY_H_
#define FABRIC_STRATEGIES_SINGLE_FILE_STRATEGY_H_

#include <string>

#include "strategies/strategy.h"

namespace fabric::strategies {

class SingleFileStrategy : public Strategy {
 public:
  // Rank 0 converts (and stages) the state; its write is TorchSave, the
  // others wait for its verdict.
  absl::StatusOr<StagedWrite> StageSave(const std::string& path, const State& state,
                                        const StateFilter& filter,
                                        StagingBuffers* staging) override;
  absl::StatusOr<Dict> Load(const std::string& path, State& state, bool strict) override;
  absl::StatusOr<Dict> LoadAll(const std::string& path) override;
  absl::Status LoadRaw(const std::string& path, torch::nn::Module& module, bool strict) override;
  absl::Status LoadRaw(const std::string& path, torch::optim::Optimizer& optimizer) override;
};

}  // namespace fabric::strategies

#endif  // FABRIC_STRATEGIES_SINGLE_FILE_STRATEGY_H_
