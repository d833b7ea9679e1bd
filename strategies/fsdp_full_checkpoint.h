// Full FSDP checkpoints: one torch.save file written by rank 0,
// {<model key>: state_dict, <optimizer key>: {state: {fqn: ...},
// param_groups: [...]}, <other keys>: values}. It is gathered one parameter
// (or optimizer state tensor) at a time and streamed to the file, so rank 0
// never holds more than one full parameter beyond its shards. It loads on any
// world size and in a single-device program (module_state.h).
#ifndef FABRIC_STRATEGIES_FSDP_FULL_CHECKPOINT_H_
#define FABRIC_STRATEGIES_FSDP_FULL_CHECKPOINT_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "checkpoint/state.h"
#include "checkpoint/value.h"
#include "strategies/fsdp_checkpoint_options.h"
#include "strategies/process_group.h"
#include "strategies/staged_write.h"

namespace fabric {
class StagingBuffers;
}  // namespace fabric

namespace fabric::strategies {

// Plans the file (its tree and records) and copies what this rank sends
// through `staging` (null: the live tensors are sent): rank 0 every tensor
// (its rows of sharded ones), the others their rows of sharded ones. Not a
// collective: the returned write is, gathering rows over the group it is
// given. `ctx` gives the rank.
StagedWrite FsdpStageFull(const std::string& path, const State& state,
                          const FsdpWrapperOf& wrapper_of, const DistributedContext* ctx,
                          const FsdpCheckpointOptions& options, StagingBuffers* staging);

// A collective when `context` is given; every rank returns the same verdict.
absl::Status FsdpSaveFull(const std::string& path, const State& state,
                          const FsdpWrapperOf& wrapper_of, DistributedContext* context,
                          const FsdpCheckpointOptions& options);

// Not a collective: each rank reads its own rows. Returns the file's entries
// that `state` did not ask for.
absl::StatusOr<Dict> FsdpLoadFull(const std::string& path, State& state,
                                  const FsdpWrapperOf& wrapper_of,
                                  const FsdpCheckpointOptions& options);

}  // namespace fabric::strategies

#endif  // FABRIC_STRATEGIES_FSDP_FULL_CHECKPOINT_H_
