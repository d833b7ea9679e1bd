// Module state in PyTorch's Python state_dict layout, as a Value Dict.
//
// Python's Module.state_dict() walks the module tree depth first; for each
// module it emits its own parameters, then its own buffers, then recurses into
// its children in registration order, with dotted names ("fc1.weight"). The
// functions here follow exactly that order, so a dict we save lists its keys
// as Python's does, and Python's load_state_dict accepts it.
#ifndef FABRIC_CHECKPOINT_MODULE_STATE_H_
#define FABRIC_CHECKPOINT_MODULE_STATE_H_

#include <functional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "checkpoint/load_report.h"
#include "checkpoint/tensor_source.h"
#include "checkpoint/value.h"

namespace torch::nn {
class Module;
}  // namespace torch::nn

namespace fabric {

// Selects keys; true keeps the key.
using StateKeyFilter = std::function<bool(std::string_view key)>;

// The module's parameters and buffers in Python's state_dict order. The
// values are the module's tensors, detached (they share storage with the
// module and carry no autograd history); nothing is copied. Undefined tensors
// (Python's None entries) are left out, as Python does.
Dict ModuleStateDict(const torch::nn::Module& module,
                     const StateKeyFilter& filter = nullptr);

// Copies `state` into the module's existing parameters and buffers in place,
// like Python's Module.load_state_dict: dtype and device are converted as
// Tensor.copy_ does, shapes must match. Values may be tensors or tensor refs
// read through `source` (straight into the parameter where the layouts agree).
//
// Everything is checked before anything is copied: on error the module is
// unchanged (except when `source` itself fails midway). Shape and dtype
// mismatches (and non-tensor values) are errors in both modes; missing and
// unexpected keys are errors only when `strict`, and are returned in the
// report otherwise. Errors list every problem and name `file`. With `batch`,
// the tensor refs that go straight into their parameters are read in one call.
absl::StatusOr<StateLoadReport> LoadModuleState(
    torch::nn::Module& module, const Dict& state, bool strict,
    const TensorSource& source = nullptr, const std::string& file = "state dict",
    const TensorBatchSource& batch = nullptr);

}  // namespace fabric

#endif  // FABRIC_CHECKPOINT_MODULE_STATE_H_
