#ifndef FABRIC_STRATEGIES_DDP_H_
#define FABRIC_STRATEGIES_DDP_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "strategies/process_group.h"

namespace torch::nn {
class Module;
}  // namespace torch::nn

namespace fabric::strategies {

struct DdpOptions {
  // Gradients are all-reduced in buckets of about this size, filled in
  // reverse parameter order (roughly the order backward produces them).
  int64_t bucket_cap_bytes = 25 << 20;
  // A small first bucket, as in PyTorch, so communication starts early.
  int64_t first_bucket_cap_bytes = 1 << 20;
  // Broadcast the module's buffers (not only its parameters) from rank 0 at
  // setup.
  bool broadcast_buffers = true;
  // Finish the gradient sync at the end of every backward() (an autograd
  // engine callback), so optimizer.step() can follow directly. A failed sync
  // then makes backward() throw, with the collective's error. When false,
  // call FinishGradientSync() after backward().
  bool auto_finish = true;
};

// Data-parallel training over a torch::nn::Module, like PyTorch's
// DistributedDataParallel: parameters (and buffers) are broadcast from rank 0
// at setup; after backward() every rank holds the average of all ranks'
// gradients. Gradients are all-reduced asynchronously in buckets while
// backward still runs (post-accumulate-grad hooks on the parameters), in the
// same bucket order on every rank.
//
// The module is not wrapped: call its forward() directly; its state dict
// keys stay the plain module's (no "module." prefix).
class DistributedDataParallel {
 public:
  static absl::StatusOr<std::unique_ptr<DistributedDataParallel>> Create(
      std::shared_ptr<torch::nn::Module> module, std::shared_ptr<DistributedContext> context,
      const DdpOptions& options = {});

  DistributedDataParallel(const DistributedDataParallel&) = delete;
  DistributedDataParallel& operator=(const DistributedDataParallel&) = delete;
  // Removes the hooks.
  ~DistributedDataParallel();

  torch::nn::Module& module() const { return *module_; }
  const std::shared_ptr<torch::nn::Module>& module_ptr() const { return module_; }
  DistributedContext& context() const { return *context_; }

  // Waits for the bucket all-reduces of the last backward() and writes the
  // averaged gradients into the parameters' .grad. Launches the buckets that
  // are not complete (parameters without a gradient count as zero). A no-op
  // returning the last result when there is nothing to finish.
  absl::Status FinishGradientSync();

  // While a NoSync guard lives, backward() only accumulates local gradients
  // (gradient accumulation); the first synced backward after it all-reduces
  // the accumulated sum.
  class [[nodiscard]] NoSyncGuard {
   public:
    NoSyncGuard(NoSyncGuard&& other) noexcept;
    NoSyncGuard(const NoSyncGuard&) = delete;
    NoSyncGuard& operator=(const NoSyncGuard&) = delete;
    NoSyncGuard& operator=(NoSyncGuard&&) = delete;
    ~NoSyncGuard();

   private:
    friend class DistributedDataParallel;
    NoSyncGuard(DistributedDataParallel* ddp, bool previous) : ddp_(ddp), previous_(previous) {}
    DistributedDataParallel* ddp_;
    bool previous_;
  };
  NoSyncGuard NoSync();
  void set_sync_enabled(bool enabled);
  bool sync_enabled() const;

  // Broadcasts the parameters and buffers from rank 0 again.
  absl::Status SyncModuleStates();

  // Indices into module().parameters() of each bucket, in all-reduce order.
  std::vector<std::vector<int>> bucket_layout() const;
  // Completed gradient syncs (backward passes that all-reduced).
  int64_t syncs_completed() const;

  // Internal.
  struct Reducer;

 private:
  DistributedDataParallel() = default;

  std::shared_ptr<torch::nn::Module> module_;
  std::shared_ptr<DistributedContext> context_;
  DdpOptions options_;
  std::shared_ptr<Reducer> reducer_;
};

}  // namespace fabric::strategies

#endif  // FABRIC_STRATEGIES_DDP_H_
