// What FSDP checkpoint saves and loads are told: the format, the filter, and
// how to find the FSDP wrapper of a module of the state.
#ifndef FABRIC_STRATEGIES_FSDP_CHECKPOINT_OPTIONS_H_
#define FABRIC_STRATEGIES_FSDP_CHECKPOINT_OPTIONS_H_

#include <functional>
#include <vector>

#include "checkpoint/load_options.h"
#include "checkpoint/state_filter.h"

namespace torch::nn {
class Module;
}  // namespace torch::nn

namespace fabric::strategies {

class FullyShardedDataParallel;

// The FSDP wrapper of a module of the state, or null for a plain
// (replicated or single-process) module.
using FsdpWrapperOf = std::function<FullyShardedDataParallel*(const torch::nn::Module&)>;

// A lookup over `wrappers`, by the module each wraps.
FsdpWrapperOf WrapperLookup(std::vector<FullyShardedDataParallel*> wrappers);

enum class StateDictType { kSharded, kFull };

struct FsdpCheckpointOptions {
  StateDictType state_dict_type = StateDictType::kSharded;
  // As Lightning's `filter`: per state key, which top-level names of the
  // converted entry to keep (a model's state dict keys; an optimizer's
  // "state" / "param_groups"; a dict value's keys). The value passed is the
  // one this rank holds: a sharded parameter's local shard (as Lightning's
  // DTensor), a buffer or plain parameter's tensor, the optimizer's state
  // dict parts.
  StateFilter filter;
  // Load: missing and unexpected keys are errors (they are always listed).
  bool strict = true;
  // Load: checksums checked or not (FabricOptions.verify_checksums).
  LoadOptions load;
  bool direct_io = true;
  // Testing: runs on every rank after its shard file is written and before
  // the checkpoint is committed (e.g. to kill a rank mid-save).
  std::function<void()> before_commit;
};

}  // namespace fabric::strategies

#endif  // FABRIC_STRATEGIES_FSDP_CHECKPOINT_OPTIONS_H_
