#include "strategies/single_file_strategy.h"

#include <memory>
#include <utility>

#include "base/status_macros.h"
#include "checkpoint/checkpoint_kind.h"
#include "checkpoint/staging.h"
#include "checkpoint/state_io.h"
#include "checkpoint/torch_save.h"
#include "strategies/fsdp_checkpoint.h"
#include "strategies/process_group.h"

namespace fabric::strategies {

absl::StatusOr<StagedWrite> SingleFileStrategy::StageSave(const std::string& path,
                                                          const State& state,
                                                          const StateFilter& filter,
                                                          StagingBuffers* staging) {
  const bool writes = global_rank() == 0;
  absl::StatusOr<Value> tree = Value();
  if (writes) {
    absl::StatusOr<Dict> d = StateToCheckpoint(state, filter);
    if (d.ok()) {
      tree = StageOrPass(staging, Value(*std::move(d)));
    } else {
      tree = d.status();
    }
  }
  return StagedWrite([path, tree = std::move(tree), writes](DistributedContext* ctx) {
    absl::Status result = !writes ? absl::OkStatus()
                          : tree.ok() ? TorchSave(path, *tree)
                                      : tree.status();
    if (ctx == nullptr) return result;
    return ctx->ShareStatus(result);
  });
}

absl::StatusOr<Dict> SingleFileStrategy::Load(const std::string& path, State& state, bool strict) {
  if (StatCheckpoint(path).is_sharded()) {
    // A sharded (DCP) checkpoint from an FSDP run: every rank reads the
    // chunks of whole tensors it needs; no process group is involved.
    FsdpCheckpointOptions options;
    options.strict = strict;
    options.load = load_options_;
    return FsdpLoadCheckpoint(path, state, /*wrapper_of=*/nullptr, options);
  }
  FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<TorchFile> file, TorchFile::Open(path, load_options_));
  return LoadStateFromCheckpoint(*file, state, strict, load_options_);
}

absl::StatusOr<Dict> SingleFileStrategy::LoadAll(const std::string& path) {
  FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<TorchFile> file, TorchFile::Open(path, load_options_));
  return LoadAllFromCheckpoint(*file);
}

absl::Status SingleFileStrategy::LoadRaw(const std::string& path, torch::nn::Module& module,
                                         bool strict) {
  FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<TorchFile> file, TorchFile::Open(path, load_options_));
  return LoadRawModule(*file, module, strict);
}

absl::Status SingleFileStrategy::LoadRaw(const std::string& path,
                                         torch::optim::Optimizer& optimizer) {
  FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<TorchFile> file, TorchFile::Open(path, load_options_));
  return LoadRawOptimizer(*file, optimizer, load_options_);
}

}  // namespace fabric::strategies
