#include "strategies/fsdp.h"

#include <algorithm>
#include <cstdint>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/Storage.h>
#include <c10/util/Type.h>
#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/nn/module.h>

#include "strategies/coalesced.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "checkpoint/aligned_empty.h"

namespace fabric::strategies {

std::vector<int64_t> FsdpParamInfo::ChunkOffsets() const {
  std::vector<int64_t> offsets(shape.size(), 0);
  if (!offsets.empty()) offsets[0] = row_offset;
  return offsets;
}

at::Tensor FsdpParamInfo::LocalRows(const at::Tensor& full) const {
  if (shape.empty()) return owns_data() ? full : full.reshape({1}).narrow(0, 0, 0);
  return full.narrow(0, row_offset, local_rows);
}

std::vector<int64_t> FsdpParamInfo::ChunkSizes() const {
  std::vector<int64_t> sizes = shape;
  if (!sizes.empty()) sizes[0] = local_rows;
  return sizes;
}

FsdpWrapPolicy WrapModuleTypes(std::vector<std::string> type_names) {
  return [names = std::move(type_names)](const std::string&, const torch::nn::Module& module,
                                         int64_t) {
    std::string full = module.name();
    std::string base = full;
    if (auto pos = base.rfind("::"); pos != std::string::npos) base = base.substr(pos + 2);
    for (const std::string& n : names) {
      if (n == base || n == full) return true;
    }
    return false;
  };
}

FsdpWrapPolicy WrapBySize(int64_t min_numel) {
  return [min_numel](const std::string&, const torch::nn::Module&, int64_t unwrapped) {
    return unwrapped > 0 && unwrapped >= min_numel;
  };
}

namespace {

// A fresh tensor (its own TensorImpl and version counter, no autograd
// relation) over `storage`: writes through it are invisible to autograd.
at::Tensor OnStorage(const c10::Storage& storage, at::ScalarType dtype, int64_t offset,
                     c10::IntArrayRef sizes) {
  at::Tensor t = at::empty({0}, at::TensorOptions().dtype(dtype).device(storage.device()));
  std::vector<int64_t> strides(sizes.size(), 1);
  for (int i = static_cast<int>(sizes.size()) - 2; i >= 0; --i) {
    strides[i] = strides[i + 1] * std::max<int64_t>(sizes[i + 1], 1);
  }
  t.set_(storage, offset, sizes, strides);
  return t;
}

c10::Storage NewStorage(int64_t nbytes, const c10::Device& device) {
  at::Tensor bytes = at::empty({nbytes}, at::TensorOptions().dtype(at::kByte).device(device));
  return bytes.storage();
}


}  // namespace

struct FullyShardedDataParallel::State : std::enable_shared_from_this<State> {
  struct Unit {
    std::string name;
    const torch::nn::Module* module = nullptr;  // null for the root
    std::vector<int> params;
    int64_t shard_numel = 0;  // S: the flat shard, padded slots
    int64_t full_numel = 0;   // unpadded full parameters
    at::ScalarType dtype = at::kFloat;          // of the shards
    at::ScalarType compute_dtype = at::kFloat;  // of the full parameters
    at::Tensor flat_shard;
    c10::Storage full_storage;
    int64_t full_nbytes = 0;
    bool gathered = false;
    bool all_trainable = true;
    int trainable = 0;  // parameters that require grad
    int pending = 0;    // of those, gradients not arrived in this backward
    bool reduced = false;
  };

  std::shared_ptr<DistributedContext> ctx;
  int world = 1, rank = 0;
  ShardingStrategy strategy = ShardingStrategy::kFullShard;
  FsdpPrecision precision = FsdpPrecision::k32True;
  c10::Device device = c10::kCPU;

  std::vector<FsdpParamInfo> params;
  std::vector<at::Tensor> full;  // the module's own parameter tensors
  std::vector<Unit> units;       // root last
  std::unordered_map<const torch::nn::Module*, int> unit_of_module;
  std::unordered_map<const c10::TensorImpl*, int> shard_index;

  std::recursive_mutex mu;
  bool in_backward = false;
  bool sync_enabled = true;
  Stats stats;

  int root() const { return static_cast<int>(units.size()) - 1; }

  absl::Status Gather(int u) {
    Unit& unit = units[u];
    if (unit.gathered) return absl::OkStatus();
    at::NoGradGuard no_grad;
    c10::StorageImpl* impl = unit.full_storage.unsafeGetStorageImpl();
    impl->set_data_ptr_noswap(impl->allocator()->allocate(unit.full_nbytes));
    impl->set_nbytes(unit.full_nbytes);
    unit.gathered = true;
    at::Tensor send = unit.flat_shard;
    if (unit.compute_dtype != unit.dtype) send = send.to(unit.compute_dtype);
    std::vector<at::Tensor> parts;
    if (world == 1) {
      parts.push_back(send);
    } else {
      absl::StatusOr<std::vector<at::Tensor>> all = ctx->AllGather(send);
      if (!all.ok()) {
        return absl::Status(all.status().code(),
                            absl::StrCat("FSDP: gathering unit '", unit.name, "': ",
                                         all.status().message()));
      }
      parts = *std::move(all);
    }
    ++stats.all_gathers;
    at::Tensor dst_all = OnStorage(unit.full_storage, unit.compute_dtype, 0, {unit.full_numel});
    for (int index : unit.params) {
      const FsdpParamInfo& p = params[index];
      at::Tensor dst = dst_all.narrow(0, FullOffset(index), p.rows * p.row_numel)
                           .view({p.rows, p.row_numel});
      for (int r = 0; r < world; ++r) {
        const int64_t n = std::clamp<int64_t>(p.rows - r * p.rows_per_rank, 0, p.rows_per_rank);
        if (n == 0) continue;
        dst.narrow(0, r * p.rows_per_rank, n)
            .copy_(parts[r].narrow(0, ShardOffset(index), n * p.row_numel).view({n, p.row_numel}));
      }
    }
    return absl::OkStatus();
  }

  void Free(int u) {
    Unit& unit = units[u];
    if (!unit.gathered) return;
    c10::StorageImpl* impl = unit.full_storage.unsafeGetStorageImpl();
    impl->set_data_ptr_noswap(at::DataPtr(nullptr, impl->device()));
    impl->set_nbytes(0);
    unit.gathered = false;
  }

  // Offsets are kept beside the public infos.
  std::vector<int64_t> shard_offsets, full_offsets;
  int64_t ShardOffset(int index) const { return shard_offsets[index]; }
  int64_t FullOffset(int index) const { return full_offsets[index]; }

  void BeginBackwardIfNeeded() {
    if (in_backward) return;
    in_backward = true;
    for (Unit& unit : units) {
      unit.pending = unit.trainable;
      unit.reduced = false;
    }
    std::weak_ptr<State> weak = weak_from_this();
    torch::autograd::Engine::get_default_engine().queue_callback([weak] {
      std::shared_ptr<State> self = weak.lock();
      if (self == nullptr) return;
      absl::Status s = self->FinishBackward();
      if (!s.ok()) throw std::runtime_error(std::string(s.message()));
    });
  }

  void OnPreBackward(int u) {
    std::lock_guard<std::recursive_mutex> lock(mu);
    BeginBackwardIfNeeded();
    absl::Status s = Gather(u < 0 ? root() : u);
    if (!s.ok()) throw std::runtime_error(std::string(s.message()));
  }

  void OnGrad(int index) {
    std::lock_guard<std::recursive_mutex> lock(mu);
    BeginBackwardIfNeeded();
    if (!sync_enabled) return;
    Unit& unit = units[params[index].unit];
    if (unit.reduced) return;
    if (--unit.pending > 0) return;
    absl::Status s = Reduce(params[index].unit);
    if (!s.ok()) throw std::runtime_error(std::string(s.message()));
  }

  // Reduce-scatters the unit's full gradients (missing ones count as zero)
  // into its shards' .grad (averaged over ranks, accumulated into an existing
  // .grad) and frees the full gradients and, when nothing else can need
  // them, the full parameters.
  absl::Status Reduce(int u) {
    Unit& unit = units[u];
    unit.reduced = true;
    if (unit.trainable == 0) return absl::OkStatus();
    at::NoGradGuard no_grad;
    at::Tensor input = at::zeros({world * unit.shard_numel},
                                 at::TensorOptions().dtype(unit.dtype).device(device));
    for (int index : unit.params) {
      const FsdpParamInfo& p = params[index];
      const at::Tensor& grad = full[index].grad();
      if (!grad.defined()) continue;
      at::Tensor g = grad.to(unit.dtype).reshape({p.rows, p.row_numel});
      for (int r = 0; r < world; ++r) {
        const int64_t n = std::clamp<int64_t>(p.rows - r * p.rows_per_rank, 0, p.rows_per_rank);
        if (n == 0) continue;
        input.narrow(0, r * unit.shard_numel + ShardOffset(index), n * p.row_numel)
            .view({n, p.row_numel})
            .copy_(g.narrow(0, r * p.rows_per_rank, n));
      }
    }
    at::Tensor out = input;
    if (world > 1) {
      absl::StatusOr<at::Tensor> reduced = ctx->ReduceScatter(input, ReduceOp::kAvg);
      if (!reduced.ok()) {
        return absl::Status(reduced.status().code(),
                            absl::StrCat("FSDP: reducing the gradients of unit '", unit.name,
                                         "': ", reduced.status().message()));
      }
      out = *std::move(reduced);
    }
    input = at::Tensor();
    ++stats.reduce_scatters;
    for (int index : unit.params) {
      FsdpParamInfo& p = params[index];
      full[index].mutable_grad() = at::Tensor();
      if (!p.requires_grad) continue;
      at::Tensor local = out.narrow(0, ShardOffset(index), p.local_rows * p.row_numel)
                             .view(p.shard.sizes());
      at::Tensor& g = p.shard.mutable_grad();
      if (g.defined()) {
        g.add_(local);
      } else {
        g = local.clone();
      }
    }
    if (unit.all_trainable) Free(u);
    return absl::OkStatus();
  }

  absl::Status FinishBackward() {
    std::lock_guard<std::recursive_mutex> lock(mu);
    if (!in_backward) return absl::OkStatus();
    in_backward = false;
    absl::Status status;
    if (sync_enabled) {
      // Units whose parameters did not all get a gradient, in unit order (the
      // same on every rank).
      for (int u = 0; u < static_cast<int>(units.size()); ++u) {
        if (units[u].reduced) continue;
        absl::Status s = Reduce(u);
        if (!s.ok() && status.ok()) status = s;
      }
    }
    for (int u = 0; u < static_cast<int>(units.size()); ++u) Free(u);
    ++stats.backward_passes;
    return status;
  }
};

namespace {

class GradHook : public torch::autograd::PostAccumulateGradHook {
 public:
  GradHook(std::weak_ptr<FullyShardedDataParallel::State> state, int index)
      : state_(std::move(state)), index_(index) {}
  void operator()(const torch::autograd::Variable& /*param*/) override {
    if (auto state = state_.lock()) state->OnGrad(index_);
  }

 private:
  std::weak_ptr<FullyShardedDataParallel::State> state_;
  int index_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<FullyShardedDataParallel>> FullyShardedDataParallel::Create(
    std::shared_ptr<torch::nn::Module> module, std::shared_ptr<DistributedContext> context,
    const FsdpOptions& options) {
  if (module == nullptr) return absl::InvalidArgumentError("FSDP: module is null");
  if (context == nullptr) return absl::InvalidArgumentError("FSDP: distributed context is null");
  std::unique_ptr<FullyShardedDataParallel> fsdp(new FullyShardedDataParallel());
  fsdp->module_ = module;
  fsdp->context_ = context;
  fsdp->options_ = options;
  auto state = std::make_shared<State>();
  state->ctx = context;
  state->world = context->world_size();
  state->rank = context->rank();
  state->strategy = options.sharding_strategy;
  state->precision = options.precision;
  state->device = context->device();

  auto named = module->named_parameters(/*recurse=*/true);
  // Same model everywhere; shared (tied) parameters are not supported.
  std::string layout;
  std::unordered_map<const c10::TensorImpl*, std::string> seen;
  for (const auto& item : named) {
    const at::Tensor& p = item.value();
    absl::StrAppend(&layout, item.key(), ":", absl::StrJoin(p.sizes(), "x"), ":",
                    c10::getDtypeNames(p.scalar_type()).first, ":", p.requires_grad(), ";");
    if (p.device() != state->device) {
      return absl::InvalidArgumentError(absl::StrCat(
          "FSDP: parameter '", item.key(), "' is on ", p.device().str(), " but the ",
          context->backend_name(), " process group works on ", state->device.str()));
    }
    if (!at::isFloatingType(p.scalar_type())) {
      return absl::InvalidArgumentError(
          absl::StrCat("FSDP: parameter '", item.key(), "' is not floating point"));
    }
    auto [it, inserted] = seen.emplace(p.unsafeGetTensorImpl(), item.key());
    if (!inserted) {
      return absl::UnimplementedError(absl::StrCat("FSDP: parameters '", it->second, "' and '",
                                                   item.key(), "' are one shared tensor"));
    }
    if (torch::autograd::impl::post_acc_grad_hooks(p) != nullptr) {
      return absl::FailedPreconditionError(absl::StrCat(
          "FSDP: parameter '", item.key(),
          "' already has a post-accumulate-grad hook (is the module wrapped twice?)"));
    }
  }
  if (state->world > 1) {
    at::Tensor mine = at::full({1}, Fingerprint(layout),
                               at::TensorOptions().dtype(at::kLong).device(state->device));
    FABRIC_ASSIGN_OR_RETURN(std::vector<at::Tensor> all, context->AllGather(mine));
    for (int r = 0; r < static_cast<int>(all.size()); ++r) {
      if (!at::equal(all[r].cpu(), mine.cpu())) {
        return absl::FailedPreconditionError(absl::StrCat(
            "FSDP: rank ", r, "'s module has different parameters (names, shapes, dtypes or "
            "requires_grad) than rank ", state->rank, "'s"));
      }
    }
    if (options.sync_module_states) {
      std::vector<at::Tensor> tensors;
      for (const auto& item : named) tensors.push_back(item.value());
      for (const at::Tensor& b : module->buffers()) {
        if (b.defined()) tensors.push_back(b);
      }
      FABRIC_RETURN_IF_ERROR(BroadcastCoalesced(*context, tensors, int64_t{256} << 20));
    }
  }

  // Units, bottom-up: a module is wrapped when the policy says so, given
  // the parameters of its subtree not in a deeper unit.
  std::vector<std::pair<std::string, const torch::nn::Module*>> wrapped;
  std::function<int64_t(const torch::nn::Module&, const std::string&)> visit =
      [&](const torch::nn::Module& m, const std::string& path) -> int64_t {
    int64_t unwrapped = 0;
    for (const auto& child : m.named_children()) {
      unwrapped += visit(*child.value(), path.empty() ? child.key() : path + "." + child.key());
    }
    for (const auto& p : m.named_parameters(/*recurse=*/false)) unwrapped += p.value().numel();
    if (&m != module.get() && options.wrap_policy && options.wrap_policy(path, m, unwrapped)) {
      wrapped.emplace_back(path, &m);
      return 0;
    }
    return unwrapped;
  };
  visit(*module, "");
  for (const auto& [path, m] : wrapped) {
    State::Unit unit;
    unit.name = path;
    unit.module = m;
    state->unit_of_module[m] = static_cast<int>(state->units.size());
    state->units.push_back(std::move(unit));
  }
  state->units.emplace_back();  // the root
  state->unit_of_module[module.get()] = state->root();

  // Each parameter to its nearest wrapped ancestor (pre-order walk).
  std::unordered_map<const c10::TensorImpl*, int> unit_of_param;
  std::function<void(const torch::nn::Module&, int)> assign = [&](const torch::nn::Module& m,
                                                                   int unit) {
    if (auto it = state->unit_of_module.find(&m); it != state->unit_of_module.end()) {
      unit = it->second;
    }
    for (const auto& p : m.named_parameters(/*recurse=*/false)) {
      unit_of_param[p.value().unsafeGetTensorImpl()] = unit;
    }
    for (const auto& child : m.children()) assign(*child, unit);
  };
  assign(*module, state->root());

  const int world = state->world, rank = state->rank;
  const bool bf16 = options.precision == FsdpPrecision::kBf16Mixed;
  state->shard_offsets.assign(named.size(), 0);
  state->full_offsets.assign(named.size(), 0);
  for (size_t i = 0; i < named.size(); ++i) {
    const at::Tensor& p = named[i].value();
    FsdpParamInfo info;
    info.fqn = named[i].key();
    info.unit = unit_of_param.at(p.unsafeGetTensorImpl());
    info.shape = p.sizes().vec();
    info.dtype = p.scalar_type();
    info.rows = p.dim() == 0 ? 1 : p.size(0);
    info.row_numel = info.rows == 0 ? 0 : p.numel() / info.rows;
    if (p.dim() > 0) {
      int64_t rest = 1;
      for (int d = 1; d < p.dim(); ++d) rest *= p.size(d);
      info.row_numel = rest;
    }
    info.rows_per_rank = std::max<int64_t>((info.rows + world - 1) / world, 1);
    info.row_offset = std::min(rank * info.rows_per_rank, info.rows);
    info.local_rows = std::clamp<int64_t>(info.rows - rank * info.rows_per_rank, 0,
                                          info.rows_per_rank);
    info.requires_grad = p.requires_grad();
    State::Unit& unit = state->units[info.unit];
    if (unit.params.empty()) {
      unit.dtype = info.dtype;
      unit.compute_dtype = bf16 ? at::kBFloat16 : info.dtype;
    } else if (unit.dtype != info.dtype) {
      return absl::UnimplementedError(absl::StrCat(
          "FSDP: unit '", unit.name, "' mixes parameter dtypes (", info.fqn, " is ",
          c10::toString(info.dtype), ", others ", c10::toString(unit.dtype),
          "); wrap them into different units"));
    }
    unit.params.push_back(static_cast<int>(i));
    state->shard_offsets[i] = unit.shard_numel;
    state->full_offsets[i] = unit.full_numel;
    unit.shard_numel += info.rows_per_rank * info.row_numel;
    unit.full_numel += info.rows * info.row_numel;
    if (info.requires_grad) {
      ++unit.trainable;
    } else {
      unit.all_trainable = false;
    }
    state->params.push_back(std::move(info));
    state->full.push_back(p);
  }
  state->units.back().name = "";

  // Shards: this rank's rows of every parameter, then the parameters become
  // views of their unit's (freed) full storage.
  {
    at::NoGradGuard no_grad;
    for (State::Unit& unit : state->units) {
      // On CPU page-aligned, as checkpoint files align big records, so that
      // loads can read the shards with O_DIRECT.
      unit.flat_shard =
          state->device.is_cpu()
              ? AlignedEmpty({unit.shard_numel}, unit.dtype).zero_()
              : at::zeros({unit.shard_numel},
                          at::TensorOptions().dtype(unit.dtype).device(state->device));
      unit.full_nbytes =
          unit.full_numel * static_cast<int64_t>(c10::elementSize(unit.compute_dtype));
      unit.full_storage = NewStorage(unit.full_nbytes, state->device);
      for (int index : unit.params) {
        FsdpParamInfo& info = state->params[index];
        at::Tensor& p = state->full[index];
        std::vector<int64_t> shard_sizes = info.ChunkSizes();
        if (info.shape.empty() && info.local_rows == 0) shard_sizes = {0};
        at::Tensor shard = OnStorage(unit.flat_shard.storage(), unit.dtype,
                                     state->shard_offsets[index], shard_sizes);
        if (info.local_rows > 0) shard.copy_(info.LocalRows(p.detach()));
        shard.set_requires_grad(info.requires_grad);
        info.shard = shard;
        state->shard_index[shard.unsafeGetTensorImpl()] = index;
        p.mutable_grad() = at::Tensor();
        p.set_data(OnStorage(unit.full_storage, unit.compute_dtype, state->full_offsets[index],
                             info.shape));
      }
      unit.gathered = true;
    }
    for (int u = 0; u < static_cast<int>(state->units.size()); ++u) state->Free(u);
  }

  for (size_t i = 0; i < state->params.size(); ++i) {
    if (!state->params[i].requires_grad) continue;
    torch::autograd::impl::set_post_acc_grad_hooks(
        state->full[i], std::make_unique<GradHook>(std::weak_ptr<State>(state), static_cast<int>(i)));
  }
  fsdp->state_ = state;
  return fsdp;
}

FullyShardedDataParallel::~FullyShardedDataParallel() {
  if (state_ == nullptr) return;
  for (size_t i = 0; i < state_->params.size(); ++i) {
    if (state_->params[i].requires_grad) {
      torch::autograd::impl::set_post_acc_grad_hooks(state_->full[i], nullptr);
    }
  }
}

std::vector<at::Tensor> FullyShardedDataParallel::parameters() const {
  std::vector<at::Tensor> out;
  for (const FsdpParamInfo& p : state_->params) {
    if (p.requires_grad) out.push_back(p.shard);
  }
  return out;
}

const std::vector<FsdpParamInfo>& FullyShardedDataParallel::params() const {
  return state_->params;
}

int FullyShardedDataParallel::FindShard(const at::Tensor& shard) const {
  if (!shard.defined()) return -1;
  auto it = state_->shard_index.find(shard.unsafeGetTensorImpl());
  return it == state_->shard_index.end() ? -1 : it->second;
}

std::vector<std::string> FullyShardedDataParallel::unit_names() const {
  std::vector<std::string> names;
  for (const auto& u : state_->units) names.push_back(u.name);
  return names;
}

int64_t FullyShardedDataParallel::unit_shard_numel(int unit) const {
  return state_->units.at(unit).shard_numel;
}

void FullyShardedDataParallel::BeginRootForward() {
  std::lock_guard<std::recursive_mutex> lock(state_->mu);
  const int n = static_cast<int>(state_->units.size());
  for (int u = 0; u < n; ++u) {
    const bool needed = u == state_->root() ||
                        state_->strategy == ShardingStrategy::kShardGradOp;
    if (!needed) continue;
    absl::Status s = state_->Gather(u);
    if (!s.ok()) throw std::runtime_error(std::string(s.message()));
  }
}

void FullyShardedDataParallel::EndRootForward() {}

int FullyShardedDataParallel::EnterUnit(const torch::nn::Module& unit) {
  auto it = state_->unit_of_module.find(&unit);
  if (it == state_->unit_of_module.end()) {
    throw std::invalid_argument(absl::StrCat("FSDP: module ", unit.name(),
                                             " is not a unit (the wrap policy did not choose it)"));
  }
  std::lock_guard<std::recursive_mutex> lock(state_->mu);
  absl::Status s = state_->Gather(it->second);
  if (!s.ok()) throw std::runtime_error(std::string(s.message()));
  return it->second;
}

void FullyShardedDataParallel::ExitUnit(int unit) {
  if (state_->strategy != ShardingStrategy::kFullShard || unit == state_->root()) return;
  std::lock_guard<std::recursive_mutex> lock(state_->mu);
  state_->Free(unit);
}

void FullyShardedDataParallel::WatchTensor(const at::Tensor& t, int unit) {
  if (!t.defined() || !t.requires_grad()) return;
  std::weak_ptr<State> weak = state_;
  t.register_hook([weak, unit](const at::Tensor& grad) {
    if (auto state = weak.lock()) state->OnPreBackward(unit);
    return grad;
  });
}

at::Tensor FullyShardedDataParallel::CastInput(const at::Tensor& x) const {
  if (options_.precision == FsdpPrecision::kBf16Mixed && x.defined() &&
      at::isFloatingType(x.scalar_type()) && x.scalar_type() != at::kBFloat16) {
    return x.to(at::kBFloat16);
  }
  return x;
}

at::Tensor FullyShardedDataParallel::CastOutputTensor(const at::Tensor& t) const {
  if (options_.precision == FsdpPrecision::kBf16Mixed && t.defined() &&
      at::isFloatingType(t.scalar_type()) && t.scalar_type() != at::kFloat) {
    return t.to(at::kFloat);
  }
  return t;
}

absl::Status FullyShardedDataParallel::GatherFullParameters() {
  std::lock_guard<std::recursive_mutex> lock(state_->mu);
  for (int u = 0; u < static_cast<int>(state_->units.size()); ++u) {
    FABRIC_RETURN_IF_ERROR(state_->Gather(u));
  }
  return absl::OkStatus();
}

void FullyShardedDataParallel::Reshard() {
  std::lock_guard<std::recursive_mutex> lock(state_->mu);
  for (int u = 0; u < static_cast<int>(state_->units.size()); ++u) state_->Free(u);
}

absl::StatusOr<std::vector<at::Tensor>> FullyShardedDataParallel::GatherRowBlocks(
    int index, const at::Tensor& local) {
  if (index < 0 || index >= static_cast<int>(state_->params.size())) {
    return absl::OutOfRangeError(absl::StrCat("FSDP: no parameter #", index));
  }
  const FsdpParamInfo& p = state_->params[index];
  if (!local.defined() || local.numel() != p.local_rows * p.row_numel) {
    return absl::InvalidArgumentError(absl::StrCat(
        "FSDP: the local tensor for '", p.fqn, "' has ", local.defined() ? local.numel() : 0,
        " elements, the shard ", p.local_rows * p.row_numel));
  }
  at::NoGradGuard no_grad;
  at::Tensor slot = at::zeros({p.rows_per_rank * p.row_numel},
                              local.options().device(state_->device).requires_grad(false));
  if (p.local_rows > 0) slot.narrow(0, 0, local.numel()).copy_(local.detach().reshape({-1}));
  std::vector<at::Tensor> parts;
  if (state_->world == 1) {
    parts.push_back(slot);
  } else {
    FABRIC_ASSIGN_OR_RETURN(parts, state_->ctx->AllGather(slot));
  }
  std::vector<at::Tensor> blocks;
  for (int r = 0; r < static_cast<int>(parts.size()); ++r) {
    const int64_t n = std::clamp<int64_t>(p.rows - r * p.rows_per_rank, 0, p.rows_per_rank);
    if (n > 0) blocks.push_back(parts[r].narrow(0, 0, n * p.row_numel));
  }
  return blocks;
}

absl::StatusOr<at::Tensor> FullyShardedDataParallel::GatherFull(int index, const at::Tensor& local) {
  FABRIC_ASSIGN_OR_RETURN(std::vector<at::Tensor> blocks, GatherRowBlocks(index, local));
  const FsdpParamInfo& p = state_->params[index];
  at::Tensor flat = blocks.empty()   ? at::zeros({0}, local.options().requires_grad(false))
                    : blocks.size() == 1 ? blocks[0]
                                         : at::cat(blocks);
  return flat.view(p.shape);
}

FullyShardedDataParallel::NoSyncGuard::NoSyncGuard(NoSyncGuard&& other) noexcept
    : fsdp_(other.fsdp_), previous_(other.previous_) {
  other.fsdp_ = nullptr;
}

FullyShardedDataParallel::NoSyncGuard::~NoSyncGuard() {
  if (fsdp_ == nullptr) return;
  std::lock_guard<std::recursive_mutex> lock(fsdp_->state_->mu);
  fsdp_->state_->sync_enabled = previous_;
}

FullyShardedDataParallel::NoSyncGuard FullyShardedDataParallel::NoSync() {
  std::lock_guard<std::recursive_mutex> lock(state_->mu);
  const bool previous = state_->sync_enabled;
  state_->sync_enabled = false;
  return NoSyncGuard(this, previous);
}

FullyShardedDataParallel::Stats FullyShardedDataParallel::stats() const {
  std::lock_guard<std::recursive_mutex> lock(state_->mu);
  return state_->stats;
}

}  // namespace fabric::strategies
