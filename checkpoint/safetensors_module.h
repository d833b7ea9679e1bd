// A LibTorch module's weights from and to safetensors: how a C++ program
// loads a Hugging Face model's weights (one file or a sharded folder) into
// its module, and exports its own.
//
//   FABRIC_RETURN_IF_ERROR(fabric::LoadSafetensorsModule("llm/", *model, /*strict=*/true));
//
// Keys are the module's state-dict names (Python's order and names, see
// module_state.h); each tensor is read straight into its parameter when the
// dtypes agree (pread into the parameter's memory), else cast as copy_ does.
#ifndef FABRIC_CHECKPOINT_SAFETENSORS_MODULE_H_
#define FABRIC_CHECKPOINT_SAFETENSORS_MODULE_H_

#include <map>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "checkpoint/load_report.h"
#include "checkpoint/safetensors_index.h"
#include "checkpoint/safetensors_writer.h"

namespace torch::nn {
class Module;
}  // namespace torch::nn

namespace fabric {

// Loads `checkpoint` into the module's parameters and buffers in place. With
// `strict`, every missing and unexpected key is listed in one error; shape
// and dtype mismatches are always errors; on error the module is unchanged.
absl::StatusOr<StateLoadReport> LoadSafetensorsModule(const SafetensorsCheckpoint& checkpoint,
                                                      torch::nn::Module& module, bool strict);
// The same for a path (a .safetensors file, an index, or a folder).
absl::StatusOr<StateLoadReport> LoadSafetensorsModule(const std::string& path,
                                                      torch::nn::Module& module, bool strict);

// Writes the module's state dict (parameters and buffers) to one file.
absl::Status SaveSafetensorsModule(
    const std::string& path, const torch::nn::Module& module,
    std::optional<std::map<std::string, std::string>> metadata = {},
    const SafetensorsWriteOptions& options = {});

}  // namespace fabric

#endif  // FABRIC_CHECKPOINT_SAFETENSORS_MODULE_H_
