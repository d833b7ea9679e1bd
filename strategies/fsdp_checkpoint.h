// Saving and loading a training state that holds FSDP-sharded models, as
// Lightning Fabric's FSDPStrategy.save_checkpoint / load_checkpoint do: the
// entry points that pick the format. The formats:
// strategies/fsdp_sharded_checkpoint.h (a DCP folder, the default) and
// strategies/fsdp_full_checkpoint.h (one torch.save file); an FSDP model's
// optimizer state in PyTorch's state-dict forms: fsdp_optimizer_state.h.
//
// The state is the one State of checkpoint/state.h: modules (sharded where
// `wrapper_of` finds their FSDP wrapper, plain otherwise), optimizers (over
// FSDP's shards or a plain model's parameters) and values (saved in
// Lightning's meta.pt). Python's torch.distributed.checkpoint (and
// Lightning) load a sharded folder into an ordinary model.
#ifndef FABRIC_STRATEGIES_FSDP_CHECKPOINT_H_
#define FABRIC_STRATEGIES_FSDP_CHECKPOINT_H_

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

// Saves `state` to `path` (a folder for kSharded, a file for kFull). A
// collective when `context` is given (every rank calls it); `context` may be
// null for a single process (plain models). Every rank returns the same
// verdict.
absl::Status FsdpSaveCheckpoint(const std::string& path, const State& state,
                                const FsdpWrapperOf& wrapper_of, DistributedContext* context,
                                const FsdpCheckpointOptions& options = {});

// The first half of FsdpSaveCheckpoint: plans this rank's part and copies it
// through `staging` (the asynchronous save); the returned write does the rest
// over the group it is given. Not a collective.
StagedWrite FsdpStageCheckpoint(const std::string& path, const State& state,
                                const FsdpWrapperOf& wrapper_of, const DistributedContext* context,
                                const FsdpCheckpointOptions& options, StagingBuffers* staging);

// Loads `path` (a DCP folder or a torch.save file, told apart by what is on
// disk) into the modules, optimizers and value entries of `state`, whatever
// the world size at save time. Returns the saved values that no entry asked
// for (Lightning returns those too). Errors name the file and the key; with
// `strict`, every missing and unexpected key is listed. Needs no collective.
absl::StatusOr<Dict> FsdpLoadCheckpoint(const std::string& path, State& state,
                                        const FsdpWrapperOf& wrapper_of,
                                        const FsdpCheckpointOptions& options = {});

}  // namespace fabric::strategies

#endif  // FABRIC_STRATEGIES_FSDP_CHECKPOINT_H_
