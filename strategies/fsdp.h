// Fully sharded data parallel training of a torch::nn::Module, like PyTorch's
// FSDP: every rank keeps a 1/N shard of each parameter (and so of its gradient
// and optimizer state) and materialises a unit's full parameters only while
// that unit computes.
//
// Layout (FSDP2-style, per parameter, dim-0): a parameter of d0 rows is split
// into N blocks of c = ceil(d0 / N) rows; rank r owns rows [r*c, min((r+1)*c,
// d0)) (possibly none). Its shard is a leaf tensor of exactly those rows (what
// the optimizer steps on), so a shard, its gradient and its optimizer state are
// a plain dim-0 row block of the full tensor: in a DCP checkpoint it is one
// chunk at offset (r*c, 0, ...), which any world size (and Python DCP) reads.
// A unit's shards live in one flat buffer, each in a slot of c*row_numel
// elements (padded), so one all-gather materialises a whole unit and one
// reduce-scatter shards its gradient.
//
// Units: the wrap policy picks submodules (e.g. every transformer layer); each
// parameter belongs to its nearest wrapped ancestor, the rest to the root unit.
// The module's own parameter tensors become views into their unit's "full"
// storage, whose bytes exist only while gathered (freed like FSDP1's
// _free_storage: views and tensors that autograd saved stay valid because the
// same storage is refilled before backward).
//
// LibTorch modules have no forward hooks, so the caller marks the units:
//   auto fsdp = *FullyShardedDataParallel::Create(model, ctx, options);
//   torch::optim::AdamW opt(fsdp->parameters(), ...);   // the shards
//   at::Tensor loss = fsdp->Forward([&] {              // the root forward
//     at::Tensor h = x;
//     for (auto& layer : model->layers)                 // each wrapped unit
//       h = fsdp->Call(*layer, [&] { return layer->forward(h); });
//     return head(h);
//   });
//   loss.backward();  // gradients reduce-scattered into the shards' .grad
//   opt.step();
// With ShardingStrategy::kShardGradOp the unit calls are optional: Forward()
// gathers every unit up front and keeps them until their gradients are
// reduce-scattered (ZeRO-2: full parameters live from forward to backward, but
// gradients and optimizer state stay sharded), which works with any module,
// e.g. trainers::Transformer whose forward cannot be instrumented.
//
// Collectives are blocking and issued from the forward and autograd hooks in
// the same order on every rank (the same model and the same data shapes on all
// ranks); a failed collective throws std::runtime_error from forward/backward.
#ifndef FABRIC_STRATEGIES_FSDP_H_
#define FABRIC_STRATEGIES_FSDP_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "strategies/process_group.h"

namespace torch::nn {
class Module;
}  // namespace torch::nn

namespace fabric::strategies {

// Whether the submodule at `path` (dotted, relative to the root) becomes its
// own unit. `unwrapped_numel` counts its parameters not already in a deeper
// unit (the policy is applied bottom-up, children before parents).
using FsdpWrapPolicy = std::function<bool(const std::string& path, const torch::nn::Module& module,
                                          int64_t unwrapped_numel)>;

// Wraps modules whose C++ type name (without namespaces), or Module::name(),
// is one of `type_names`, e.g. {"TransformerEncoderLayer"}.
FsdpWrapPolicy WrapModuleTypes(std::vector<std::string> type_names);
// Wraps a module once it has at least `min_numel` unwrapped parameters
// (PyTorch's size_based_auto_wrap_policy).
FsdpWrapPolicy WrapBySize(int64_t min_numel);

enum class ShardingStrategy {
  // Reshard every non-root unit after its forward and gather it again before
  // its backward (needs Call() around each unit's forward).
  kFullShard,
  // Keep full parameters from forward until the unit's gradients are
  // reduced (no Call() needed).
  kShardGradOp,
};

enum class FsdpPrecision {
  k32True,    // everything in the parameters' dtype
  // Shards, gradients of the shards and optimizer in fp32; all-gather and
  // compute in bf16; gradients are upcast to fp32 before the reduce-scatter
  // (a more accurate sum than reducing in bf16, at twice the bytes).
  kBf16Mixed,
};

struct FsdpOptions {
  FsdpWrapPolicy wrap_policy;  // null: one unit (the root)
  ShardingStrategy sharding_strategy = ShardingStrategy::kFullShard;
  FsdpPrecision precision = FsdpPrecision::k32True;
  // Broadcast rank 0's parameters and buffers before sharding.
  bool sync_module_states = true;
};

// One parameter of the sharded module.
struct FsdpParamInfo {
  std::string fqn;                // in the wrapped module's state dict
  int unit = 0;                   // index into unit_names()
  std::vector<int64_t> shape;     // of the full parameter
  at::ScalarType dtype;           // of the shard (the parameter's original dtype)
  int64_t rows = 1;               // shape[0] (1 for a 0-dim parameter)
  int64_t row_numel = 1;          // elements per row
  int64_t rows_per_rank = 1;      // ceil(rows / world_size)
  int64_t row_offset = 0;         // first row this rank owns (rank * rows_per_rank)
  int64_t local_rows = 0;         // rows this rank owns, 0..rows_per_rank
  bool requires_grad = true;
  // This rank's rows [row_offset, row_offset + local_rows): a leaf tensor of
  // shape {local_rows, shape[1:]...} (a 0-dim parameter: 0-dim on rank 0,
  // shape {0} elsewhere). What the optimizer sees.
  at::Tensor shard;

  // The box of the full tensor this rank owns (DCP chunk offsets and sizes).
  std::vector<int64_t> ChunkOffsets() const;
  std::vector<int64_t> ChunkSizes() const;
  bool owns_data() const { return local_rows > 0; }
  // This rank's part of `full`, a tensor shaped like the whole parameter (a
  // parameter, an optimizer state), shaped like `shard`.
  at::Tensor LocalRows(const at::Tensor& full) const;
};

class FullyShardedDataParallel {
 public:
  static absl::StatusOr<std::unique_ptr<FullyShardedDataParallel>> Create(
      std::shared_ptr<torch::nn::Module> module, std::shared_ptr<DistributedContext> context,
      const FsdpOptions& options = {});

  FullyShardedDataParallel(const FullyShardedDataParallel&) = delete;
  FullyShardedDataParallel& operator=(const FullyShardedDataParallel&) = delete;
  // Removes the hooks; the module's parameters stay views of freed storage
  // unless GatherFullParameters() was called.
  ~FullyShardedDataParallel();

  torch::nn::Module& module() const { return *module_; }
  const std::shared_ptr<torch::nn::Module>& module_ptr() const { return module_; }
  DistributedContext& context() const { return *context_; }
  const FsdpOptions& options() const { return options_; }

  // The shards that require grad, in the module's parameter order: create the
  // optimizer over these.
  std::vector<at::Tensor> parameters() const;
  const std::vector<FsdpParamInfo>& params() const;
  // Index into params() of the parameter whose shard is `shard` (same
  // TensorImpl), or -1.
  int FindShard(const at::Tensor& shard) const;
  // Units: the wrapped submodules' paths, root ("") last.
  std::vector<std::string> unit_names() const;
  // Elements of each unit's local flat shard buffer (padded).
  int64_t unit_shard_numel(int unit) const;

  // The root forward: gathers the root unit (and, with kShardGradOp, every
  // unit), runs `fn`, registers the pre-backward hooks on the returned
  // tensor(s) and, under kBf16Mixed, returns floating outputs as fp32.
  template <typename Fn>
  auto Forward(Fn&& fn) -> decltype(fn()) {
    BeginRootForward();
    auto out = fn();
    EndRootForward();
    Watch(out, /*unit=*/-1);
    return CastOutput(std::move(out));
  }

  // One wrapped unit's forward (`unit` is a module the wrap policy chose):
  // gathers its parameters, runs `fn`, reshards (kFullShard) and makes its
  // outputs gather the unit again before its backward. Throws
  // std::invalid_argument when `unit` is not a unit.
  template <typename Fn>
  auto Call(const torch::nn::Module& unit, Fn&& fn) -> decltype(fn()) {
    const int index = EnterUnit(unit);
    auto out = fn();
    ExitUnit(index);
    Watch(out, index);
    return out;
  }

  // bf16 under kBf16Mixed for floating tensors (inputs to a unit whose
  // weights are bf16), else `x` itself.
  at::Tensor CastInput(const at::Tensor& x) const;

  // Gathers every unit and leaves the module's parameters full (for
  // evaluation or export); the next Forward() reshards as usual. Collective.
  absl::Status GatherFullParameters();
  // Frees every gathered unit (the state after Create). Not collective.
  void Reshard();

  // The full tensor of parameter `index` assembled from every rank's
  // shard-shaped `local` (the shard itself, or an optimizer state tensor of
  // the shard's shape), in `local`'s dtype, on every rank. Collective.
  absl::StatusOr<at::Tensor> GatherFull(int index, const at::Tensor& local);
  // The same as every rank's row block, in rank order (their concatenation
  // is the flattened full tensor), without assembling it: what a streaming
  // writer needs, at the memory of one copy of the full tensor.
  absl::StatusOr<std::vector<at::Tensor>> GatherRowBlocks(int index, const at::Tensor& local);

  // While a NoSync guard lives, backward() accumulates full gradients on
  // every rank without reducing (gradient accumulation; costs a full
  // gradient per unit); the next synced backward reduces the sum.
  class [[nodiscard]] NoSyncGuard {
   public:
    NoSyncGuard(NoSyncGuard&& other) noexcept;
    NoSyncGuard(const NoSyncGuard&) = delete;
    NoSyncGuard& operator=(const NoSyncGuard&) = delete;
    NoSyncGuard& operator=(NoSyncGuard&&) = delete;
    ~NoSyncGuard();

   private:
    friend class FullyShardedDataParallel;
    NoSyncGuard(FullyShardedDataParallel* f, bool previous) : fsdp_(f), previous_(previous) {}
    FullyShardedDataParallel* fsdp_;
    bool previous_;
  };
  NoSyncGuard NoSync();

  // Counters for tests and benchmarks.
  struct Stats {
    int64_t all_gathers = 0;
    int64_t reduce_scatters = 0;
    int64_t backward_passes = 0;
  };
  Stats stats() const;

  // Internal.
  struct State;

 private:
  FullyShardedDataParallel() = default;

  void BeginRootForward();
  void EndRootForward();
  int EnterUnit(const torch::nn::Module& unit);
  void ExitUnit(int unit);
  void WatchTensor(const at::Tensor& t, int unit);
  at::Tensor CastOutputTensor(const at::Tensor& t) const;

  void Watch(const at::Tensor& t, int unit) { WatchTensor(t, unit); }
  void Watch(const std::vector<at::Tensor>& ts, int unit) {
    for (const at::Tensor& t : ts) WatchTensor(t, unit);
  }
  template <typename... Ts>
  void Watch(const std::tuple<Ts...>& ts, int unit) {
    std::apply([&](const auto&... t) { (Watch(t, unit), ...); }, ts);
  }
  template <typename T>
  void Watch(const T&, int) {}  // not a tensor: nothing to watch

  at::Tensor CastOutput(at::Tensor t) const { return CastOutputTensor(t); }
  std::vector<at::Tensor> CastOutput(std::vector<at::Tensor> ts) const {
    for (at::Tensor& t : ts) t = CastOutputTensor(t);
    return ts;
  }
  template <typename T>
  T CastOutput(T v) const {
    return v;
  }

  std::shared_ptr<torch::nn::Module> module_;
  std::shared_ptr<DistributedContext> context_;
  FsdpOptions options_;
  std::shared_ptr<State> state_;
};

}  // namespace fabric::strategies

#endif  // FABRIC_STRATEGIES_FSDP_H_
