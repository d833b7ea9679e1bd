#include "strategies/fsdp_full_checkpoint.h"

#include <algorithm>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "checkpoint/checkpoint_kind.h"
#include "checkpoint/module_state.h"
#include "checkpoint/optimizer_state.h"
#include "checkpoint/staging.h"
#include "checkpoint/tensor_value.h"
#include "checkpoint/torch_save.h"
#include "strategies/fsdp_checkpoint_internal.h"

namespace fabric::strategies {

using namespace fsdp_internal;  // NOLINT: this file implements them

namespace {

using Emit = std::function<absl::Status(const at::Tensor&)>;

// One storage of the file: a tensor rank 0 holds whole, or (with `layout`) a
// sharded one that every rank streams its rows of, in the same order.
struct PendingRecord {
  std::string key;
  at::Tensor local;
  std::optional<FsdpParamInfo> layout;  // its `shard` left empty
};

// Bytes of one collective while streaming a sharded tensor to rank 0.
constexpr int64_t kStreamChunkBytes = int64_t{16} << 20;

// The full tensor of parameter `index`, from every rank's shard-shaped
// `local`, to rank 0's `emit` in row order: rank 0's rows straight from its
// memory, every other rank's broadcast by that rank in chunks of at most
// kStreamChunkBytes. Peak memory: one chunk (no rank assembles the tensor).
absl::Status StreamSharded(const FsdpParamInfo& p, DistributedContext* ctx, const at::Tensor& local,
                           const Emit& emit) {
  const int rank = RankOf(ctx), world = WorldOf(ctx);
  at::Tensor flat = local.detach().reshape({-1});
  if (flat.numel() != p.local_rows * p.row_numel) {
    return absl::InvalidArgumentError(absl::StrCat(p.fqn, ": local tensor of ", flat.numel(),
                                                   " elements, the shard has ",
                                                   p.local_rows * p.row_numel));
  }
  if (!flat.is_contiguous()) flat = flat.contiguous();
  const int64_t chunk = std::max<int64_t>(kStreamChunkBytes / flat.element_size(), 1);
  for (int r = 0; r < world; ++r) {
    const int64_t rows = std::clamp<int64_t>(p.rows - r * p.rows_per_rank, 0, p.rows_per_rank);
    const int64_t numel = rows * p.row_numel;
    if (numel == 0) continue;
    if (r == 0) {
      if (rank == 0) FABRIC_RETURN_IF_ERROR(emit(flat));
      continue;
    }
    for (int64_t off = 0; off < numel; off += chunk) {
      const int64_t n = std::min(chunk, numel - off);
      at::Tensor buf = rank == r ? flat.narrow(0, off, n)
                                 : at::empty({n}, flat.options().device(ctx->device()));
      FABRIC_RETURN_IF_ERROR(ctx->Broadcast(buf, r));
      if (rank == 0) FABRIC_RETURN_IF_ERROR(emit(buf));
    }
  }
  return absl::OkStatus();
}

// Replaces tensors inside a value by TensorRefs written from this rank.
Value RefTensors(const Value& v, std::vector<PendingRecord>* records) {
  switch (v.kind()) {
    case Value::Kind::kTensor: {
      const std::string key = std::to_string(records->size());
      at::Tensor t = v.as_tensor().detach();
      records->push_back({key, t, std::nullopt});
      TensorRef ref = RefFor(key, t.scalar_type(), t.sizes().vec());
      ref.requires_grad = false;
      return Value(std::move(ref));
    }
    case Value::Kind::kList:
    case Value::Kind::kTuple: {
      std::vector<Value> items;
      for (const Value& item : v.items()) items.push_back(RefTensors(item, records));
      return v.is_list() ? Value::List(std::move(items)) : Value::Tuple(std::move(items));
    }
    case Value::Kind::kDict: {
      Dict d;
      for (const auto& [k, item] : v.as_dict()) d.Set(k, RefTensors(item, records));
      return Value(std::move(d));
    }
    default:
      return v;
  }
}

// A sharded tensor's layout, without the live shard.
FsdpParamInfo Layout(const FsdpParamInfo& info) {
  FsdpParamInfo layout = info;
  layout.shard = at::Tensor();
  return layout;
}

// Rank 0 streams the tree and every record to `path`; the others send their
// rows of the sharded records. `build` is this rank's planning verdict.
absl::Status WriteFull(const std::string& path, const Dict& root,
                       const std::vector<PendingRecord>& records, const absl::Status& build,
                       DistributedContext* ctx, const FsdpCheckpointOptions& options) {
  const int rank = RankOf(ctx);
  absl::Status prep;
  if (rank == 0 && StatCheckpoint(path).is_sharded()) {
    prep = absl::FailedPreconditionError(
        absl::StrCat("the checkpoint path exists and is a directory: ", path));
  }
  FABRIC_RETURN_IF_ERROR(ShareStatus(ctx, prep));
  // The same on every rank (pure functions of the state), but a failure on
  // one rank must stop all before the gathers.
  FABRIC_RETURN_IF_ERROR(AgreeOnStatus(ctx, build));

  std::unique_ptr<TorchStreamWriter> writer;
  absl::Status status;
  if (rank == 0) {
    TorchSaveOptions so;
    so.direct_io = options.direct_io;
    so.staging_bytes = size_t{32} << 20;  // within the "largest unit + 64 MiB" bound
    absl::StatusOr<std::unique_ptr<TorchStreamWriter>> w =
        TorchStreamWriter::Create(path, Value(root), so);
    // Not returned here: the other ranks wait for this verdict.
    if (w.ok()) {
      writer = *std::move(w);
    } else {
      status = w.status();
    }
  }
  FABRIC_RETURN_IF_ERROR(ShareStatus(ctx, status));
  std::unordered_map<std::string, uint64_t> record_bytes;
  if (writer != nullptr) {
    for (const auto& [key, nbytes] : writer->StorageOrder()) record_bytes[key] = nbytes;
  }
  for (const PendingRecord& r : records) {
    bool begun = false;
    if (rank == 0 && status.ok()) {
      status = writer->BeginStorage(r.key, record_bytes[r.key]);
      begun = status.ok();
    }
    // Rank 0 appends every piece; a write error stops the writing but not
    // the collectives, which the other ranks are in too.
    const Emit emit = [&](const at::Tensor& t) -> absl::Status {
      if (rank != 0 || !status.ok()) return absl::OkStatus();
      at::Tensor c = t.detach().to(c10::kCPU).contiguous();
      status = writer->AppendStorage(c.data_ptr(),
                                     static_cast<uint64_t>(c.numel()) * c.element_size());
      return absl::OkStatus();
    };
    // A failed collective: the group is unusable.
    if (r.layout.has_value()) {
      FABRIC_RETURN_IF_ERROR(StreamSharded(*r.layout, ctx, r.local, emit));
    } else {
      FABRIC_RETURN_IF_ERROR(emit(r.local));
    }
    if (begun && status.ok()) status = writer->EndStorage();
  }
  if (rank == 0 && status.ok()) status = writer->Commit();
  writer.reset();
  return ShareStatus(ctx, status);
}

}  // namespace

StagedWrite FsdpStageFull(const std::string& path, const State& state,
                          const FsdpWrapperOf& wrapper_of, const DistributedContext* ctx,
                          const FsdpCheckpointOptions& options, StagingBuffers* staging) {
  const std::vector<Entry> entries = ResolveEntries(state, wrapper_of);
  const int rank = RankOf(ctx);

  // The tree (with TensorRefs) and, in the same order, how to produce each
  // record. Every rank builds both so that the gathers line up.
  std::vector<PendingRecord> records;
  Dict root;
  auto next_key = [&] { return std::to_string(records.size()); };
  absl::Status build;
  for (const Entry& e : entries) {
    if (!build.ok()) break;
    if (e.kind == Kind::kShardedModel || e.kind == Kind::kModel) {
      const std::unordered_map<std::string, int> index = ParamIndex(e.fsdp);
      Dict sd;
      for (const auto& [k, v] : ModuleStateDict(*e.module)) {
        const std::string& name = k.as_string();
        auto it = index.find(name);
        // The filter sees what this rank holds: a sharded parameter's shard.
        if (!Keep(options, e.key, name,
                  it != index.end() ? Value(e.fsdp->params()[it->second].shard.detach()) : v)) {
          continue;
        }
        const std::string key = next_key();
        if (it != index.end()) {
          const FsdpParamInfo& info = e.fsdp->params()[it->second];
          records.push_back({key, info.shard.detach(), Layout(info)});
          sd.Set(name, Value(RefFor(key, info.dtype, info.shape)));
        } else {
          at::Tensor t = v.as_tensor();
          records.push_back({key, t.detach(), std::nullopt});
          sd.Set(name, Value(RefFor(key, t.scalar_type(), t.sizes().vec())));
        }
      }
      root.Set(e.key, Value(std::move(sd)));
    } else if (e.kind == Kind::kOptimizer) {
      absl::StatusOr<std::vector<ParamRef>> refs = OptimizerParams(*e.optimizer, entries, e.key);
      absl::StatusOr<Dict> osd = refs.ok() ? OptimizerStateDict(*e.optimizer)
                                           : absl::StatusOr<Dict>(refs.status());
      if (!osd.ok()) {
        build = osd.status();
        break;
      }
      Dict out;
      if (Keep(options, e.key, "state", *osd->Find("state"))) {
        Dict st_out;
        for (const auto& [id, st] : osd->Find("state")->as_dict()) {
          const ParamRef& ref = refs->at(id.as_int());
          const FsdpParamInfo* info = InfoOf(ref);
          Dict per;
          for (const auto& [n, v] : st.as_dict()) {
            const std::string& name = n.as_string();
            if (!v.is_tensor()) {
              per.Set(name, v);
              continue;
            }
            const std::string key = next_key();
            at::Tensor t = v.as_tensor();
            if (info != nullptr && IsShardedState(*info, name, t)) {
              records.push_back({key, t.detach(), Layout(*info)});
              per.Set(name, Value(RefFor(key, t.scalar_type(), info->shape)));
            } else {
              records.push_back({key, t.detach(), std::nullopt});
              per.Set(name, Value(RefFor(key, t.scalar_type(), t.sizes().vec())));
            }
          }
          st_out.Set(ref.fqn, Value(std::move(per)));
        }
        out.Set("state", Value(std::move(st_out)));
      }
      if (Value groups = GroupsWithNames(*osd, *refs);
          Keep(options, e.key, "param_groups", groups)) {
        out.Set("param_groups", std::move(groups));
      }
      root.Set(e.key, Value(std::move(out)));
    }
  }
  if (build.ok()) {
    Dict meta = MetaDict(entries, options);
    for (const auto& [k, v] : meta) root.Set(k, RefTensors(v, &records));
  }
  // What this rank sends: rank 0 everything, the others their rows of the
  // sharded records (the rest is rank 0's alone).
  for (PendingRecord& r : records) {
    if (rank == 0 || r.layout.has_value()) {
      r.local = StageOrPass(staging, r.local);
    } else {
      r.local = at::Tensor();
    }
  }
  return [path, root = std::move(root), records = std::move(records), build,
          options](DistributedContext* write_ctx) {
    return WriteFull(path, root, records, build, write_ctx, options);
  };
}

absl::Status FsdpSaveFull(const std::string& path, const State& state,
                          const FsdpWrapperOf& wrapper_of, DistributedContext* ctx,
                          const FsdpCheckpointOptions& options) {
  return FsdpStageFull(path, state, wrapper_of, ctx, options, /*staging=*/nullptr)(ctx);
}

namespace {

// Reads rows [row0, row0 + dst.size(0)) of a saved tensor into dst.
absl::Status ReadRows(const TorchFile& file, const Value& v, int64_t row0, at::Tensor dst,
                      const std::string& key) {
  if (v.is_tensor()) {
    at::Tensor t = v.as_tensor();
    if (dst.dim() > 0) t = t.narrow(0, row0, dst.size(0));
    dst.copy_(t);
    return absl::OkStatus();
  }
  const TensorRef& ref = v.as_tensor_ref();
  if (ref.is_contiguous() && !ref.sizes.empty()) {
    TensorRef sub = ref;
    int64_t row_numel = 1;
    for (size_t d = 1; d < ref.sizes.size(); ++d) row_numel *= ref.sizes[d];
    sub.storage_offset += row0 * row_numel;
    sub.sizes[0] = dst.size(0);
    absl::Status s = file.ReadInto(sub, dst);
    if (!s.ok()) return absl::Status(s.code(), absl::StrCat(key, ": ", s.message()));
    return s;
  }
  FABRIC_ASSIGN_OR_RETURN(at::Tensor full, MaterializeValue(v, [&](const TensorRef& r, at::Tensor& d) {
                            return file.ReadInto(r, d);
                          }, key));
  if (dst.dim() > 0) full = full.narrow(0, row0, dst.size(0));
  dst.copy_(full);
  return absl::OkStatus();
}

bool IsTensorValue(const Value* v) { return v != nullptr && (v->is_tensor() || v->is_tensor_ref()); }

}  // namespace

// Full (torch.save file) load.
absl::StatusOr<Dict> FsdpLoadFull(const std::string& path, State& state,
                                  const FsdpWrapperOf& wrapper_of,
                                  const FsdpCheckpointOptions& options) {
  const std::vector<Entry> entries = ResolveEntries(state, wrapper_of);
  FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<TorchFile> file, TorchFile::Open(path, options.load));
  const TorchFile* f = file.get();
  if (!file->root().is_dict()) {
    return absl::DataLossError(absl::StrCat(path, ": expected a dict at the top, got ",
                                            file->root().kind_name()));
  }
  const Dict& root = file->root().as_dict();
  TensorSource source = [f](const TensorRef& ref, at::Tensor& dst) { return f->ReadInto(ref, dst); };
  LoadPlan plan;
  std::vector<std::unique_ptr<OptimizerLoad>> optimizers;
  std::set<std::string> consumed;

  for (const Entry& e : entries) {
    if (e.kind == Kind::kValue) continue;
    const Value* sub = root.Find(e.key);
    if (sub == nullptr || !sub->is_dict()) {
      plan.report.missing_keys.push_back(e.key);
      continue;
    }
    consumed.insert(e.key);
    const Dict& d = sub->as_dict();
    if (e.kind == Kind::kShardedModel || e.kind == Kind::kModel) {
      const std::unordered_map<std::string, int> index = ParamIndex(e.fsdp);
      std::set<std::string> known;
      for (const auto& [k, v] : ModuleStateDict(*e.module)) {
        const std::string& name = k.as_string();
        known.insert(name);
        const std::string key = absl::StrCat(e.key, ".", name);
        const Value* saved = d.Find(name);
        if (saved == nullptr) {
          plan.report.missing_keys.push_back(key);
          continue;
        }
        if (!IsTensorValue(saved)) {
          plan.report.mismatches.push_back(key + ": not a tensor in the checkpoint");
          continue;
        }
        auto it = index.find(name);
        const std::vector<int64_t> shape =
            it == index.end() ? v.as_tensor().sizes().vec() : e.fsdp->params()[it->second].shape;
        if (ValueTensorSizes(*saved) != shape) {
          plan.report.mismatches.push_back(absl::StrCat(key, ": shape ",
                                                        ShapeString(ValueTensorSizes(*saved)),
                                                        " in checkpoint vs ", ShapeString(shape),
                                                        " in model"));
          continue;
        }
        Value saved_copy = *saved;
        if (it == index.end()) {
          at::Tensor dst = v.as_tensor().detach();
          plan.reads.push_back([saved_copy, dst, source, key]() mutable {
            return CopyValueInto(saved_copy, dst, source, key);
          });
          continue;
        }
        const FsdpParamInfo& info = e.fsdp->params()[it->second];
        if (!info.owns_data()) continue;
        at::Tensor dst = info.shard.detach();
        const int64_t row0 = info.row_offset;
        plan.reads.push_back([f, saved_copy, dst, row0, key]() mutable {
          return ReadRows(*f, saved_copy, row0, dst, key);
        });
      }
      for (const auto& [k, v] : d) {
        if (!k.is_string() || known.count(k.as_string()) == 0) {
          plan.report.unexpected_keys.push_back(absl::StrCat(e.key, ".", k.is_string() ? k.as_string() : k.DebugString()));
        }
      }
      ReshardAfterLoad(plan, e.fsdp);
      continue;
    }
    // An optimizer: state keyed by FQN (FSDP/Lightning) or by index (a plain
    // optimizer.state_dict()).
    FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<OptimizerLoad> load,
                            NewOptimizerLoad(e, entries, options.load));
    const std::vector<ParamRef>& refs = load->refs;
    const std::unordered_map<std::string, int>& by_fqn = load->by_fqn;
    const Value* st = d.Find("state");
    if (st != nullptr && st->is_dict()) {
      for (const auto& [k, per] : st->as_dict()) {
        int index = -1;
        if (k.is_string()) {
          auto it = by_fqn.find(k.as_string());
          if (it != by_fqn.end()) index = it->second;
        } else if (k.is_int() && k.as_int() >= 0 && k.as_int() < static_cast<int64_t>(refs.size())) {
          index = static_cast<int>(k.as_int());
        }
        const std::string where = absl::StrCat(e.key, ".state.", k.is_string() ? k.as_string() : k.DebugString());
        if (index < 0) {
          plan.report.unexpected_keys.push_back(where);
          continue;
        }
        if (!per.is_dict()) {
          plan.report.mismatches.push_back(where + ": expected a dict");
          continue;
        }
        const ParamRef& ref = refs[index];
        const FsdpParamInfo* info = InfoOf(ref);
        Dict slot;
        for (const auto& [n, v] : per.as_dict()) {
          const std::string name = n.is_string() ? n.as_string() : n.DebugString();
          const std::string key = absl::StrCat(where, ".", name);
          if (!IsTensorValue(&v)) {
            slot.Set(n, v);
            continue;
          }
          const std::vector<int64_t> param_shape =
              info != nullptr ? info->shape : ref.tensor.sizes().vec();
          if (name != "step" && ValueTensorSizes(v) != param_shape) {
            plan.report.mismatches.push_back(absl::StrCat(key, ": shape ", ShapeString(ValueTensorSizes(v)),
                                                          " in checkpoint vs parameter shape ",
                                                          ShapeString(param_shape)));
            continue;
          }
          if (name == "step" || (info == nullptr && param_shape.empty())) {
            FABRIC_ASSIGN_OR_RETURN(at::Tensor t, MaterializeValue(v, source, key));
            slot.Set(n, Value(std::move(t)));
            continue;
          }
          // Read after every check, into the optimizer's buffer: this rank's
          // rows of a sharded parameter's state, all of a plain one's.
          const bool owns = info == nullptr || info->owns_data();
          const std::vector<int64_t> sizes = info != nullptr ? info->shard.sizes().vec() : param_shape;
          const int64_t row0 = info != nullptr ? info->row_offset : 0;
          Value saved_copy = v;
          slot.Set(n, load->Deferred(ValueTensorDtype(v), sizes,
                                     [f, saved_copy, row0, key, owns](at::Tensor& dst) {
                                       if (!owns) return absl::OkStatus();
                                       return ReadRows(*f, saved_copy, row0, dst, key);
                                     }));
        }
        load->state.Set(Value(static_cast<int64_t>(index)), Value(std::move(slot)));
      }
    }
    const Value* groups = d.Find("param_groups");
    if (groups == nullptr) {
      plan.report.missing_keys.push_back(e.key + ".param_groups");
    } else {
      FABRIC_ASSIGN_OR_RETURN(load->groups,
                              MapGroups(*groups, refs, *e.optimizer,
                                        absl::StrCat(path, ": ", e.key, ".param_groups")));
      load->has_groups = true;
    }
    optimizers.push_back(std::move(load));
  }
  Dict remaining;
  for (const Entry& e : entries) {
    if (e.kind == Kind::kValue && root.Find(e.key) == nullptr) {
      plan.report.missing_keys.push_back(e.key);
    }
  }
  FABRIC_RETURN_IF_ERROR(plan.report.ToStatus(path, options.strict));
  FABRIC_RETURN_IF_ERROR(RunPlan(plan, optimizers, options.load));
  for (const Entry& e : entries) {
    if (e.kind != Kind::kValue) continue;
    if (const Value* v = root.Find(e.key)) {
      FABRIC_ASSIGN_OR_RETURN(state.Find(e.key)->value(), file->Materialize(*v));
      consumed.insert(e.key);
    }
  }
  for (const auto& [k, v] : root) {
    if (k.is_string() && consumed.count(k.as_string()) > 0) continue;
    FABRIC_ASSIGN_OR_RETURN(Value m, file->Materialize(v));
    remaining.Set(k, std::move(m));
  }
  return remaining;
}

}  // namespace fabric::strategies
