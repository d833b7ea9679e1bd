#include "strategies/fsdp_strategy.h"

#include <sys/stat.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "checkpoint/dcp_reader.h"
#include "checkpoint/torch_save.h"

namespace fabric::strategies {
namespace {

bool IsDirectory(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

}  // namespace

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
  absl::StatusOr<std::unique_ptr<FullyShardedDataParallel>> f =
      FullyShardedDataParallel::Create(module, context_, options_);
  if (!f.ok()) return f.status();
  wrapped_.push_back(*std::move(f));
  return absl::OkStatus();
}

FullyShardedDataParallel* FsdpStrategy::fsdp(const torch::nn::Module& module) const {
  for (const auto& f : wrapped_) {
    if (&f->module() == &module) return f.get();
  }
  return nullptr;
}

absl::Status FsdpStrategy::Save(const std::string& path, const State& state,
                                const StateFilter& filter) {
  FsdpState fs = FsdpStateOf(state, [this](const torch::nn::Module& m) { return fsdp(m); });
  FsdpCheckpointOptions options;
  options.state_dict_type = state_dict_type_;
  for (const auto& [key, pred] : filter) {
    if (!state.Contains(key)) {
      return absl::InvalidArgumentError(absl::StrCat("filter names '", key,
                                                     "', which is not an entry of the state"));
    }
    // Sharded entries are filtered by name only: their values are not in
    // this process's memory as whole tensors.
    options.filter[key] = [pred = pred](std::string_view name) {
      return pred(std::string(name), Value());
    };
  }
  return FsdpSaveCheckpoint(path, fs, context_.get(), options);
}

absl::StatusOr<Dict> FsdpStrategy::Load(const std::string& path, State& state, bool strict) {
  FsdpState fs = FsdpStateOf(state, [this](const torch::nn::Module& m) { return fsdp(m); });
  FsdpCheckpointOptions options;
  options.state_dict_type = state_dict_type_;
  options.strict = strict;
  absl::StatusOr<Dict> rest = FsdpLoadCheckpoint(path, fs, context_.get(), options);
  if (rest.ok()) CopyLoadedValues(fs, state);
  return rest;
}

absl::StatusOr<Dict> FsdpStrategy::LoadAll(const std::string& path) {
  if (!IsDirectory(path)) {
    absl::StatusOr<Value> all = TorchLoad(path);
    if (!all.ok()) return all.status();
    if (!all->is_dict()) return absl::InvalidArgumentError(absl::StrCat(path, ": not a dict"));
    return all->as_dict();
  }
  absl::StatusOr<std::unique_ptr<dcp::CheckpointReader>> reader = dcp::CheckpointReader::Open(path);
  if (!reader.ok()) return reader.status();
  absl::StatusOr<Value> tree = (*reader)->ReadStateDict();
  if (!tree.ok()) return tree.status();
  if (!tree->is_dict()) return absl::InvalidArgumentError(absl::StrCat(path, ": not a dict"));
  Dict out = tree->as_dict();
  const std::string meta = absl::StrCat(path, "/", kFsdpMetaFileName);
  struct stat st;
  if (stat(meta.c_str(), &st) == 0) {
    absl::StatusOr<Value> m = TorchLoad(meta);
    if (!m.ok()) return m.status();
    if (m->is_dict()) {
      for (const auto& [k, v] : m->as_dict()) out.Set(k, v);
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
  absl::StatusOr<std::unique_ptr<TorchFile>> file = TorchFile::Open(path);
  if (!file.ok()) return file.status();
  return LoadRawModule(**file, module, strict);
}

absl::Status FsdpStrategy::LoadRaw(const std::string& path, torch::optim::Optimizer& optimizer) {
  return absl::UnimplementedError(absl::StrCat(
      "Fabric::LoadRaw(", path, "): a bare optimizer state dict cannot be loaded into FSDP "
      "shards; use Load with a state that holds the model and the optimizer"));
}

}  // namespace fabric::strategies
