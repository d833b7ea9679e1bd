// One process on one device; checkpoints are one torch.save file.
#ifndef FABRIC_STRATEGIES_SINGLE_DEVICE_STRATEGY_H_
#define FABRIC_STRATEGIES_SINGLE_DEVICE_STRATEGY_H_

#include <memory>
#include <string>

#include "strategies/single_file_strategy.h"

namespace fabric::strategies {

class SingleDeviceStrategy : public SingleFileStrategy {
 public:
  explicit SingleDeviceStrategy(c10::Device device) : device_(device) {}
  std::string name() const override { return "single_device"; }
  c10::Device device() const override { return device_; }
  absl::Status SetupModule(const std::shared_ptr<torch::nn::Module>& module) override;

 private:
  c10::Device device_;
};

}  // namespace fabric::strategies

#endif  // FABRIC_STRATEGIES_SINGLE_DEVICE_STRATEGY_H_
