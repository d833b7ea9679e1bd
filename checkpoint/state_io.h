// Turning a State into the object tree of a checkpoint and back.
//
// Strategy-independent: the single-device and DDP strategies write the tree
// with TorchSave; loading restores modules and optimizers in place, reading
// tensor bytes straight from the file into their parameters.
#ifndef FABRIC_CHECKPOINT_STATE_IO_H_
#define FABRIC_CHECKPOINT_STATE_IO_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "checkpoint/load_options.h"
#include "checkpoint/torch_save.h"
#include "checkpoint/value.h"
#include "checkpoint/state.h"
#include "checkpoint/state_filter.h"

namespace fabric {

// Modules become their state dicts, optimizers their PyTorch-layout state
// dicts, plain values stay as they are; then the filter is applied.
absl::StatusOr<Dict> StateToCheckpoint(const State& state, const StateFilter& filter = {});

// Restores `state` from an opened checkpoint, as Lightning Fabric's load does:
// modules and optimizers in place, plain values written back into `state`.
// Returns the remainder: entries of the file that `state` did not ask for.
// With `strict`, a requested key missing from the file is an error, and so is
// any module key mismatch; the error lists every problem at once.
// `options.into_live_optimizer_buffers` picks where optimizer state is read.
absl::StatusOr<Dict> LoadStateFromCheckpoint(const TorchFile& file, State& state, bool strict,
                                             const LoadOptions& options = {});

// The whole file as values (modules and optimizers as their state dicts).
absl::StatusOr<Dict> LoadAllFromCheckpoint(const TorchFile& file);

// The file holds one module's (or optimizer's) state dict at its top level.
absl::Status LoadRawModule(const TorchFile& file, torch::nn::Module& module, bool strict);
absl::Status LoadRawOptimizer(const TorchFile& file, torch::optim::Optimizer& optimizer,
                              const LoadOptions& options = {});

}  // namespace fabric

#endif  // FABRIC_CHECKPOINT_STATE_IO_H_
