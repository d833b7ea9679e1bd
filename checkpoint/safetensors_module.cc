#include "checkpoint/safetensors_module.h"

#include <memory>
#include <utility>
#include <vector>

#include <torch/nn/module.h>

#include "base/status_macros.h"
#include "checkpoint/module_state.h"

namespace fabric {

absl::StatusOr<StateLoadReport> LoadSafetensorsModule(const SafetensorsCheckpoint& checkpoint,
                                                      torch::nn::Module& module, bool strict) {
  return LoadModuleState(module, checkpoint.StateDict(), strict, checkpoint.Source(),
                         checkpoint.path(), checkpoint.BatchSource());
}

absl::StatusOr<StateLoadReport> LoadSafetensorsModule(const std::string& path,
                                                      torch::nn::Module& module, bool strict) {
  FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsCheckpoint> checkpoint,
                          SafetensorsCheckpoint::Open(path));
  return LoadSafetensorsModule(*checkpoint, module, strict);
}

absl::Status SaveSafetensorsModule(const std::string& path, const torch::nn::Module& module,
                                   std::optional<std::map<std::string, std::string>> metadata,
                                   const SafetensorsWriteOptions& options) {
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& [key, value] : ModuleStateDict(module)) {
    tensors.emplace_back(key.as_string(), value.as_tensor());
  }
  return SaveSafetensors(path, tensors, std::move(metadata), options);
}

}  // namespace fabric
