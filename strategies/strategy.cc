#include "strategies/strategy.h"

#include <exception>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace fabric::strategies {

absl::Status Strategy::Backward(const at::Tensor& loss) {
  try {
    loss.backward();
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("backward failed: ", e.what()));
  }
  return absl::OkStatus();
}

absl::Status Strategy::Save(const std::string& path, const State& state,
                            const StateFilter& filter) {
  FABRIC_ASSIGN_OR_RETURN(StagedWrite write, StageSave(path, state, filter, /*staging=*/nullptr));
  return write(context());
}

}  // namespace fabric::strategies
