#include "strategies/fsdp_checkpoint.h"

#include "absl/strings/str_cat.h"
#include "checkpoint/checkpoint_kind.h"
#include "strategies/fsdp_full_checkpoint.h"
#include "strategies/fsdp_sharded_checkpoint.h"

namespace fabric::strategies {

absl::Status FsdpSaveCheckpoint(const std::string& path, const State& state,
                                const FsdpWrapperOf& wrapper_of, DistributedContext* context,
                                const FsdpCheckpointOptions& options) {
  if (options.state_dict_type == StateDictType::kFull) {
    return FsdpSaveFull(path, state, wrapper_of, context, options);
  }
  return FsdpSaveSharded(path, state, wrapper_of, context, options);
}

StagedWrite FsdpStageCheckpoint(const std::string& path, const State& state,
                                const FsdpWrapperOf& wrapper_of, const DistributedContext* context,
                                const FsdpCheckpointOptions& options, StagingBuffers* staging) {
  if (options.state_dict_type == StateDictType::kFull) {
    return FsdpStageFull(path, state, wrapper_of, context, options, staging);
  }
  return FsdpStageSharded(path, state, wrapper_of, context, options, staging);
}

absl::StatusOr<Dict> FsdpLoadCheckpoint(const std::string& path, State& state,
                                        const FsdpWrapperOf& wrapper_of,
                                        const FsdpCheckpointOptions& options) {
  const CheckpointLayout layout = StatCheckpoint(path);
  if (layout.is_sharded()) return FsdpLoadSharded(path, state, wrapper_of, options);
  if (!layout.is_single_file()) return absl::NotFoundError(absl::StrCat("no checkpoint at ", path));
  return FsdpLoadFull(path, state, wrapper_of, options);
}

}  // namespace fabric::strategies
