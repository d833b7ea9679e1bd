#include "strategies/single_device_strategy.h"

namespace fabric::strategies {

absl::Status SingleDeviceStrategy::SetupModule(const std::shared_ptr<torch::nn::Module>& module) {
  module->to(device_);
  return absl::OkStatus();
}

}  // namespace fabric::strategies
