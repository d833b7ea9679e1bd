#include "strategies/fsdp_checkpoint_internal.h"

#include <set>
#include <unordered_map>
#include <utility>

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/parallel.h"
#include "base/status_macros.h"
#include "checkpoint/optimizer_state.h"

namespace fabric::strategies::fsdp_internal {

std::vector<Entry> ResolveEntries(const State& state, const FsdpWrapperOf& wrapper_of) {
  std::vector<Entry> out;
  out.reserve(state.size());
  for (const auto& [key, entry] : state.entries()) {
    Entry& e = out.emplace_back();
    e.key = key;
    switch (entry.kind()) {
      case StateEntry::Kind::kModule:
        e.module = &entry.module();
        e.fsdp = wrapper_of ? wrapper_of(entry.module()) : nullptr;
        e.kind = e.fsdp != nullptr ? Kind::kShardedModel : Kind::kModel;
        break;
      case StateEntry::Kind::kOptimizer:
        e.kind = Kind::kOptimizer;
        e.optimizer = &entry.optimizer();
        break;
      case StateEntry::Kind::kValue:
        e.kind = Kind::kValue;
        e.value = &entry.value();
        break;
    }
  }
  return out;
}

int RankOf(const DistributedContext* ctx) { return ctx == nullptr ? 0 : ctx->rank(); }
int WorldOf(const DistributedContext* ctx) { return ctx == nullptr ? 1 : ctx->world_size(); }

absl::Status ShareStatus(DistributedContext* ctx, const absl::Status& mine) {
  return ctx == nullptr ? mine : ctx->ShareStatus(mine);
}

absl::Status AgreeOnStatus(DistributedContext* ctx, const absl::Status& mine) {
  return ctx == nullptr ? mine : ctx->AgreeOnStatus(mine);
}

absl::StatusOr<std::vector<std::string>> AllGatherBytes(DistributedContext* ctx,
                                                        const std::string& mine) {
  if (ctx == nullptr) return std::vector<std::string>{mine};
  return ctx->AllGatherBytes(mine);
}

const FsdpParamInfo* InfoOf(const ParamRef& ref) {
  return ref.fsdp == nullptr ? nullptr : &ref.fsdp->params()[ref.index];
}

absl::StatusOr<std::vector<ParamRef>> OptimizerParams(const torch::optim::Optimizer& opt,
                                                      const std::vector<Entry>& entries,
                                                      const std::string& key) {
  std::unordered_map<const c10::TensorImpl*, ParamRef> owners;
  for (const Entry& e : entries) {
    if (e.kind == Kind::kShardedModel) {
      const auto& params = e.fsdp->params();
      for (size_t i = 0; i < params.size(); ++i) {
        ParamRef r;
        r.fqn = params[i].fqn;
        r.fsdp = e.fsdp;
        r.index = static_cast<int>(i);
        r.tensor = params[i].shard;
        owners.emplace(params[i].shard.unsafeGetTensorImpl(), r);
      }
    } else if (e.kind == Kind::kModel) {
      for (const auto& item : e.module->named_parameters(/*recurse=*/true)) {
        ParamRef r;
        r.fqn = item.key();
        r.tensor = item.value();
        owners.emplace(item.value().unsafeGetTensorImpl(), r);
      }
    }
  }
  std::vector<ParamRef> out;
  const auto& groups = opt.param_groups();
  for (size_t g = 0; g < groups.size(); ++g) {
    for (const at::Tensor& p : groups[g].params()) {
      auto it = owners.find(p.unsafeGetTensorImpl());
      if (it == owners.end()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "optimizer '", key, "': parameter #", out.size(),
            " belongs to no model of the state (create the optimizer over "
            "FullyShardedDataParallel::parameters(), and put its model in the state)"));
      }
      ParamRef r = it->second;
      r.group = static_cast<int>(g);
      out.push_back(std::move(r));
    }
  }
  return out;
}

bool IsShardedState(const FsdpParamInfo& info, const std::string& name, const at::Tensor& t) {
  if (name == "step") return false;
  if (info.shape.empty()) return t.numel() == info.local_rows;  // a 0-dim parameter
  return t.sizes() == info.shard.sizes();
}

bool Keep(const FsdpCheckpointOptions& options, const std::string& key, const std::string& name,
          const Value& value) {
  auto it = options.filter.find(key);
  return it == options.filter.end() || !it->second || it->second(name, value);
}

std::unordered_map<std::string, int> ParamIndex(const FullyShardedDataParallel* fsdp) {
  std::unordered_map<std::string, int> index;
  if (fsdp == nullptr) return index;
  const auto& params = fsdp->params();
  for (size_t i = 0; i < params.size(); ++i) index[params[i].fqn] = static_cast<int>(i);
  return index;
}

Value GroupsWithNames(const Dict& osd, const std::vector<ParamRef>& refs) {
  Value groups = osd.Find("param_groups")->Clone();
  for (Value& group : groups.items()) {
    Value* params = group.as_dict().Find("params");
    std::vector<Value> names;
    for (const Value& id : params->items()) names.emplace_back(refs.at(id.as_int()).fqn);
    *params = Value::List(std::move(names));
  }
  return groups;
}

absl::StatusOr<Value> MapGroups(const Value& groups, const std::vector<ParamRef>& refs,
                                const torch::optim::Optimizer& opt, const std::string& what) {
  if (!groups.is_sequence()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": expected a list of groups"));
  }
  const auto& ours = opt.param_groups();
  if (groups.items().size() != ours.size()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", groups.items().size(),
                                                   " group(s) in the checkpoint vs ", ours.size(),
                                                   " in the optimizer"));
  }
  Value out = groups.Clone();
  int64_t base = 0;
  for (size_t g = 0; g < ours.size(); ++g) {
    const int64_t n = static_cast<int64_t>(ours[g].params().size());
    Value& group = out.items()[g];
    if (!group.is_dict()) {
      return absl::InvalidArgumentError(absl::StrCat(what, ".", g, ": expected a dict"));
    }
    Value* params = group.as_dict().Find("params");
    if (params == nullptr || !params->is_sequence()) {
      return absl::InvalidArgumentError(absl::StrCat(what, ".", g, ".params: missing"));
    }
    std::multiset<std::string> saved, mine;
    bool names = false;
    for (const Value& p : params->items()) {
      if (p.is_string()) {
        names = true;
        saved.insert(p.as_string());
      }
    }
    for (int64_t i = 0; i < n; ++i) mine.insert(refs[base + i].fqn);
    if (names && saved != mine) {
      std::vector<std::string> diff;
      for (const std::string& s : saved) {
        if (mine.count(s) == 0) diff.push_back("unexpected " + s);
      }
      for (const std::string& s : mine) {
        if (saved.count(s) == 0) diff.push_back("missing " + s);
      }
      return absl::InvalidArgumentError(absl::StrCat(what, ".", g,
                                                     ".params: the parameters differ from the "
                                                     "optimizer's group: ",
                                                     absl::StrJoin(diff, ", ")));
    }
    if (!names && static_cast<int64_t>(params->items().size()) != n) {
      return absl::InvalidArgumentError(absl::StrCat(what, ".", g, ".params: ",
                                                     params->items().size(), " vs ", n,
                                                     " parameters in the optimizer's group"));
    }
    std::vector<Value> ids;
    for (int64_t i = 0; i < n; ++i) ids.emplace_back(base + i);
    *params = Value::List(std::move(ids));
    base += n;
  }
  return out;
}

Dict MetaDict(const std::vector<Entry>& entries, const FsdpCheckpointOptions& options) {
  Dict meta;
  for (const Entry& e : entries) {
    if (e.kind != Kind::kValue) continue;
    if (e.value->is_dict() && options.filter.count(e.key) > 0) {
      Dict kept;
      for (const auto& [k, v] : e.value->as_dict()) {
        if (!k.is_string() || Keep(options, e.key, k.as_string(), v)) kept.Set(k, v);
      }
      meta.Set(e.key, Value(std::move(kept)));
    } else {
      meta.Set(e.key, *e.value);
    }
  }
  return meta;
}

TensorRef RefFor(const std::string& key, at::ScalarType dtype, const std::vector<int64_t>& sizes) {
  TensorRef ref;
  ref.storage_key = key;
  ref.dtype = dtype;
  ref.location = "cpu";
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  ref.storage_numel = numel;
  ref.sizes = sizes;
  ref.strides.assign(sizes.size(), 1);
  for (int i = static_cast<int>(sizes.size()) - 2; i >= 0; --i) {
    ref.strides[i] = ref.strides[i + 1] * std::max<int64_t>(sizes[i + 1], 1);
  }
  return ref;
}

// Reads run a few at a time: one tensor's byte ranges are a single request or
// a few, and the disk delivers more with several in flight.
constexpr int kReadConcurrency = 4;

absl::Status RunReads(size_t n, const std::function<absl::Status(size_t)>& read) {
  return ParallelFor(n, kReadConcurrency, [&](size_t i) {
    at::NoGradGuard no_grad;  // per thread: grad mode is thread-local
    return read(i);
  });
}

void ReshardAfterLoad(LoadPlan& plan, FullyShardedDataParallel* fsdp) {
  if (fsdp == nullptr) return;
  plan.finish.push_back([fsdp] {
    fsdp->Reshard();
    return absl::OkStatus();
  });
}

Value OptimizerLoad::Deferred(at::ScalarType dtype, const std::vector<int64_t>& sizes,
                              std::function<absl::Status(at::Tensor&)> read) {
  TensorRef ref = RefFor(std::to_string(readers.size()), dtype, sizes);
  readers.push_back(std::move(read));
  return Value(std::move(ref));
}

absl::StatusOr<std::unique_ptr<OptimizerLoad>> NewOptimizerLoad(const Entry& e,
                                                                const std::vector<Entry>& entries,
                                                                const LoadOptions& options) {
  auto load = std::make_unique<OptimizerLoad>();
  load->optimizer = e.optimizer;
  load->key = e.key;
  load->into_live_buffers = options.into_live_optimizer_buffers;
  FABRIC_ASSIGN_OR_RETURN(load->refs, OptimizerParams(*e.optimizer, entries, e.key));
  for (size_t i = 0; i < load->refs.size(); ++i) {
    load->by_fqn[load->refs[i].fqn] = static_cast<int>(i);
  }
  return load;
}

absl::Status FinishOptimizer(OptimizerLoad& load) {
  Dict sd;
  sd.Set("state", Value(std::move(load.state)));
  sd.Set("param_groups", load.groups);
  TensorSource source = [&load](const TensorRef& ref, at::Tensor& dst) -> absl::Status {
    size_t i = 0;
    if (!absl::SimpleAtoi(ref.storage_key, &i) || i >= load.readers.size()) {
      return absl::InternalError("optimizer load: unknown deferred tensor " + ref.storage_key);
    }
    at::NoGradGuard no_grad;
    return load.readers[i](dst);
  };
  TensorBatchSource batch = [&source](std::vector<TensorRead>& reads) {
    return RunReads(reads.size(),
                    [&](size_t i) { return source(reads[i].ref, reads[i].destination); });
  };
  return LoadOptimizerState(*load.optimizer, sd, source, load.key, batch, load.into_live_buffers);
}

absl::Status RunPlan(LoadPlan& plan, std::vector<std::unique_ptr<OptimizerLoad>>& optimizers,
                     const LoadOptions& options) {
  // Optimizer state read into new tensors goes first: it writes nothing live
  // until installed, so a snapshot's copies can still run meanwhile.
  const bool optimizers_first = !options.into_live_optimizer_buffers;
  auto finish_optimizers = [&]() -> absl::Status {
    for (auto& load : optimizers) {
      if (load->has_groups) FABRIC_RETURN_IF_ERROR(FinishOptimizer(*load));
    }
    return absl::OkStatus();
  };
  if (optimizers_first) FABRIC_RETURN_IF_ERROR(finish_optimizers());
  if (options.before_live_writes) FABRIC_RETURN_IF_ERROR(options.before_live_writes());
  FABRIC_RETURN_IF_ERROR(RunReads(plan.reads.size(), [&](size_t i) { return plan.reads[i](); }));
  if (!optimizers_first) FABRIC_RETURN_IF_ERROR(finish_optimizers());
  for (auto& fn : plan.finish) FABRIC_RETURN_IF_ERROR(fn());
  return absl::OkStatus();
}

}  // namespace fabric::strategies::fsdp_internal
