// StateSnapshot: a copy of what a load may change in live modules and
// optimizers, to put back when the load fails, so that a refused checkpoint
// (a CRC mismatch in the last record read, a shape error halfway) leaves the
// model and optimizer exactly as they were: loads are all or nothing.
//
// Why restore-on-failure rather than reading into staging tensors and copying
// after every check: both cost one copy of the state in memory, but the
// snapshot is taken before the reads and the reads still go straight into the
// live tensors (no second copy pass after the I/O); see docs/benchmarks.md.
#ifndef FABRIC_CHECKPOINT_STATE_SNAPSHOT_H_
#define FABRIC_CHECKPOINT_STATE_SNAPSHOT_H_

#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "checkpoint/state.h"
#include "checkpoint/value.h"

namespace torch::nn {
class Module;
}  // namespace torch::nn
namespace torch::optim {
class Optimizer;
}  // namespace torch::optim

namespace fabric {

class StateSnapshot {
 public:
  // Copies every parameter and buffer of the modules, every optimizer's
  // state (as its state dict, tensors cloned) and the plain values.
  //
  // Where a module's values do not live in its own parameters (FSDP: they
  // are the local shards, and the module's parameters have no storage
  // outside a forward), `params_of` returns the tensors to copy instead of
  // the parameters (the module's buffers are copied either way).
  using ParamsOf = std::function<std::optional<std::vector<at::Tensor>>(torch::nn::Module&)>;
  static absl::StatusOr<StateSnapshot> Of(const State& state, const ParamsOf& params_of = {});
  static StateSnapshot Of(torch::nn::Module& module, const ParamsOf& params_of = {});
  static absl::StatusOr<StateSnapshot> Of(torch::optim::Optimizer& optimizer);

  // Puts everything back (state: the same State the snapshot was taken of).
  absl::Status Restore(State& state) const;
  absl::Status Restore() const;  // the module / optimizer overloads

  // Bytes of tensor memory the snapshot holds.
  uint64_t bytes() const { return bytes_; }

 private:
  void AddModule(torch::nn::Module& module, const ParamsOf& params_of);
  absl::Status AddOptimizer(torch::optim::Optimizer& optimizer);

  std::vector<std::pair<at::Tensor, at::Tensor>> tensors_;  // live, copy
  std::vector<std::pair<torch::optim::Optimizer*, Dict>> optimizers_;
  std::vector<std::pair<std::string, Value>> values_;
  uint64_t bytes_ = 0;
};

// `load`'s result; if it failed, the snapshot is restored first (into `state`,
// or into the module / optimizer it was taken of when `state` is null) and a
// failed restore is appended to the message.
absl::Status RestoreOnFailure(const StateSnapshot& snapshot, State* state, absl::Status load);

}  // namespace fabric

#endif  // FABRIC_CHECKPOINT_STATE_SNAPSHOT_H_
