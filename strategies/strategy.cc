#include "strategies/strategy.h"

#include <exception>

#include "absl/strings/str_cat.h"

namespace fabric::strategies {

absl::Status Strategy::Backward(const at::Tensor& loss) {
  try {
    loss.backward();
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("backward failed: ", e.what()));
  }
  return absl::OkStatus();
}

}  // namespace fabric::strategies
