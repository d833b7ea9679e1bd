#include "strategies/single_file_strategy.h"

#include <sys/stat.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "checkpoint/torch_save.h"
#include "strategies/fsdp_checkpoint.h"

namespace fabric::strategies {

absl::Status Strategy::Backward(const at::Tensor& loss) {
  try {
    loss.backward();
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("backward failed: ", e.what()));
  }
  return absl::OkStatus();
}

namespace {

// Rank 0's outcome, shared so that every rank returns the same verdict.
absl::Status AgreeOnRankZero(DistributedContext* context, const absl::Status& rank_zero) {
  if (context == nullptr || context->world_size() == 1) return rank_zero;
  absl::StatusOr<std::string> message = context->BroadcastBytes(
      context->rank() == 0 ? (rank_zero.ok() ? std::string() : rank_zero.ToString())
                           : std::string());
  if (!message.ok()) return message.status();
  if (context->rank() == 0) return rank_zero;
  if (message->empty()) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("rank 0 failed to save: ", *message));
}

absl::StatusOr<std::unique_ptr<TorchFile>> OpenCheckpoint(const std::string& path) {
  return TorchFile::Open(path);
}

}  // namespace

absl::Status SingleFileStrategy::Save(const std::string& path, const State& state,
                                      const StateFilter& filter) {
  absl::Status result = absl::OkStatus();
  if (global_rank() == 0) {
    absl::StatusOr<Dict> tree = StateToCheckpoint(state, filter);
    result = tree.ok() ? TorchSave(path, Value(*std::move(tree))) : tree.status();
  }
  return AgreeOnRankZero(context(), result);
}

absl::StatusOr<Dict> SingleFileStrategy::Load(const std::string& path, State& state, bool strict) {
  struct stat st;
  if (stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    // A sharded (DCP) checkpoint from an FSDP run: every rank reads the
    // chunks of whole tensors it needs; no process group is involved.
    FsdpState fs = FsdpStateOf(state);
    FsdpCheckpointOptions options;
    options.strict = strict;
    absl::StatusOr<Dict> rest = FsdpLoadCheckpoint(path, fs, nullptr, options);
    if (!rest.ok()) return rest.status();
    CopyLoadedValues(fs, state);
    return rest;
  }
  absl::StatusOr<std::unique_ptr<TorchFile>> file = OpenCheckpoint(path);
  if (!file.ok()) return file.status();
  return LoadStateFromCheckpoint(**file, state, strict);
}

absl::StatusOr<Dict> SingleFileStrategy::LoadAll(const std::string& path) {
  absl::StatusOr<std::unique_ptr<TorchFile>> file = OpenCheckpoint(path);
  if (!file.ok()) return file.status();
  return LoadAllFromCheckpoint(**file);
}

absl::Status SingleFileStrategy::LoadRaw(const std::string& path, torch::nn::Module& module,
                                         bool strict) {
  absl::StatusOr<std::unique_ptr<TorchFile>> file = OpenCheckpoint(path);
  if (!file.ok()) return file.status();
  return LoadRawModule(**file, module, strict);
}

absl::Status SingleFileStrategy::LoadRaw(const std::string& path,
                                         torch::optim::Optimizer& optimizer) {
  absl::StatusOr<std::unique_ptr<TorchFile>> file = OpenCheckpoint(path);
  if (!file.ok()) return file.status();
  return LoadRawOptimizer(**file, optimizer);
}

absl::Status SingleDeviceStrategy::SetupModule(const std::shared_ptr<torch::nn::Module>& module) {
  module->to(device_);
  return absl::OkStatus();
}

DdpStrategy::DdpStrategy(std::shared_ptr<DistributedContext> context, DdpOptions options)
    : context_(std::move(context)), options_(options) {}
DdpStrategy::~DdpStrategy() = default;

c10::Device DdpStrategy::device() const { return context_->device(); }
int DdpStrategy::global_rank() const { return context_->rank(); }
int DdpStrategy::world_size() const { return context_->world_size(); }

absl::Status DdpStrategy::SetupModule(const std::shared_ptr<torch::nn::Module>& module) {
  module->to(context_->device());
  absl::StatusOr<std::unique_ptr<DistributedDataParallel>> ddp =
      DistributedDataParallel::Create(module, context_, options_);
  if (!ddp.ok()) return ddp.status();
  wrapped_.push_back(*std::move(ddp));
  return absl::OkStatus();
}

absl::Status DdpStrategy::Backward(const at::Tensor& loss) {
  if (absl::Status s = Strategy::Backward(loss); !s.ok()) return s;
  for (auto& ddp : wrapped_) {
    if (absl::Status s = ddp->FinishGradientSync(); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status DdpStrategy::Barrier() { return context_->Barrier(); }

DistributedDataParallel* DdpStrategy::ddp(const torch::nn::Module& module) const {
  for (const auto& d : wrapped_) {
    if (&d->module() == &module) return d.get();
  }
  return nullptr;
}

}  // namespace fabric::strategies
