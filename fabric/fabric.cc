#include "fabric/fabric.h"

#include <filesystem>
#include <iostream>
#include <utility>

#include <torch/cuda.h>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "checkpoint/safetensors_index.h"
#include "checkpoint/safetensors_module.h"
#include "checkpoint/load_options.h"
#include "checkpoint/state_snapshot.h"
#include "checkpoint/staging.h"
#include "strategies/cluster_environment.h"
#include "strategies/ddp_strategy.h"
#include "strategies/fsdp_safetensors.h"
#include "strategies/fsdp_strategy.h"
#include "strategies/launcher.h"
#include "strategies/process_group.h"
#include "strategies/shared_folder.h"
#include "strategies/single_device_strategy.h"
#include "strategies/strategy.h"

namespace fabric {
namespace {

LoadOptions LoadOptionsOf(const FabricOptions& options) {
  LoadOptions o;
  o.verify_checksums = options.verify_checksums;
  // All-or-nothing loads read optimizer state into new tensors, so that the
  // old state needs no copy to be put back.
  o.into_live_optimizer_buffers = !options.all_or_nothing_loads;
  return o;
}

}  // namespace

Fabric::Fabric(const FabricOptions& options) : options_(options) {}

Fabric::~Fabric() {
  if (absl::Status s = WaitForSave(); !s.ok()) std::cerr << "fabric: " << s << std::endl;
  async_.reset();
  if (launcher_ && launcher_->is_launcher()) {
    // Leave the group first: local ranks still waiting on this one fail at
    // once instead of at the collective timeout.
    strategy_.reset();
    context_.reset();
    if (absl::Status s = Finish(); !s.ok()) std::cerr << "fabric: " << s << std::endl;
  }
}

absl::StatusOr<std::unique_ptr<Fabric>> Fabric::Create(const FabricOptions& options) {
  const std::string& acc = options.accelerator;
  if (acc != "auto" && acc != "cpu" && acc != "cuda" && acc != "gpu") {
    return absl::InvalidArgumentError(absl::StrCat(
        "FabricOptions.accelerator: '", acc, "' is not one of auto, cpu, cuda, gpu"));
  }
  if (options.devices < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        options.option_prefix, "devices: must be at least 1 (or 0: from the environment), got ",
        options.devices));
  }
  if (options.num_nodes < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        options.option_prefix, "num_nodes: must be at least 1 (or 0: from the environment), got ",
        options.num_nodes));
  }
  if (options.rendezvous_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat(options.option_prefix, "rendezvous_timeout: must be positive"));
  }
  const std::string& st = options.strategy;
  if (st != "auto" && st != "single_device" && st != "ddp" && st != "fsdp") {
    return absl::InvalidArgumentError(absl::StrCat(
        "FabricOptions.strategy: '", st, "' is not one of auto, single_device, ddp, fsdp"));
  }
  if (options.state_dict_type != "sharded" && options.state_dict_type != "full") {
    return absl::InvalidArgumentError(absl::StrCat("FabricOptions.state_dict_type: '",
                                                   options.state_dict_type,
                                                   "' is not one of sharded, full"));
  }
  if (options.sharding_strategy != "full_shard" && options.sharding_strategy != "shard_grad_op") {
    return absl::InvalidArgumentError(absl::StrCat("FabricOptions.sharding_strategy: '",
                                                   options.sharding_strategy,
                                                   "' is not one of full_shard, shard_grad_op"));
  }
  if (st == "single_device" && options.devices * options.num_nodes > 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "FabricOptions.strategy: 'single_device' runs one process, but devices * num_nodes = ",
        options.devices * options.num_nodes));
  }
  FABRIC_RETURN_IF_ERROR(ParsePrecision(options.precision).status());
  std::unique_ptr<Fabric> f(new Fabric(options));
  f->want_cuda_ = acc == "cuda" || acc == "gpu" || (acc == "auto" && torch::cuda::is_available());
  if (f->want_cuda_ && !torch::cuda::is_available()) {
    return absl::FailedPreconditionError(
        "FabricOptions.accelerator: 'cuda' requested but no CUDA device is available "
        "(build with --config=cuda and run on a machine with a GPU)");
  }
  return f;
}

absl::Status Fabric::Launch() {
  if (strategy_) return absl::OkStatus();
  FABRIC_ASSIGN_OR_RETURN(strategies::ClusterEnvironment env,
                          strategies::DetectClusterEnvironment());
  const bool distributed = options_.devices * options_.num_nodes > 1 || !env.needs_launch() ||
                           options_.strategy == "ddp" || options_.strategy == "fsdp";
  if (!distributed) return EnsureStrategy();

  strategies::LaunchOptions launch;
  launch.devices = options_.devices;
  launch.num_nodes = options_.num_nodes;
  launch.node_rank = options_.node_rank;
  launch.main_address = options_.main_address;
  launch.main_port = options_.main_port;
  launch.option_prefix = options_.option_prefix;
  FABRIC_ASSIGN_OR_RETURN(launcher_, strategies::Launcher::Launch(launch));
  strategies::DistributedOptions dist;
  dist.backend = want_cuda_ ? strategies::CommBackend::kNccl : strategies::CommBackend::kGloo;
  dist.timeout = options_.timeout;
  dist.rendezvous_timeout = options_.rendezvous_timeout;
  dist.exit_on_peer_failure = true;  // No rank of any node outlives a dead one.
  FABRIC_ASSIGN_OR_RETURN(context_,
                          strategies::DistributedContext::Create(launcher_->cluster(), dist));
  if (launcher_->is_launcher()) {
    // A local rank that dies is announced to every node at once.
    std::weak_ptr<strategies::DistributedContext> weak = context_;
    launcher_->WatchChildren([weak](const std::string& failure) {
      if (auto ctx = weak.lock()) ctx->ReportFailure(failure);
    });
  }
  if (options_.strategy == "fsdp") {
    strategies::FsdpOptions fsdp;
    if (!options_.fsdp_wrap_module_types.empty()) {
      fsdp.wrap_policy = strategies::WrapModuleTypes(options_.fsdp_wrap_module_types);
    } else if (options_.fsdp_min_unit_numel > 0) {
      fsdp.wrap_policy = strategies::WrapBySize(options_.fsdp_min_unit_numel);
    }
    fsdp.sharding_strategy = options_.sharding_strategy == "shard_grad_op"
                                 ? strategies::ShardingStrategy::kShardGradOp
                                 : strategies::ShardingStrategy::kFullShard;
    fsdp.precision = options_.precision == "bf16-mixed" ? strategies::FsdpPrecision::kBf16Mixed
                                                        : strategies::FsdpPrecision::k32True;
    strategy_ = std::make_unique<strategies::FsdpStrategy>(
        context_, std::move(fsdp),
        options_.state_dict_type == "full" ? strategies::StateDictType::kFull
                                           : strategies::StateDictType::kSharded);
  } else {
    strategy_ = std::make_unique<strategies::DdpStrategy>(context_);
  }
  strategy_->set_load_options(LoadOptionsOf(options_));
  return absl::OkStatus();
}

absl::Status Fabric::EnsureStrategy() {
  if (strategy_) return absl::OkStatus();
  if (options_.devices * options_.num_nodes > 1 || options_.strategy == "ddp" ||
      options_.strategy == "fsdp") {
    return absl::FailedPreconditionError(absl::StrCat(
        "Fabric with strategy '", options_.strategy, "' on ", options_.devices * options_.num_nodes,
        " process(es): call Launch() before setting up modules or saving"));
  }
  strategy_ = std::make_unique<strategies::SingleDeviceStrategy>(
      want_cuda_ ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU));
  strategy_->set_load_options(LoadOptionsOf(options_));
  return absl::OkStatus();
}

absl::Status Fabric::Finish(absl::Duration timeout) {
  FABRIC_RETURN_IF_ERROR(WaitForSave());
  if (!launcher_ || !launcher_->is_launcher()) return absl::OkStatus();
  absl::Status s = launcher_->Finish(timeout);
  launcher_.reset();
  return s;
}

absl::StatusOr<strategies::Strategy*> Fabric::strategy() {
  FABRIC_RETURN_IF_ERROR(EnsureStrategy());
  return strategy_.get();
}

int Fabric::global_rank() const { return strategy_ ? strategy_->global_rank() : 0; }
int Fabric::world_size() const { return strategy_ ? strategy_->world_size() : 1; }

c10::Device Fabric::device() const {
  if (strategy_) return strategy_->device();
  return want_cuda_ ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU);
}

absl::Status Fabric::SetupModule(const std::shared_ptr<torch::nn::Module>& module) {
  if (!module) return absl::InvalidArgumentError("Fabric::SetupModule: module is null");
  FABRIC_RETURN_IF_ERROR(EnsureStrategy());
  FABRIC_ASSIGN_OR_RETURN(Precision precision, ParsePrecision(options_.precision));
  if (precision.param_dtype != c10::kFloat) module->to(precision.param_dtype);
  return strategy_->SetupModule(module);
}

absl::Status Fabric::Setup(const std::shared_ptr<torch::nn::Module>& module,
                           const std::shared_ptr<torch::optim::Optimizer>& optimizer) {
  (void)optimizer;  // the parameters stay the same tensors: nothing to rebind
  return SetupModule(module);
}

std::vector<at::Tensor> Fabric::Parameters(const std::shared_ptr<torch::nn::Module>& module) {
  if (strategies::FullyShardedDataParallel* f = Fsdp(*module)) return f->parameters();
  return module->parameters();
}

StateSnapshot::ParamsOf Fabric::ShardsOf() const {
  return [this](torch::nn::Module& m) -> std::optional<std::vector<at::Tensor>> {
    if (strategies::FullyShardedDataParallel* f = Fsdp(m)) return f->parameters();
    return std::nullopt;
  };
}

strategies::FullyShardedDataParallel* Fabric::Fsdp(const torch::nn::Module& module) const {
  auto* fsdp = dynamic_cast<strategies::FsdpStrategy*>(strategy_.get());
  return fsdp ? fsdp->fsdp(module) : nullptr;
}

absl::Status Fabric::Backward(const at::Tensor& loss) {
  FABRIC_RETURN_IF_ERROR(EnsureStrategy());
  return strategy_->Backward(loss);
}

AutocastGuard Fabric::Autocast() const {
  return AutocastGuard(device().type(), *ParsePrecision(options_.precision));
}

namespace {
// The folder a checkpoint at `path` is written in.
std::string FolderOf(const std::string& path) {
  const std::string parent = std::filesystem::path(path).parent_path().string();
  return parent.empty() ? "." : parent;
}
}  // namespace

absl::Status Fabric::CheckSameCheckpoint(const std::string& path) {
  if (!context_ || context_->world_size() < 2) return absl::OkStatus();
  return strategies::CheckSameCheckpoint(*context_, path);
}

absl::Status Fabric::CheckSharedFolder(const std::string& dir) {
  if (!context_ || context_->world_size() < 2 || shared_folders_.contains(dir)) {
    return absl::OkStatus();
  }
  FABRIC_RETURN_IF_ERROR(strategies::CheckSharedFolder(*context_, dir));
  shared_folders_.insert(dir);
  return absl::OkStatus();
}

absl::Status Fabric::Save(const std::string& path, const State& state, const StateFilter& filter) {
  FABRIC_RETURN_IF_ERROR(EnsureStrategy());
  FABRIC_RETURN_IF_ERROR(WaitForSave());
  FABRIC_RETURN_IF_ERROR(CheckSharedFolder(FolderOf(path)));
  return strategy_->Save(path, state, filter);
}

absl::Status Fabric::AllOrNothing(const StateSnapshot& snapshot, State* state,
                                  absl::Status load) {
  // Every rank restores when any rank failed, so that ranks never diverge.
  if (context_) load = context_->AgreeOnStatus(load);
  return RestoreOnFailure(snapshot, state, std::move(load));
}

absl::StatusOr<SaveHandle> Fabric::SaveAsync(const std::string& path, const State& state,
                                             const StateFilter& filter) {
  FABRIC_RETURN_IF_ERROR(EnsureStrategy());
  FABRIC_RETURN_IF_ERROR(WaitForSave());
  FABRIC_RETURN_IF_ERROR(CheckSharedFolder(FolderOf(path)));
  if (!async_) async_ = std::make_unique<strategies::AsyncCheckpointer>();
  if (context_ && !checkpoint_context_) {
    FABRIC_ASSIGN_OR_RETURN(checkpoint_context_, context_->NewGroup("checkpoint"));
  }
  const absl::Time t0 = absl::Now();
  StagingBuffers& buffers = async_->buffers();
  // A second copy of the state that does not fit is an error, not a swap
  // storm or the OOM killer.
  buffers.BeginStaging(options_.max_staging_bytes > 0
                           ? options_.max_staging_bytes
                           : StagingBudget(context_ ? context_->cluster().local_world_size : 1));
  absl::StatusOr<strategies::StagedWrite> write =
      strategy_->StageSave(path, state, filter, &buffers);
  absl::Status staged = buffers.EndStaging();
  // Every rank starts its write or none does (a write alone would wait for
  // the others' collectives until the timeout).
  if (context_ && context_->world_size() > 1) staged = context_->AgreeOnStatus(staged);
  if (write.ok() && !staged.ok()) {
    write = absl::Status(staged.code(), absl::StrCat("SaveAsync(", path, ") on rank ",
                                                     global_rank(), ": ", staged.message()));
  }
  FABRIC_RETURN_IF_ERROR(write.status());
  return async_->Start(path, *std::move(write), checkpoint_context_.get(), absl::Now() - t0);
}

absl::Status Fabric::WaitForSave() {
  if (!async_) return absl::OkStatus();
  return async_->WaitForPending();
}

strategies::AsyncSaveTimes Fabric::last_async_save() const {
  return async_ ? async_->last_times() : strategies::AsyncSaveTimes{};
}

absl::StatusOr<Dict> Fabric::Load(const std::string& path, State& state, bool strict) {
  FABRIC_RETURN_IF_ERROR(EnsureStrategy());
  FABRIC_RETURN_IF_ERROR(WaitForSave());
  FABRIC_RETURN_IF_ERROR(CheckSameCheckpoint(path));
  if (!options_.all_or_nothing_loads) return strategy_->Load(path, state, strict);
  // The parameters' copy runs while the load reads the optimizer state; the
  // load waits for it before its first write into a live tensor.
  FABRIC_ASSIGN_OR_RETURN(StateSnapshot snapshot,
                          StateSnapshot::Deferred(state, ShardsOf(), LoadOptionsOf(options_)));
  absl::StatusOr<Dict> rest;
  {
    BackgroundCopies copies(&snapshot);
    strategy_->set_load_options(copies.Gating(LoadOptionsOf(options_)));
    rest = strategy_->Load(path, state, strict);
    strategy_->set_load_options(LoadOptionsOf(options_));
    // A load that wrote nothing live may not have waited.
    (void)copies.Wait();
  }
  FABRIC_RETURN_IF_ERROR(AllOrNothing(snapshot, &state, rest.status()));
  return rest;
}

absl::StatusOr<Dict> Fabric::Load(const std::string& path) {
  FABRIC_RETURN_IF_ERROR(EnsureStrategy());
  FABRIC_RETURN_IF_ERROR(WaitForSave());
  FABRIC_RETURN_IF_ERROR(CheckSameCheckpoint(path));
  return strategy_->LoadAll(path);
}

absl::Status Fabric::LoadRaw(const std::string& path, torch::nn::Module& module, bool strict) {
  FABRIC_RETURN_IF_ERROR(EnsureStrategy());
  FABRIC_RETURN_IF_ERROR(WaitForSave());
  const StateSnapshot snapshot =
      options_.all_or_nothing_loads ? StateSnapshot::Of(module, ShardsOf()) : StateSnapshot();
  absl::Status loaded;
  if (IsSafetensorsPath(path)) {
    // Hugging Face weights: every rank reads what it holds (FSDP: its rows).
    absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> checkpoint =
        SafetensorsCheckpoint::Open(path);
    if (!checkpoint.ok()) {
      loaded = checkpoint.status();
    } else if (strategies::FullyShardedDataParallel* f = Fsdp(module)) {
      loaded = strategies::FsdpLoadSafetensors(*f, **checkpoint, strict).status();
    } else {
      loaded = LoadSafetensorsModule(**checkpoint, module, strict).status();
    }
  } else {
    loaded = strategy_->LoadRaw(path, module, strict);
  }
  return AllOrNothing(snapshot, nullptr, loaded);
}

absl::Status Fabric::LoadRaw(const std::string& path, torch::optim::Optimizer& optimizer) {
  FABRIC_RETURN_IF_ERROR(EnsureStrategy());
  StateSnapshot snapshot;
  if (options_.all_or_nothing_loads) {
    FABRIC_ASSIGN_OR_RETURN(snapshot, StateSnapshot::Of(optimizer, LoadOptionsOf(options_)));
  }
  return AllOrNothing(snapshot, nullptr, strategy_->LoadRaw(path, optimizer));
}

absl::Status Fabric::Barrier() {
  if (!strategy_) return absl::OkStatus();
  return strategy_->Barrier();
}

absl::Status Fabric::Broadcast(at::Tensor& tensor, int root) {
  if (!context_) return absl::OkStatus();
  return context_->Broadcast(tensor, root);
}

absl::Status Fabric::AllReduce(at::Tensor& tensor, strategies::ReduceOp op) {
  if (!context_) return absl::OkStatus();
  return context_->AllReduce(tensor, op);
}

absl::StatusOr<std::vector<at::Tensor>> Fabric::AllGather(const at::Tensor& tensor) {
  if (!context_) return std::vector<at::Tensor>{tensor};
  return context_->AllGather(tensor);
}

absl::Status Fabric::RankZeroFirst(const std::function<absl::Status()>& fn) {
  if (!context_) return fn();
  return context_->RankZeroFirst(fn);
}

void Fabric::Print(const std::string& line) const {
  if (is_global_zero()) std::cout << line << std::endl;
}

}  // namespace fabric
