// `fabric verify` of safetensors: one file or a Hugging Face sharded folder
// (checkpoint/safetensors_index.h).
#ifndef FABRIC_TOOLS_VERIFY_SAFETENSORS_H_
#define FABRIC_TOOLS_VERIFY_SAFETENSORS_H_

#include <string>

#include "absl/status/status.h"
#include "tools/verify.h"

namespace fabric::tools {

// Every header and the index pass the format's checks (Open), then every
// byte of every data section is read, and BOOL tensors hold only 0 and 1.
absl::Status VerifySafetensors(const std::string& path, const VerifyOptions& options,
                               VerifyReport& report);

}  // namespace fabric::tools

#endif  // FABRIC_TOOLS_VERIFY_SAFETENSORS_H_
