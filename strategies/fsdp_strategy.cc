#include "strategies/fsdp_strategy.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "checkpoint/checkpoint_kind.h"
#include "checkpoint/dcp_reader.h"
#include "checkpoint/state_io.h"
#include "checkpoint/torch_save.h"

namespace fabric::strategies {

FsdpStrategy::FsdpStrategy(std::shared_ptr<DistributedContext> context, FsdpOptions options,
                           StateDictType state_dict_type)
    : context_(std::move(context)), options_(std::move(options)),
      state_dict_type_(state_dict_type) {}
FsdpStrategy::~FsdpStrategy() = default;

absl::Status FsdpStrategy::SetupModule(const std::shared_ptr<torch::nn::Module>& module) {
  if (fsdp(*module) != nullptr) {
    return absl::InvalidArgumentError("Fabric::SetupModule: this module is already set up");
  }
  module->to(context_->device());
  FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<FullyShardedDataParallel> f,
                          FullyShardedDataParallel::Create(module, context_, options_));
  wrapped_.push_back(std::move(f));
  return absl::OkStatus();
}

FullyShardedDataParallel* FsdpStrategy::fsdp(const torch::nn::Module& module) const {
  for (const auto& f : wrapped_) {
    if (&f->module() == &module) return f.get();
  }
  return nullptr;
}

FsdpWrapperOf FsdpStrategy::wrapper_of() const {
  return [this](const torch::nn::Module& m) { return fsdp(m); };
}

absl::StatusOr<StagedWrite> FsdpStrategy::StageSave(const std::string& path, const State& state,
                                                    const StateFilter& filter,
                                                    StagingBuffers* staging) {
  for (const auto& [key, pred] : filter) {
    if (!state.Contains(key)) {
      return absl::InvalidArgumentError(absl::StrCat("filter names '", key,
                                                     "', which is not an entry of the state"));
    }
  }
  FsdpCheckpointOptions options;
  options.state_dict_type = state_dict_type_;
  options.filter = filter;
  return FsdpStageCheckpoint(path, state, wrapper_of(), context_.get(), options, staging);
}

absl::StatusOr<Dict> FsdpStrategy::Load(const std::string& path, State& state, bool strict) {
  FsdpCheckpointOptions options;
  options.state_dict_type = state_dict_type_;
  options.strict = strict;
  options.load = load_options_;
  return FsdpLoadCheckpoint(path, state, wrapper_of(), options);
}

absl::StatusOr<Dict> FsdpStrategy::LoadAll(const std::string& path) {
  if (!StatCheckpoint(path).is_sharded()) {
    FABRIC_ASSIGN_OR_RETURN(Value all, TorchLoad(path, c10::kCPU, load_options_));
    if (!all.is_dict()) return absl::InvalidArgumentError(absl::StrCat(path, ": not a dict"));
    return all.as_dict();
  }
  FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<dcp::CheckpointReader> reader,
                          dcp::CheckpointReader::Open(path, load_options_));
  FABRIC_ASSIGN_OR_RETURN(Value tree, reader->ReadStateDict());
  if (!tree.is_dict()) return absl::InvalidArgumentError(absl::StrCat(path, ": not a dict"));
  Dict out = tree.as_dict();
  const std::string meta = LightningMetaPath(path);
  if (StatCheckpoint(meta).exists_as_checkpoint()) {
    FABRIC_ASSIGN_OR_RETURN(Value m, TorchLoad(meta, c10::kCPU, load_options_));
    if (m.is_dict()) {
      for (const auto& [k, v] : m.as_dict()) out.Set(k, v);
    }
  }
  return out;
}

absl::Status FsdpStrategy::LoadRaw(const std::string& path, torch::nn::Module& module,
                                   bool strict) {
  if (fsdp(module) != nullptr) {
    return absl::UnimplementedError(absl::StrCat(
        "Fabric::LoadRaw(", path, "): loading a bare state dict into an FSDP-sharded module is "
        "not supported; load it into the module before SetupModule, or use Load with a state"));
  }
  FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<TorchFile> file, TorchFile::Open(path, load_options_));
  return LoadRawModule(*file, module, strict);
}

absl::Status FsdpStrategy::LoadRaw(const std::string& path, torch::optim::Optimizer& optimizer) {
  return absl::UnimplementedError(absl::StrCat(
      "Fabric::LoadRaw(", path, "): a bare optimizer state dict cannot be loaded into FSDP "
      "shards; use Load with a state that holds the model and the optimizer"));
}

}  // namespace fabric::strategies
