// `fabric inspect` of safetensors: one file or a Hugging Face sharded folder
// (checkpoint/safetensors_index.h).
#ifndef FABRIC_TOOLS_INSPECT_SAFETENSORS_H_
#define FABRIC_TOOLS_INSPECT_SAFETENSORS_H_

#include <string>

#include "absl/status/status.h"
#include "tools/inspect.h"

namespace fabric::tools {

// Headers only: files, every tensor (dtype, shape, bytes, file and byte
// range) and the __metadata__ / index metadata as objects.
absl::Status InspectSafetensors(const std::string& path, Inspection& out);

}  // namespace fabric::tools

#endif  // FABRIC_TOOLS_INSPECT_SAFETENSORS_H_
