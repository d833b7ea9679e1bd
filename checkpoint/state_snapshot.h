// StateSnapshot: a copy of what a load may change in live modules and
// optimizers, to put back when the load fails, so that a refused checkpoint
// (a CRC mismatch in the last record read, a shape error halfway) leaves the
// model and optimizer exactly as they were: loads are all or nothing.
//
// Why restore-on-failure rather than reading everything into staging tensors
// and copying after every check: the reads still go straight into the live
// parameters, and an optimizer's state, most of the bytes (Adam: two tensors
// per parameter), needs no copy at all: loads that leave the live buffers
// alone (LoadOptions::into_live_optimizer_buffers off) read it into new
// tensors installed only on success, so the snapshot just keeps the old ones
// alive. See docs/benchmarks.md for what each part costs.
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
#include "checkpoint/load_options.h"
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
  // Copies every parameter and buffer of the modules and the plain values,
  // and keeps every optimizer's state dict: its tensors cloned when `load`
  // reads into the live optimizer buffers, else only referenced (the load
  // then never writes into them). `load`: the options of the load to undo.
  //
  // Where a module's values do not live in its own parameters (FSDP: they
  // are the local shards, and the module's parameters have no storage
  // outside a forward), `params_of` returns the tensors to copy instead of
  // the parameters (the module's buffers are copied either way).
  using ParamsOf = std::function<std::optional<std::vector<at::Tensor>>(torch::nn::Module&)>;
  static absl::StatusOr<StateSnapshot> Of(const State& state, const ParamsOf& params_of = {},
                                          const LoadOptions& load = {});
  static StateSnapshot Of(torch::nn::Module& module, const ParamsOf& params_of = {});
  static absl::StatusOr<StateSnapshot> Of(torch::optim::Optimizer& optimizer,
                                          const LoadOptions& load = {});

  // Puts everything back (state: the same State the snapshot was taken of).
  absl::Status Restore(State& state) const;
  absl::Status Restore() const;  // the module / optimizer overloads

  // Bytes of tensor memory the snapshot copied (references not counted).
  uint64_t bytes() const { return bytes_; }

 private:
  void AddModule(torch::nn::Module& module, const ParamsOf& params_of);
  absl::Status AddOptimizer(torch::optim::Optimizer& optimizer, bool copy);

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
