// Sharded FSDP checkpoints: a PyTorch DCP folder (docs/sharded-format.md).
//
// Every rank writes `__<rank>_0.distcp` with its chunks: model tensors as
// `<key>.<fqn>` (each parameter's dim-0 row block; buffers and unsharded
// modules from rank 0), optimizer state keyed by parameter name as
// FSDP.optim_state_dict makes it (`<key>.state.<fqn>.exp_avg`, sharded like
// its parameter; `<key>.state.<fqn>.step` and `<key>.param_groups.<g>.<field>`
// with `params` a list of FQNs, from rank 0). Rank 0 then writes `meta.pt`
// (torch.save of every entry that is not a model or optimizer) and, after
// gathering every rank's write results, `.metadata` last: a folder without it
// is an incomplete checkpoint and is refused on load. Loading works on any
// world size, including one process with plain modules: each rank reads only
// the saved chunks that overlap its own rows.
#ifndef FABRIC_STRATEGIES_FSDP_SHARDED_CHECKPOINT_H_
#define FABRIC_STRATEGIES_FSDP_SHARDED_CHECKPOINT_H_

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

// Plans this rank's part of the save (its shard items and, on rank 0,
// meta.pt's values), copying every tensor through `staging` (null: the live
// tensors are written). Not a collective: the returned write is (every rank
// runs it over the same group). `ctx` gives the rank and world size.
StagedWrite FsdpStageSharded(const std::string& dir, const State& state,
                             const FsdpWrapperOf& wrapper_of, const DistributedContext* ctx,
                             const FsdpCheckpointOptions& options, StagingBuffers* staging);

// A collective when `context` is given; every rank returns the same verdict.
absl::Status FsdpSaveSharded(const std::string& dir, const State& state,
                             const FsdpWrapperOf& wrapper_of, DistributedContext* context,
                             const FsdpCheckpointOptions& options);

// Not a collective. Returns the meta.pt entries no value entry asked for.
absl::StatusOr<Dict> FsdpLoadSharded(const std::string& dir, State& state,
                                     const FsdpWrapperOf& wrapper_of,
                                     const FsdpCheckpointOptions& options);

}  // namespace fabric::strategies

#endif  // FABRIC_STRATEGIES_FSDP_SHARDED_CHECKPOINT_H_
