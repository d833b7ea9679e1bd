#include "strategies/ddp.h"

#include <algorithm>
#include <cstdint>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/nn/module.h>

#include "strategies/coalesced.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"

namespace fabric::strategies {

struct DistributedDataParallel::Reducer : std::enable_shared_from_this<Reducer> {
  struct Slot {
    at::Tensor param;
    std::string name;
    int bucket = -1;
    int64_t offset = 0;  // In the bucket's buffer, in elements.
    bool ready = false;
  };
  struct Bucket {
    std::vector<int> slots;
    at::Tensor buffer;  // Flat, the bucket's dtype and device.
    int pending = 0;    // Slots whose gradient has not arrived yet.
    bool launched = false;
    PendingCollective work;
  };

  std::shared_ptr<DistributedContext> context;
  bool auto_finish = true;

  mutable std::mutex mu;
  std::vector<Slot> slots;
  std::vector<Bucket> buckets;
  bool sync_enabled = true;
  bool in_backward = false;  // Some gradient arrived since the last finish.
  int next_bucket = 0;       // Buckets are launched strictly in order.
  absl::Status status;       // Of the current/last sync.
  int64_t syncs_completed = 0;

  void BeginIteration() {
    in_backward = true;
    next_bucket = 0;
    status = absl::OkStatus();
    for (Slot& slot : slots) slot.ready = false;
    for (Bucket& bucket : buckets) {
      bucket.pending = static_cast<int>(bucket.slots.size());
      bucket.launched = false;
      bucket.work = PendingCollective();
    }
  }

  // Copies the bucket's gradients into its buffer, pre-divided by the world
  // size (as PyTorch's default hook: the sum is then the mean), and starts
  // the all-reduce.
  void Launch(Bucket& bucket) {
    bucket.launched = true;
    if (!status.ok()) return;
    const int world = context->world_size();
    for (int index : bucket.slots) {
      Slot& slot = slots[index];
      at::Tensor view = bucket.buffer.narrow(0, slot.offset, slot.param.numel());
      const at::Tensor& grad = slot.param.grad();
      if (!grad.defined()) {
        view.zero_();
      } else if (grad.is_sparse()) {
        status = absl::UnimplementedError(
            absl::StrCat("DDP: parameter '", slot.name, "' has a sparse gradient"));
        return;
      } else {
        view.copy_(grad.reshape({-1}));
      }
    }
    if (world > 1) bucket.buffer.div_(world);
    absl::StatusOr<PendingCollective> work = context->AllReduceAsync(bucket.buffer, ReduceOp::kSum);
    if (!work.ok()) {
      status = work.status();
      return;
    }
    bucket.work = *std::move(work);
  }

  void LaunchReady() {
    while (next_bucket < static_cast<int>(buckets.size()) && buckets[next_bucket].pending == 0) {
      Launch(buckets[next_bucket++]);
    }
  }

  void OnGradReady(int index) {
    std::lock_guard<std::mutex> lock(mu);
    if (!sync_enabled) return;
    if (!in_backward) {
      BeginIteration();
      if (auto_finish) {
        std::weak_ptr<Reducer> weak = weak_from_this();
        torch::autograd::Engine::get_default_engine().queue_callback([weak] {
          std::shared_ptr<Reducer> self = weak.lock();
          if (self == nullptr) return;
          absl::Status s = self->Finish();
          // Without the averaged gradients the ranks would silently diverge:
          // fail backward() instead.
          if (!s.ok()) throw std::runtime_error(std::string(s.message()));
        });
      }
    }
    Slot& slot = slots[index];
    if (slot.ready) {
      if (buckets[slot.bucket].launched && status.ok()) {
        status = absl::FailedPreconditionError(absl::StrCat(
            "DDP: the gradient of '", slot.name,
            "' arrived twice in one sync: call FinishGradientSync() after each backward() "
            "(or keep DdpOptions.auto_finish)"));
      }
      return;
    }
    slot.ready = true;
    if (--buckets[slot.bucket].pending == 0) LaunchReady();
  }

  absl::Status Finish() {
    std::lock_guard<std::mutex> lock(mu);
    if (!in_backward) return status;
    in_backward = false;
    // Buckets with parameters that got no gradient are launched now, still
    // in order, so every rank issues the same sequence of all-reduces.
    while (next_bucket < static_cast<int>(buckets.size())) Launch(buckets[next_bucket++]);
    for (Bucket& bucket : buckets) {
      if (!bucket.work.valid()) continue;
      absl::Status s = bucket.work.Wait();
      if (!s.ok()) {
        if (status.ok()) status = s;
        continue;
      }
      if (!status.ok()) continue;
      at::NoGradGuard no_grad;
      for (int index : bucket.slots) {
        Slot& slot = slots[index];
        at::Tensor averaged =
            bucket.buffer.narrow(0, slot.offset, slot.param.numel()).view(slot.param.sizes());
        at::Tensor& grad = slot.param.mutable_grad();
        if (grad.defined()) {
          grad.copy_(averaged);
        } else {
          grad = averaged.clone();
        }
      }
    }
    if (status.ok()) ++syncs_completed;
    return status;
  }
};

namespace {

// Calls the reducer when a parameter's .grad has been accumulated.
class GradReadyHook : public torch::autograd::PostAccumulateGradHook {
 public:
  GradReadyHook(std::weak_ptr<DistributedDataParallel::Reducer> reducer, int index)
      : reducer_(std::move(reducer)), index_(index) {}
  void operator()(const torch::autograd::Variable& /*param*/) override {
    if (auto reducer = reducer_.lock()) reducer->OnGradReady(index_);
  }

 private:
  std::weak_ptr<DistributedDataParallel::Reducer> reducer_;
  int index_;
};


}  // namespace

absl::StatusOr<std::unique_ptr<DistributedDataParallel>> DistributedDataParallel::Create(
    std::shared_ptr<torch::nn::Module> module, std::shared_ptr<DistributedContext> context,
    const DdpOptions& options) {
  if (module == nullptr) return absl::InvalidArgumentError("DDP: module is null");
  if (context == nullptr) return absl::InvalidArgumentError("DDP: distributed context is null");
  if (options.bucket_cap_bytes <= 0 || options.first_bucket_cap_bytes <= 0) {
    return absl::InvalidArgumentError("DDP: bucket caps must be positive");
  }
  std::unique_ptr<DistributedDataParallel> ddp(new DistributedDataParallel());
  ddp->module_ = std::move(module);
  ddp->context_ = std::move(context);
  ddp->options_ = options;
  auto reducer = std::make_shared<Reducer>();
  reducer->context = ddp->context_;
  reducer->auto_finish = options.auto_finish;

  // Every rank must hold the same model: compare a fingerprint of the names,
  // shapes and dtypes before anything else is exchanged.
  std::string layout;
  for (const auto& item : ddp->module_->named_parameters()) {
    const at::Tensor& p = item.value();
    absl::StrAppend(&layout, item.key(), ":", absl::StrJoin(p.sizes(), "x"), ":",
                    c10::getDtypeNames(p.scalar_type()).first, ":", p.requires_grad(), ";");
    if (p.device() != ddp->context_->device()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "DDP: parameter '", item.key(), "' is on ", p.device().str(), " but the ",
          ddp->context_->backend_name(), " process group works on ",
          ddp->context_->device().str()));
    }
  }
  at::Tensor mine = at::full({1}, Fingerprint(layout),
                             at::TensorOptions().dtype(at::kLong).device(ddp->context_->device()));
  FABRIC_ASSIGN_OR_RETURN(std::vector<at::Tensor> all, ddp->context_->AllGather(mine));
  for (int r = 0; r < static_cast<int>(all.size()); ++r) {
    if (!at::equal(all[r].cpu(), mine.cpu())) {
      return absl::FailedPreconditionError(absl::StrCat(
          "DDP: rank ", r, "'s module has different parameters (names, shapes, dtypes or "
          "requires_grad) than rank ", ddp->context_->rank(), "'s"));
    }
  }

  // Buckets over the trainable parameters in reverse order.
  auto named = ddp->module_->named_parameters();
  std::vector<int> order;
  for (int i = static_cast<int>(named.size()) - 1; i >= 0; --i) {
    if (named[i].value().requires_grad()) order.push_back(i);
  }
  reducer->slots.resize(named.size());
  for (size_t i = 0; i < named.size(); ++i) {
    reducer->slots[i].param = named[i].value();
    reducer->slots[i].name = named[i].key();
  }
  int64_t cap = options.first_bucket_cap_bytes;
  int64_t filled = 0;
  for (int index : order) {
    Reducer::Slot& slot = reducer->slots[index];
    const int64_t bytes = slot.param.numel() * slot.param.element_size();
    // A parameter larger than the cap gets a bucket of its own.
    const bool fresh = reducer->buckets.empty() || filled + bytes > cap ||
                       reducer->buckets.back().buffer.scalar_type() != slot.param.scalar_type();
    if (fresh) {
      if (!reducer->buckets.empty()) cap = options.bucket_cap_bytes;
      reducer->buckets.emplace_back();
      reducer->buckets.back().buffer = at::empty({0}, slot.param.options());
      filled = 0;
    }
    Reducer::Bucket& bucket = reducer->buckets.back();
    slot.bucket = static_cast<int>(reducer->buckets.size()) - 1;
    slot.offset = filled / slot.param.element_size();
    bucket.slots.push_back(index);
    filled += bytes;
  }
  for (Reducer::Bucket& bucket : reducer->buckets) {
    int64_t numel = 0;
    for (int index : bucket.slots) numel += reducer->slots[index].param.numel();
    bucket.buffer = at::empty({numel}, bucket.buffer.options().requires_grad(false));
  }
  ddp->reducer_ = reducer;

  FABRIC_RETURN_IF_ERROR(ddp->SyncModuleStates());

  for (int index : order) {
    at::Tensor& param = reducer->slots[index].param;
    if (torch::autograd::impl::post_acc_grad_hooks(param) != nullptr) {
      return absl::FailedPreconditionError(absl::StrCat(
          "DDP: parameter '", reducer->slots[index].name,
          "' already has a post-accumulate-grad hook (is the module wrapped twice?)"));
    }
  }
  for (int index : order) {
    torch::autograd::impl::set_post_acc_grad_hooks(
        reducer->slots[index].param,
        std::make_unique<GradReadyHook>(std::weak_ptr<Reducer>(reducer), index));
  }
  return ddp;
}

DistributedDataParallel::~DistributedDataParallel() {
  if (reducer_ == nullptr) return;
  for (Reducer::Slot& slot : reducer_->slots) {
    if (slot.bucket >= 0) torch::autograd::impl::set_post_acc_grad_hooks(slot.param, nullptr);
  }
}

absl::Status DistributedDataParallel::SyncModuleStates() {
  std::vector<at::Tensor> tensors;
  for (const at::Tensor& p : module_->parameters()) tensors.push_back(p);
  if (options_.broadcast_buffers) {
    for (const at::Tensor& b : module_->buffers()) {
      if (b.defined()) tensors.push_back(b);
    }
  }
  return BroadcastCoalesced(*context_, tensors, int64_t{256} << 20);
}

absl::Status DistributedDataParallel::FinishGradientSync() { return reducer_->Finish(); }

DistributedDataParallel::NoSyncGuard::NoSyncGuard(NoSyncGuard&& other) noexcept
    : ddp_(other.ddp_), previous_(other.previous_) {
  other.ddp_ = nullptr;
}

DistributedDataParallel::NoSyncGuard::~NoSyncGuard() {
  if (ddp_ != nullptr) ddp_->set_sync_enabled(previous_);
}

DistributedDataParallel::NoSyncGuard DistributedDataParallel::NoSync() {
  bool previous = sync_enabled();
  set_sync_enabled(false);
  return NoSyncGuard(this, previous);
}

void DistributedDataParallel::set_sync_enabled(bool enabled) {
  std::lock_guard<std::mutex> lock(reducer_->mu);
  reducer_->sync_enabled = enabled;
}

bool DistributedDataParallel::sync_enabled() const {
  std::lock_guard<std::mutex> lock(reducer_->mu);
  return reducer_->sync_enabled;
}

std::vector<std::vector<int>> DistributedDataParallel::bucket_layout() const {
  std::lock_guard<std::mutex> lock(reducer_->mu);
  std::vector<std::vector<int>> layout;
  for (const Reducer::Bucket& bucket : reducer_->buckets) layout.push_back(bucket.slots);
  return layout;
}

int64_t DistributedDataParallel::syncs_completed() const {
  std::lock_guard<std::mutex> lock(reducer_->mu);
  return reducer_->syncs_completed;
}

}  // namespace fabric::strategies
