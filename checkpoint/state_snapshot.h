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
// alive. The parameters' copy can run while the load reads optimizer state
// (Deferred + BackgroundCopies). See docs/benchmarks.md for what each part
// costs.
#ifndef FABRIC_CHECKPOINT_STATE_SNAPSHOT_H_
#define FABRIC_CHECKPOINT_STATE_SNAPSHOT_H_

#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
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

  // Of(state, ...) with the copies of the module tensors left to
  // CopyTensors(), to run on another thread while the load reads what it
  // does not write live (BackgroundCopies). Until CopyTensors() returned,
  // nothing may write those tensors; until then Restore() leaves them alone
  // (no load has written them) and puts back the rest.
  static absl::StatusOr<StateSnapshot> Deferred(const State& state, const ParamsOf& params_of,
                                                const LoadOptions& load);
  absl::Status CopyTensors();

  // Puts everything back (state: the same State the snapshot was taken of).
  absl::Status Restore(State& state) const;
  absl::Status Restore() const;  // the module / optimizer overloads

  // Bytes of tensor memory the snapshot copied (references not counted).
  uint64_t bytes() const { return bytes_; }

 private:
  void AddModule(torch::nn::Module& module, const ParamsOf& params_of, bool copy_now);
  absl::Status AddOptimizer(torch::optim::Optimizer& optimizer, bool copy);

  std::vector<std::pair<at::Tensor, at::Tensor>> tensors_;  // live, copy
  bool copied_ = false;  // the copies in tensors_ are taken
  std::vector<std::pair<torch::optim::Optimizer*, Dict>> optimizers_;
  std::vector<std::pair<std::string, Value>> values_;
  uint64_t bytes_ = 0;
};

// Runs a deferred snapshot's CopyTensors() on its own thread from
// construction. Wait() joins it and returns its status; a load calls it as
// its LoadOptions::before_live_writes. The destructor waits too.
class BackgroundCopies {
 public:
  explicit BackgroundCopies(StateSnapshot* snapshot);
  ~BackgroundCopies();
  BackgroundCopies(const BackgroundCopies&) = delete;
  BackgroundCopies& operator=(const BackgroundCopies&) = delete;

  absl::Status Wait();  // thread-safe; every call returns the same status
  // `load` with before_live_writes set to Wait() (valid while this lives).
  LoadOptions Gating(LoadOptions load);

 private:
  absl::Status status_;  // before thread_: set by it
  std::once_flag joined_;
  std::thread thread_;
};

// `load`'s result; if it failed, the snapshot is restored first (into `state`,
// or into the module / optimizer it was taken of when `state` is null) and a
// failed restore is appended to the message.
absl::Status RestoreOnFailure(const StateSnapshot& snapshot, State* state, absl::Status load);

}  // namespace fabric

#endif  // FABRIC_CHECKPOINT_STATE_SNAPSHOT_H_
