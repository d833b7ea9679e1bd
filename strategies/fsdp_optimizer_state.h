// An FSDP-sharded model's optimizer state in PyTorch FSDP's state-dict forms
// (FSDP.optim_state_dict and optim_state_dict_to_load).
#ifndef FABRIC_STRATEGIES_FSDP_OPTIMIZER_STATE_H_
#define FABRIC_STRATEGIES_FSDP_OPTIMIZER_STATE_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "checkpoint/value.h"
#include "strategies/fsdp.h"

namespace torch::optim {
class Optimizer;
}  // namespace torch::optim

namespace fabric::strategies {

enum class OptimStateForm {
  // The optimizer's own state_dict(): parameter indices, each sharded state
  // tensor this rank's rows of its parameter (LOCAL_STATE_DICT).
  kLocal,
  // Keyed by parameter FQN (param_groups' params too); each sharded state
  // tensor is this rank's dim-0 row block of the full tensor, as FSDP2's
  // optim_state_dict holds them and as sharded checkpoints store them
  // (SHARDED_STATE_DICT).
  kSharded,
  // Keyed by FQN, each state tensor in its parameter's full shape: what an
  // optimizer over the unwrapped model in one process holds (FULL_STATE_DICT).
  kFull,
};

// The optimizer's state in `form`. `optimizer` runs over fsdp.parameters().
// kFull is a collective (every rank calls it, gathering one tensor at a
// time); with `rank0_only` the other ranks take part in the gathers and
// return an empty dict.
absl::StatusOr<Dict> FsdpOptimizerStateDict(FullyShardedDataParallel& fsdp,
                                            const torch::optim::Optimizer& optimizer,
                                            OptimStateForm form, bool rank0_only = false);

// Loads `state_dict` of `form` into `optimizer` (over fsdp.parameters()): each
// rank takes its own rows of a kFull dict (e.g. one saved by a single-process
// run, given to every rank), a kSharded dict's FQNs are mapped back to
// indices. Not a collective. Errors name the key.
absl::Status FsdpLoadOptimizerStateDict(FullyShardedDataParallel& fsdp,
                                        torch::optim::Optimizer& optimizer,
                                        const Dict& state_dict, OptimStateForm form);

}  // namespace fabric::strategies

#endif  // FABRIC_STRATEGIES_FSDP_OPTIMIZER_STATE_H_
