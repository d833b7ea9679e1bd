#include "checkpoint/state_snapshot.h"

#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "checkpoint/aligned_empty.h"
#include "checkpoint/optimizer_state.h"

namespace fabric {
namespace {

// The same tree with every tensor cloned.
Value CloneTensors(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kTensor:
      return Value(v.as_tensor().detach().clone());
    case Value::Kind::kList:
    case Value::Kind::kTuple: {
      std::vector<Value> items;
      items.reserve(v.items().size());
      for (const Value& item : v.items()) items.push_back(CloneTensors(item));
      return v.is_list() ? Value::List(std::move(items)) : Value::Tuple(std::move(items));
    }
    case Value::Kind::kDict: {
      Dict d;
      for (const auto& [k, item] : v.as_dict()) d.Set(k, CloneTensors(item));
      return Value(std::move(d));
    }
    default:
      return v;
  }
}

uint64_t TensorBytes(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kTensor:
      return v.as_tensor().defined() ? v.as_tensor().nbytes() : 0;
    case Value::Kind::kList:
    case Value::Kind::kTuple: {
      uint64_t n = 0;
      for (const Value& item : v.items()) n += TensorBytes(item);
      return n;
    }
    case Value::Kind::kDict: {
      uint64_t n = 0;
      for (const auto& [k, item] : v.as_dict()) n += TensorBytes(item);
      return n;
    }
    default:
      return 0;
  }
}

}  // namespace

// In host memory: a GPU model's snapshot must not halve what the device has
// left for the load itself. Into huge pages where big (AlignedEmpty): the
// copy is all first touches, and 4 KiB faults would double its cost.
static at::Tensor HostCopy(const at::Tensor& t) {
  at::Tensor copy = AlignedEmpty(t.sizes(), t.scalar_type());
  copy.copy_(t.detach());
  return copy;
}

void StateSnapshot::AddModule(torch::nn::Module& module, const ParamsOf& params_of,
                              bool copy_now) {
  auto add = [&](const at::Tensor& t) {
    if (!t.defined()) return;
    tensors_.emplace_back(t, copy_now ? HostCopy(t) : at::Tensor());
    bytes_ += t.nbytes();
  };
  std::optional<std::vector<at::Tensor>> own;
  if (params_of) own = params_of(module);
  if (own.has_value()) {
    for (const at::Tensor& t : *own) add(t);
  } else {
    for (const auto& p : module.named_parameters(/*recurse=*/true)) add(p.value());
  }
  for (const auto& b : module.named_buffers(/*recurse=*/true)) add(b.value());
}

absl::Status StateSnapshot::AddOptimizer(torch::optim::Optimizer& optimizer, bool copy) {
  // The state dict's tensors are the optimizer's own buffers (detached).
  FABRIC_ASSIGN_OR_RETURN(Dict d, OptimizerStateDict(optimizer));
  if (!copy) {
    optimizers_.emplace_back(&optimizer, std::move(d));
    return absl::OkStatus();
  }
  Value cloned = CloneTensors(Value(std::move(d)));
  bytes_ += TensorBytes(cloned);
  optimizers_.emplace_back(&optimizer, cloned.as_dict());
  return absl::OkStatus();
}

absl::StatusOr<StateSnapshot> StateSnapshot::Of(const State& state, const ParamsOf& params_of,
                                                const LoadOptions& load) {
  FABRIC_ASSIGN_OR_RETURN(StateSnapshot s, Deferred(state, params_of, load));
  FABRIC_RETURN_IF_ERROR(s.CopyTensors());
  return s;
}

absl::StatusOr<StateSnapshot> StateSnapshot::Deferred(const State& state,
                                                      const ParamsOf& params_of,
                                                      const LoadOptions& load) {
  StateSnapshot s;
  for (const auto& [key, entry] : state.entries()) {
    switch (entry.kind()) {
      case StateEntry::Kind::kModule:
        s.AddModule(entry.module(), params_of, /*copy_now=*/false);
        break;
      case StateEntry::Kind::kOptimizer:
        FABRIC_RETURN_IF_ERROR_PREFIX(
            s.AddOptimizer(entry.optimizer(), load.into_live_optimizer_buffers), "state entry '",
            key, "': ");
        break;
      case StateEntry::Kind::kValue:
        s.values_.emplace_back(key, entry.value());
        break;
    }
  }
  return s;
}

StateSnapshot StateSnapshot::Of(torch::nn::Module& module, const ParamsOf& params_of) {
  StateSnapshot s;
  s.AddModule(module, params_of, /*copy_now=*/true);
  s.copied_ = true;
  return s;
}

absl::StatusOr<StateSnapshot> StateSnapshot::Of(torch::optim::Optimizer& optimizer,
                                                const LoadOptions& load) {
  StateSnapshot s;
  FABRIC_RETURN_IF_ERROR(s.AddOptimizer(optimizer, load.into_live_optimizer_buffers));
  s.copied_ = true;
  return s;
}

absl::Status StateSnapshot::CopyTensors() {
  if (copied_) return absl::OkStatus();
  try {
    for (auto& [live, copy] : tensors_) copy = HostCopy(live);
  } catch (const std::exception& e) {
    // Out of host memory, most likely: the load must not go on unprotected.
    for (auto& [live, copy] : tensors_) copy.reset();
    return absl::ResourceExhaustedError(absl::StrCat(
        "cannot copy the live state before loading (", bytes_,
        " bytes; FabricOptions::all_or_nothing_loads = false skips the copy): ", e.what()));
  }
  copied_ = true;
  return absl::OkStatus();
}

BackgroundCopies::BackgroundCopies(StateSnapshot* snapshot)
    : thread_([this, snapshot] { status_ = snapshot->CopyTensors(); }) {}

BackgroundCopies::~BackgroundCopies() { (void)Wait(); }

absl::Status BackgroundCopies::Wait() {
  // Concurrent callers block until the one join is done; the join orders the
  // thread's write of status_ before every read.
  std::call_once(joined_, [this] { thread_.join(); });
  return status_;
}

LoadOptions BackgroundCopies::Gating(LoadOptions load) {
  load.before_live_writes = [this] { return Wait(); };
  return load;
}

absl::Status StateSnapshot::Restore() const {
  if (copied_) {
    c10::NoGradGuard no_grad;
    for (const auto& [live, copy] : tensors_) {
      at::Tensor t = live;
      t.copy_(copy);
    }
  }
  for (const auto& [optimizer, dict] : optimizers_) {
    FABRIC_RETURN_IF_ERROR(LoadOptimizerState(*optimizer, dict));
  }
  return absl::OkStatus();
}

absl::Status StateSnapshot::Restore(State& state) const {
  FABRIC_RETURN_IF_ERROR(Restore());
  for (auto& [key, entry] : state.entries()) {
    if (!entry.is_value()) continue;
    for (const auto& [k, v] : values_) {
      if (k == key) entry.value() = v;
    }
  }
  return absl::OkStatus();
}

absl::Status RestoreOnFailure(const StateSnapshot& snapshot, State* state, absl::Status load) {
  if (load.ok()) return load;
  const absl::Status restored = state ? snapshot.Restore(*state) : snapshot.Restore();
  if (restored.ok()) return load;
  return absl::Status(load.code(),
                      absl::StrCat(load.message(), "; restoring the state as it was before the "
                                                   "load failed too: ",
                                   restored.message()));
}

}  // namespace fabric
