// Fabric: one small API to run a LibTorch training program on one device or
// many, and to save and load its whole state.
//
//   fabric::FabricOptions options;
//   options.devices = 2;                     // two processes, DDP
//   auto fabric = fabric::Fabric::Create(options).value();
//   fabric->Launch().IgnoreError();          // starts or joins the other ranks
//   auto model = std::make_shared<Net>();
//   fabric->SetupModule(model).IgnoreError();  // placement, DDP/FSDP wrapping
//   auto opt = std::make_shared<torch::optim::AdamW>(model->parameters(), 1e-3);
//   ...
//   fabric->Backward(loss);                  // backward + gradient sync
//   fabric::State state{{"model", model}, {"optimizer", opt}, {"step", step}};
//   fabric->Save("ckpt.pt", state);
//   absl::StatusOr<fabric::Dict> rest = fabric->Load("ckpt.pt", state);
//
// Every fallible call returns absl::Status or absl::StatusOr.
#ifndef FABRIC_FABRIC_FABRIC_H_
#define FABRIC_FABRIC_FABRIC_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "checkpoint/value.h"
#include "fabric/precision.h"
#include "checkpoint/state.h"
#include "checkpoint/state_filter.h"
#include "checkpoint/state_io.h"
#include "checkpoint/state_snapshot.h"
#include "strategies/async_checkpointer.h"
#include "strategies/fsdp.h"

namespace fabric {
namespace strategies {
class Strategy;
class Launcher;
class DistributedContext;
}  // namespace strategies

// An asynchronous save in flight (Fabric::SaveAsync): Wait() for its verdict.
using SaveHandle = strategies::SaveHandle;

struct FabricOptions {
  // "cpu", "cuda" (or "gpu") or "auto" (cuda when available).
  std::string accelerator = "auto";
  // Processes per node, one per device, and nodes; 0: from the environment
  // of a torchrun or srun launch (LOCAL_WORLD_SIZE, SLURM_NNODES, ...), else 1.
  int devices = 1;
  int num_nodes = 1;
  // Several nodes under Fabric's own launcher (the same program on every
  // node): this node's rank (-1: $NODE_RANK), node 0's address (empty:
  // $MASTER_ADDR) and port (0: $MASTER_PORT). Where the environment sets
  // them too, the two must agree.
  int node_rank = -1;
  std::string main_address;
  int main_port = 0;
  // How long the rendezvous waits for every rank (a node that never
  // arrives is named after this long).
  absl::Duration rendezvous_timeout = absl::Minutes(5);
  // How errors name the launch settings above ("--" for a program's flags).
  std::string option_prefix = "FabricOptions.";
  // "auto" (single_device for one process, ddp for more), "single_device",
  // "ddp" or "fsdp".
  std::string strategy = "auto";
  // FSDP: "sharded" checkpoints (a DCP folder, every rank writes its shards)
  // or "full" (one torch.save file written by rank 0, unit by unit).
  std::string state_dict_type = "sharded";
  // FSDP: "full_shard" (parameters gathered per unit, around each unit's
  // forward and backward: wrap each unit's forward with Fsdp(m)->Call) or
  // "shard_grad_op" (gathered for the whole step; works with any module).
  std::string sharding_strategy = "full_shard";
  // FSDP wrap policy: submodules whose type name is listed become units
  // (e.g. {"TransformerEncoderLayer"}); else, if fsdp_min_unit_numel > 0,
  // submodules with at least that many parameters; else the root alone.
  std::vector<std::string> fsdp_wrap_module_types;
  int64_t fsdp_min_unit_numel = 0;
  // "32-true", "bf16-mixed" (fp32 weights, bf16 autocast compute) or
  // "bf16-true" (bf16 weights).
  std::string precision = "32-true";
  // How long a collective may wait for the other ranks before failing.
  absl::Duration timeout = absl::Minutes(30);
  // Loads check the CRC-32 of every byte they read (every zip record, every
  // DCP item) and are all or nothing: a refused checkpoint leaves the live
  // modules, optimizers and values as they were (on every rank). False skips
  // the checksums (the structural checks and the all-or-nothing stay).
  bool verify_checksums = true;
  // Load and LoadRaw copy the parameters and buffers they may change
  // (StateSnapshot) and put them back when the load fails on any rank.
  // Optimizer state is read into new tensors and installed only once all of
  // it was read and checked, so the old state is kept without a copy (and
  // put back if a later read fails). Load copies the parameters while it
  // reads the optimizer state, so that the copy mostly hides behind the disk.
  // The cost: the parameters' copy in host memory, and the old optimizer
  // state beside the new one, until the load returns (docs/benchmarks.md).
  // False skips the copy and reads optimizer state into its live buffers: a
  // refused load still fails with the same error on every rank, but the live
  // state may then be partly loaded. For a resume into freshly built modules
  // that the program drops when the load fails.
  bool all_or_nothing_loads = true;
  // SaveAsync's bound on new staging buffers per process, in bytes: a save
  // whose host copy would need more fails (ResourceExhausted, on every rank)
  // before anything is written. 0: 90% of this process's share of the
  // host's MemAvailable (docs/async-checkpoints.md).
  int64_t max_staging_bytes = 0;
};

class Fabric {
 public:
  // Validates the options; bad values give an error naming the option.
  static absl::StatusOr<std::unique_ptr<Fabric>> Create(const FabricOptions& options);
  // The process that launched the others waits for them here (Finish()).
  ~Fabric();

  // Starts the other local processes (re-executing this program with
  // torchrun-style variables) or joins a run started by torchrun, SLURM or a
  // launching Fabric, and connects the process group. Optional for a single
  // device; required before anything else when there are several processes.
  absl::Status Launch();
  // The launching process waits for the others and reports any that failed.
  absl::Status Finish(absl::Duration timeout = absl::Minutes(10));

  // Places the module on this rank's device and prepares it for the strategy.
  // Create optimizers over module->parameters() after this call.
  absl::Status SetupModule(const std::shared_ptr<torch::nn::Module>& module);
  template <typename M>
  absl::Status SetupModule(const torch::nn::ModuleHolder<M>& module) {
    return SetupModule(std::static_pointer_cast<torch::nn::Module>(module.ptr()));
  }
  // SetupModule for a module whose optimizer already exists (single device
  // and DDP keep the parameters, so the optimizer stays valid).
  absl::Status Setup(const std::shared_ptr<torch::nn::Module>& module,
                     const std::shared_ptr<torch::optim::Optimizer>& optimizer = nullptr);
  template <typename M>
  absl::Status Setup(const torch::nn::ModuleHolder<M>& module,
                     const std::shared_ptr<torch::optim::Optimizer>& optimizer = nullptr) {
    return Setup(std::static_pointer_cast<torch::nn::Module>(module.ptr()), optimizer);
  }

  // The parameters an optimizer of `module` must be created over: the local
  // shards under FSDP, module->parameters() otherwise.
  std::vector<at::Tensor> Parameters(const std::shared_ptr<torch::nn::Module>& module);
  template <typename M>
  std::vector<at::Tensor> Parameters(const torch::nn::ModuleHolder<M>& module) {
    return Parameters(std::static_pointer_cast<torch::nn::Module>(module.ptr()));
  }
  // The FSDP wrapper of a module set up under FSDP (for Forward/Call around
  // its units), or null.
  strategies::FullyShardedDataParallel* Fsdp(const torch::nn::Module& module) const;

  // Runs a module's forward `fn`: under FSDP inside the wrapper's root
  // forward (gathering shards as needed), otherwise just fn().
  template <typename Fn>
  auto Forward(const torch::nn::Module& module, Fn&& fn) -> decltype(fn()) {
    if (strategies::FullyShardedDataParallel* f = Fsdp(module)) {
      return f->Forward(std::forward<Fn>(fn));
    }
    return fn();
  }

  // loss.backward() and the strategy's gradient synchronization.
  absl::Status Backward(const at::Tensor& loss);
  // Autocast for the configured precision while the returned guard lives
  // (a no-op for 32-true).
  AutocastGuard Autocast() const;

  // Saves `state` (modules and optimizers as their state dicts). Single
  // device and DDP: one file in torch.save's format, written by rank 0, that
  // Python's torch.load reads. Atomic: the previous file stays intact until
  // the new one is complete on disk.
  absl::Status Save(const std::string& path, const State& state, const StateFilter& filter = {});
  // Saves like Save, asynchronously (docs/async-checkpoints.md): returns once
  // this rank's part of `state` is copied into host buffers the save owns
  // (CUDA: once the device-to-host copies into pinned memory are enqueued on
  // a side stream; the GPU's next kernel, the optimizer step, waits for
  // them). Writing, the ranks' agreement and the commit then run on a
  // background thread, over a process group of their own. The checkpoint
  // holds `state` as it was at the call, bit for bit, and is complete only
  // once committed on every rank, exactly as a synchronous one. At most one
  // save is in flight: a second save (either kind), Load, Finish and the
  // destructor first wait for it, and a background failure comes back,
  // with the path and the cause, from the handle's Wait() or else from the
  // next of these calls. Memory: the staging buffers hold one copy of what
  // this rank writes and are reused by the next save of the same state.
  absl::StatusOr<SaveHandle> SaveAsync(const std::string& path, const State& state,
                                       const StateFilter& filter = {});
  // Waits for the save in flight, if any; its verdict (OK when none, or
  // when its failure was already reported).
  absl::Status WaitForSave();
  // Of the last asynchronous save that was waited for.
  strategies::AsyncSaveTimes last_async_save() const;

  // Restores `state` in place; returns the entries it did not ask for.
  absl::StatusOr<Dict> Load(const std::string& path, State& state, bool strict = true);
  // Everything in the checkpoint.
  absl::StatusOr<Dict> Load(const std::string& path);
  // A file holding a bare state dict (e.g. Python's torch.save(model.state_dict())),
  // or Hugging Face weights: a .safetensors file or a sharded folder with
  // model.safetensors.index.json (under FSDP each rank reads only its rows).
  absl::Status LoadRaw(const std::string& path, torch::nn::Module& module, bool strict = true);
  absl::Status LoadRaw(const std::string& path, torch::optim::Optimizer& optimizer);

  int global_rank() const;
  int world_size() const;
  bool is_global_zero() const { return global_rank() == 0; }
  c10::Device device() const;
  const FabricOptions& options() const { return options_; }
  // The strategy (made on first use for a single device). A Fabric of
  // several processes has none before Launch(): FailedPrecondition.
  absl::StatusOr<strategies::Strategy*> strategy();

  // Collectives across all ranks (identity operations for one process).
  absl::Status Barrier();
  absl::Status Broadcast(at::Tensor& tensor, int root = 0);
  absl::Status AllReduce(at::Tensor& tensor, strategies::ReduceOp op = strategies::ReduceOp::kSum);
  // Every rank's `tensor`, in rank order.
  absl::StatusOr<std::vector<at::Tensor>> AllGather(const at::Tensor& tensor);
  // Runs `fn` on rank 0 first, then on the others (e.g. a download or a data
  // cache that one rank should create); every rank returns the same status.
  absl::Status RankZeroFirst(const std::function<absl::Status()>& fn);
  // Prints a line on global rank 0 only.
  void Print(const std::string& line) const;
  // Checks that every rank sees the same folder `dir` (a node-local path on
  // several nodes is an error naming the ranks that do not see it). Save
  // does it for a checkpoint's folder before writing; once per folder.
  absl::Status CheckSharedFolder(const std::string& dir);

 private:
  explicit Fabric(const FabricOptions& options);
  absl::Status EnsureStrategy();
  // Every rank loads the same checkpoint (several ranks only).
  absl::Status CheckSameCheckpoint(const std::string& path);
  // A load's verdict, agreed by every rank; on failure the snapshot is put
  // back (into `state`, or the module / optimizer it was taken of).
  // What a load snapshot copies of a module: under FSDP its local shards.
  StateSnapshot::ParamsOf ShardsOf() const;
  absl::Status AllOrNothing(const StateSnapshot& snapshot, State* state, absl::Status load);

  FabricOptions options_;
  bool want_cuda_ = false;
  std::unique_ptr<strategies::Launcher> launcher_;
  std::shared_ptr<strategies::DistributedContext> context_;
  std::unique_ptr<strategies::Strategy> strategy_;
  absl::flat_hash_set<std::string> shared_folders_;  // CheckSharedFolder passed
  // Checkpoints only: made by the first SaveAsync of a multi-process run.
  std::shared_ptr<strategies::DistributedContext> checkpoint_context_;
  std::unique_ptr<strategies::AsyncCheckpointer> async_;
};

}  // namespace fabric

#endif  // FABRIC_FABRIC_FABRIC_H_
