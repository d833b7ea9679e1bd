#include "strategies/fsdp_checkpoint.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "checkpoint/dcp_metadata.h"
#include "checkpoint/dcp_reader.h"
#include "checkpoint/dcp_writer.h"
#include "checkpoint/load_report.h"
#include "checkpoint/tensor_value.h"
#include "checkpoint/module_state.h"
#include "checkpoint/optimizer_state.h"
#include "checkpoint/torch_save.h"
#include "base/parallel.h"
#include "base/status_macros.h"

namespace fabric::strategies {

FsdpState::Entry& FsdpState::Add(std::string key, Kind kind) {
  Entry& e = entries_.emplace_back();
  e.key = std::move(key);
  e.kind = kind;
  return e;
}

FsdpState& FsdpState::Model(std::string key, FullyShardedDataParallel& fsdp) {
  Entry& e = Add(std::move(key), Kind::kShardedModel);
  e.fsdp = &fsdp;
  e.module = &fsdp.module();
  return *this;
}

FsdpState& FsdpState::Model(std::string key, torch::nn::Module& module) {
  Add(std::move(key), Kind::kModel).module = &module;
  return *this;
}

FsdpState& FsdpState::Optimizer(std::string key, torch::optim::Optimizer& optimizer) {
  Add(std::move(key), Kind::kOptimizer).optimizer = &optimizer;
  return *this;
}

FsdpState& FsdpState::Set(std::string key, Value value) {
  for (Entry& e : entries_) {
    if (e.key == key && e.kind == Kind::kValue) {
      e.value = std::move(value);
      return *this;
    }
  }
  Add(std::move(key), Kind::kValue).value = std::move(value);
  return *this;
}

const Value* FsdpState::Find(std::string_view key) const {
  for (const Entry& e : entries_) {
    if (e.key == key && e.kind == Kind::kValue) return &e.value;
  }
  return nullptr;
}

namespace {

using Kind = FsdpState::Kind;

int RankOf(const DistributedContext* ctx) { return ctx == nullptr ? 0 : ctx->rank(); }
int WorldOf(const DistributedContext* ctx) { return ctx == nullptr ? 1 : ctx->world_size(); }

std::string Shape(c10::IntArrayRef s) { return ShapeString(s); }

// The tensor an optimizer holds, and which model parameter it is.
struct ParamRef {
  std::string fqn;
  FullyShardedDataParallel* fsdp = nullptr;  // null: a plain model's parameter
  int index = -1;                             // into fsdp->params()
  at::Tensor tensor;
  int group = 0;
};

const FsdpParamInfo* InfoOf(const ParamRef& ref) {
  return ref.fsdp == nullptr ? nullptr : &ref.fsdp->params()[ref.index];
}

// The optimizer's parameters in Python's numbering (across groups, in order).
absl::StatusOr<std::vector<ParamRef>> OptimizerParams(const torch::optim::Optimizer& opt,
                                                      const FsdpState& state,
                                                      const std::string& key) {
  std::unordered_map<const c10::TensorImpl*, ParamRef> owners;
  for (const auto& e : state.entries()) {
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

// Whether an optimizer state tensor named `name` of parameter `info` is
// sharded like its parameter (the same decision on every rank).
bool IsShardedState(const FsdpParamInfo& info, const std::string& name, const at::Tensor& t) {
  if (name == "step") return false;
  if (info.shape.empty()) return t.numel() == info.local_rows;  // a 0-dim parameter
  return t.sizes() == info.shard.sizes();
}

bool Keep(const FsdpCheckpointOptions& options, const std::string& key, const std::string& name) {
  auto it = options.filter.find(key);
  return it == options.filter.end() || !it->second || it->second(name);
}

// Status as bytes (code, message) and back, to tell every rank rank 0's result.
std::string EncodeStatus(const absl::Status& s) {
  return absl::StrCat(static_cast<int>(s.code()), ":", s.message());
}
absl::Status DecodeStatus(const std::string& bytes) {
  const size_t colon = bytes.find(':');
  int code = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(bytes.substr(0, colon), &code)) {
    return absl::InternalError("checkpoint: malformed status from rank 0");
  }
  return absl::Status(static_cast<absl::StatusCode>(code), bytes.substr(colon + 1));
}

// Rank 0's status on every rank.
absl::Status ShareRankZeroStatus(DistributedContext* ctx, const absl::Status& mine) {
  if (ctx == nullptr || ctx->world_size() == 1) return mine;
  absl::StatusOr<std::string> bytes = ctx->BroadcastBytes(ctx->is_rank_zero() ? EncodeStatus(mine) : "");
  if (!bytes.ok()) return bytes.status();
  return DecodeStatus(*bytes);
}

// Every rank's bytes, by rank (a gather built from two all-gathers).
absl::StatusOr<std::vector<std::string>> AllGatherBytes(DistributedContext* ctx,
                                                        const std::string& mine) {
  if (ctx == nullptr || ctx->world_size() == 1) return std::vector<std::string>{mine};
  at::Tensor len = at::full({1}, static_cast<int64_t>(mine.size()), at::kLong).to(ctx->device());
  FABRIC_ASSIGN_OR_RETURN(std::vector<at::Tensor> lens, ctx->AllGather(len));
  int64_t max_len = 1;
  std::vector<int64_t> sizes;
  for (const at::Tensor& l : lens) {
    sizes.push_back(l.cpu().item<int64_t>());
    max_len = std::max(max_len, sizes.back());
  }
  at::Tensor buf = at::zeros({max_len}, at::kByte);
  if (!mine.empty()) std::memcpy(buf.data_ptr(), mine.data(), mine.size());
  FABRIC_ASSIGN_OR_RETURN(std::vector<at::Tensor> all, ctx->AllGather(buf.to(ctx->device())));
  std::vector<std::string> out;
  for (size_t r = 0; r < all.size(); ++r) {
    at::Tensor b = all[r].cpu().contiguous();
    out.emplace_back(static_cast<const char*>(b.data_ptr()), static_cast<size_t>(sizes[r]));
  }
  return out;
}

bool IsDirectory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}
bool IsRegularFile(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// The optimizer's param_groups with 'params' as parameter FQNs (as
// FSDP.optim_state_dict writes them).
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

// Non-model, non-optimizer entries: what Lightning puts in meta.pt.
Dict MetaDict(const FsdpState& state, const FsdpCheckpointOptions& options) {
  Dict meta;
  for (const auto& e : state.entries()) {
    if (e.kind != Kind::kValue) continue;
    if (e.value.is_dict() && options.filter.count(e.key) > 0) {
      Dict kept;
      for (const auto& [k, v] : e.value.as_dict()) {
        if (!k.is_string() || Keep(options, e.key, k.as_string())) kept.Set(k, v);
      }
      meta.Set(e.key, Value(std::move(kept)));
    } else {
      meta.Set(e.key, e.value);
    }
  }
  return meta;
}

// ---------------------------------------------------------------------------
// Sharded save.

absl::StatusOr<std::vector<dcp::WriteItem>> ShardedItems(const FsdpState& state, int rank,
                                                         const FsdpCheckpointOptions& options) {
  std::vector<dcp::WriteItem> items;
  auto add = [&](dcp::WriteItem item, dcp::ObjectPath path) {
    item.path = std::move(path);
    items.push_back(std::move(item));
  };
  for (const auto& e : state.entries()) {
    if (e.kind == Kind::kShardedModel) {
      std::unordered_map<std::string, int> index;
      const auto& params = e.fsdp->params();
      for (size_t i = 0; i < params.size(); ++i) index[params[i].fqn] = static_cast<int>(i);
      for (const auto& [k, v] : ModuleStateDict(*e.module)) {
        const std::string& name = k.as_string();
        if (!Keep(options, e.key, name)) continue;
        const std::string fqn = absl::StrCat(e.key, ".", name);
        auto it = index.find(name);
        if (it == index.end()) {  // a buffer: replicated
          if (rank == 0) add(dcp::WriteItem::Tensor(fqn, v.as_tensor()), {e.key, name});
          continue;
        }
        const FsdpParamInfo& info = params[it->second];
        if (info.rows * info.row_numel == 0) {  // empty: nobody owns a row
          if (rank == 0) {
            add(dcp::WriteItem::Tensor(fqn, at::zeros(info.shape, info.dtype)), {e.key, name});
          }
        } else if (info.owns_data()) {
          add(dcp::WriteItem::Shard(fqn, info.shard.detach(), info.ChunkOffsets(), info.shape),
              {e.key, name});
        }
      }
    } else if (e.kind == Kind::kModel) {
      if (rank != 0) continue;
      for (const auto& [k, v] : ModuleStateDict(*e.module)) {
        const std::string& name = k.as_string();
        if (!Keep(options, e.key, name)) continue;
        add(dcp::WriteItem::Tensor(absl::StrCat(e.key, ".", name), v.as_tensor()), {e.key, name});
      }
    } else if (e.kind == Kind::kOptimizer) {
      FABRIC_ASSIGN_OR_RETURN(std::vector<ParamRef> refs,
                              OptimizerParams(*e.optimizer, state, e.key));
      FABRIC_ASSIGN_OR_RETURN(Dict osd, OptimizerStateDict(*e.optimizer));
      if (Keep(options, e.key, "state")) {
        for (const auto& [id, st] : osd.Find("state")->as_dict()) {
          const ParamRef& ref = refs.at(id.as_int());
          const FsdpParamInfo* info = InfoOf(ref);
          for (const auto& [n, v] : st.as_dict()) {
            const std::string& name = n.as_string();
            const std::string fqn = absl::StrCat(e.key, ".state.", ref.fqn, ".", name);
            dcp::ObjectPath path = {e.key, std::string("state"), ref.fqn, name};
            if (!v.is_tensor()) {
              if (rank == 0) add(dcp::WriteItem::Object(fqn, v), path);
              continue;
            }
            const at::Tensor& t = v.as_tensor();
            if (info != nullptr && IsShardedState(*info, name, t)) {
              if (info->owns_data()) {
                add(dcp::WriteItem::Shard(fqn, t, info->ChunkOffsets(), info->shape), path);
              }
            } else if (info != nullptr && t.dim() != 0) {
              return absl::UnimplementedError(absl::StrCat(
                  fqn, ": optimizer state of shape ", Shape(t.sizes()),
                  " is neither a scalar nor shaped like the shard ", Shape(info->shard.sizes())));
            } else if (rank == 0) {
              add(dcp::WriteItem::Tensor(fqn, t), path);
            }
          }
        }
      }
      if (rank == 0 && Keep(options, e.key, "param_groups")) {
        Dict nested;
        Dict inner;
        inner.Set("param_groups", GroupsWithNames(osd, refs));
        nested.Set(e.key, Value(std::move(inner)));
        FABRIC_ASSIGN_OR_RETURN(std::vector<dcp::FlatEntry> flat,
                                dcp::FlattenStateDict(Value(std::move(nested))));
        for (dcp::FlatEntry& f : flat) {
          add(dcp::WriteItem::Object(f.key, std::move(f.value)), std::move(f.path));
        }
      }
    }
  }
  return items;
}

absl::Status SaveSharded(const std::string& dir, FsdpState& state, DistributedContext* ctx,
                         const FsdpCheckpointOptions& options) {
  const int rank = RankOf(ctx), world = WorldOf(ctx);
  absl::Status prep;
  if (rank == 0) {
    if (IsRegularFile(dir) && ::unlink(dir.c_str()) != 0) {
      prep = absl::FailedPreconditionError(
          absl::StrCat("cannot replace the file ", dir, " by a checkpoint folder"));
    }
    if (prep.ok()) prep = dcp::PrepareCheckpointDir(dir);
  }
  FABRIC_RETURN_IF_ERROR(ShareRankZeroStatus(ctx, prep));

  absl::StatusOr<std::vector<dcp::WriteResult>> results;
  {
    absl::StatusOr<std::vector<dcp::WriteItem>> items = ShardedItems(state, rank, options);
    if (items.ok()) {
      dcp::WriteOptions wo;
      wo.direct_io = options.direct_io;
      results = dcp::WriteRankFile(dir, rank, *items, wo);
    } else {
      results = items.status();
    }
  }
  if (options.before_commit) options.before_commit();
  std::string payload;
  if (results.ok()) {
    absl::StatusOr<std::string> encoded = dcp::EncodeWriteResults(*results);
    payload = encoded.ok() ? "O" + *encoded : "E" + encoded.status().ToString();
  } else {
    payload = absl::StrCat("E", "rank ", rank, ": ", results.status().ToString());
  }
  FABRIC_ASSIGN_OR_RETURN(std::vector<std::string> all, AllGatherBytes(ctx, payload));

  absl::Status commit;
  if (rank == 0) {
    std::vector<std::vector<dcp::WriteResult>> by_rank;
    std::vector<std::string> errors;
    for (int r = 0; r < world; ++r) {
      if (all[r].empty() || all[r][0] != 'O') {
        errors.push_back(all[r].empty() ? absl::StrCat("rank ", r, ": no result") : all[r].substr(1));
        continue;
      }
      absl::StatusOr<std::vector<dcp::WriteResult>> decoded =
          dcp::DecodeWriteResults(std::string_view(all[r]).substr(1));
      if (!decoded.ok()) {
        errors.push_back(absl::StrCat("rank ", r, ": ", decoded.status().ToString()));
        continue;
      }
      by_rank.push_back(*std::move(decoded));
    }
    if (!errors.empty()) {
      commit = absl::InternalError(absl::StrCat("saving the sharded checkpoint ", dir,
                                                " failed: ", absl::StrJoin(errors, "; ")));
    }
    if (commit.ok()) {
      TorchSaveOptions so;
      so.direct_io = options.direct_io;
      commit = TorchSave(absl::StrCat(dir, "/", kFsdpMetaFileName), Value(MetaDict(state, options)),
                         so);
    }
    if (commit.ok()) {
      absl::StatusOr<dcp::Metadata> md = dcp::BuildMetadata(by_rank, dcp::NewStorageMeta(dir));
      commit = md.ok() ? dcp::WriteMetadata(dir, *md) : md.status();
    }
    if (commit.ok()) commit = dcp::RemoveStaleRankFiles(dir, world);
  }
  return ShareRankZeroStatus(ctx, commit);
}

// ---------------------------------------------------------------------------
// Full save: one torch.save file, gathered and streamed a tensor at a time.

struct PendingRecord {
  std::string key;
  // Emits the record's bytes as pieces, in order, to `emit` (collective for
  // sharded tensors: every rank calls it, in the same order).
  std::function<absl::Status(const std::function<absl::Status(const at::Tensor&)>& emit)> produce;
};

using Emit = std::function<absl::Status(const at::Tensor&)>;

// Bytes of one collective while streaming a sharded tensor to rank 0.
constexpr int64_t kStreamChunkBytes = int64_t{16} << 20;

// The full tensor of parameter `index`, from every rank's shard-shaped
// `local`, to rank 0's `emit` in row order: rank 0's rows straight from its
// memory, every other rank's broadcast by that rank in chunks of at most
// kStreamChunkBytes. Peak memory: one chunk (no rank assembles the tensor).
absl::Status StreamSharded(FullyShardedDataParallel& fsdp, int index, const at::Tensor& local,
                           const Emit& emit) {
  const FsdpParamInfo& p = fsdp.params()[index];
  DistributedContext& ctx = fsdp.context();
  const int rank = ctx.rank(), world = ctx.world_size();
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
                                 : at::empty({n}, flat.options().device(ctx.device()));
      FABRIC_RETURN_IF_ERROR(ctx.Broadcast(buf, r));
      if (rank == 0) FABRIC_RETURN_IF_ERROR(emit(buf));
    }
  }
  return absl::OkStatus();
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

// Replaces tensors inside a value by TensorRefs written from this rank.
Value RefTensors(const Value& v, std::vector<PendingRecord>* records) {
  switch (v.kind()) {
    case Value::Kind::kTensor: {
      const std::string key = std::to_string(records->size());
      at::Tensor t = v.as_tensor().detach();
      records->push_back({key, [t](const Emit& emit) { return emit(t); }});
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

absl::Status SaveFull(const std::string& path, FsdpState& state, DistributedContext* ctx,
                      const FsdpCheckpointOptions& options) {
  const int rank = RankOf(ctx);
  absl::Status prep;
  if (rank == 0 && IsDirectory(path)) {
    prep = absl::FailedPreconditionError(
        absl::StrCat("the checkpoint path exists and is a directory: ", path));
  }
  FABRIC_RETURN_IF_ERROR(ShareRankZeroStatus(ctx, prep));

  // The tree (with TensorRefs) and, in the same order, how to produce each
  // record. Every rank builds both so that the gathers line up.
  std::vector<PendingRecord> records;
  Dict root;
  auto next_key = [&] { return std::to_string(records.size()); };
  absl::Status build;
  for (const auto& e : state.entries()) {
    if (!build.ok()) break;
    if (e.kind == Kind::kShardedModel || e.kind == Kind::kModel) {
      std::unordered_map<std::string, int> index;
      if (e.fsdp != nullptr) {
        const auto& params = e.fsdp->params();
        for (size_t i = 0; i < params.size(); ++i) index[params[i].fqn] = static_cast<int>(i);
      }
      Dict sd;
      for (const auto& [k, v] : ModuleStateDict(*e.module)) {
        const std::string& name = k.as_string();
        if (!Keep(options, e.key, name)) continue;
        const std::string key = next_key();
        auto it = index.find(name);
        if (it != index.end()) {
          const FsdpParamInfo& info = e.fsdp->params()[it->second];
          FullyShardedDataParallel* fsdp = e.fsdp;
          const int i = it->second;
          records.push_back({key, [fsdp, i](const Emit& emit) {
                               return StreamSharded(*fsdp, i, fsdp->params()[i].shard, emit);
                             }});
          sd.Set(name, Value(RefFor(key, info.dtype, info.shape)));
        } else {
          at::Tensor t = v.as_tensor();
          records.push_back({key, [t](const Emit& emit) { return emit(t); }});
          sd.Set(name, Value(RefFor(key, t.scalar_type(), t.sizes().vec())));
        }
      }
      root.Set(e.key, Value(std::move(sd)));
    } else if (e.kind == Kind::kOptimizer) {
      absl::StatusOr<std::vector<ParamRef>> refs = OptimizerParams(*e.optimizer, state, e.key);
      absl::StatusOr<Dict> osd = refs.ok() ? OptimizerStateDict(*e.optimizer)
                                           : absl::StatusOr<Dict>(refs.status());
      if (!osd.ok()) {
        build = osd.status();
        break;
      }
      Dict out;
      if (Keep(options, e.key, "state")) {
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
              FullyShardedDataParallel* fsdp = ref.fsdp;
              const int i = ref.index;
              records.push_back({key, [fsdp, i, t](const Emit& emit) {
                return StreamSharded(*fsdp, i, t, emit);
              }});
              per.Set(name, Value(RefFor(key, t.scalar_type(), info->shape)));
            } else {
              records.push_back({key, [t](const Emit& emit) { return emit(t); }});
              per.Set(name, Value(RefFor(key, t.scalar_type(), t.sizes().vec())));
            }
          }
          st_out.Set(ref.fqn, Value(std::move(per)));
        }
        out.Set("state", Value(std::move(st_out)));
      }
      if (Keep(options, e.key, "param_groups")) {
        out.Set("param_groups", GroupsWithNames(*osd, *refs));
      }
      root.Set(e.key, Value(std::move(out)));
    }
  }
  if (build.ok()) {
    Dict meta = MetaDict(state, options);
    for (const auto& [k, v] : meta) root.Set(k, RefTensors(v, &records));
  }
  // The same on every rank (pure functions of the state), but a failure on
  // one rank must stop all before the gathers.
  if (ctx != nullptr && ctx->world_size() > 1) {
    absl::StatusOr<bool> all_ok = ctx->ReduceBoolean(build.ok(), /*all=*/true);
    if (!all_ok.ok()) return all_ok.status();
    if (!*all_ok) {
      return build.ok() ? absl::InternalError("full checkpoint: another rank failed to prepare")
                        : build;
    }
  } else if (!build.ok()) {
    return build;
  }

  std::unique_ptr<TorchStreamWriter> writer;
  absl::Status status;
  if (rank == 0) {
    TorchSaveOptions so;
    so.direct_io = options.direct_io;
    so.staging_bytes = size_t{32} << 20;  // within the "largest unit + 64 MiB" bound
    absl::StatusOr<std::unique_ptr<TorchStreamWriter>> w =
        TorchStreamWriter::Create(path, Value(std::move(root)), so);
    if (w.ok()) {
      writer = *std::move(w);
    } else {
      status = w.status();
    }
  }
  FABRIC_RETURN_IF_ERROR(ShareRankZeroStatus(ctx, status));
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
    absl::Status produced = r.produce([&](const at::Tensor& t) -> absl::Status {
      if (rank != 0 || !status.ok()) return absl::OkStatus();
      at::Tensor c = t.detach().to(c10::kCPU).contiguous();
      status = writer->AppendStorage(c.data_ptr(),
                                     static_cast<uint64_t>(c.numel()) * c.element_size());
      return absl::OkStatus();
    });
    if (!produced.ok()) return produced;  // a failed collective: the group is unusable
    if (begun && status.ok()) status = writer->EndStorage();
  }
  if (rank == 0 && status.ok()) status = writer->Commit();
  writer.reset();
  return ShareRankZeroStatus(ctx, status);
}

// ---------------------------------------------------------------------------
// Loading.

// One copy to do once everything has been checked.
using PendingRead = std::function<absl::Status()>;

struct LoadPlan {
  StateLoadReport report;
  std::vector<PendingRead> reads;
  std::vector<std::function<absl::Status()>> finish;  // after the reads (optimizers)
};

// Reads run a few at a time: one tensor's byte ranges are a single request or
// a few, and the disk delivers more with several in flight.
constexpr int kReadConcurrency = 4;

absl::Status RunReads(size_t n, const std::function<absl::Status(size_t)>& read) {
  return ParallelFor(n, kReadConcurrency, [&](size_t i) {
    at::NoGradGuard no_grad;  // per thread: grad mode is thread-local
    return read(i);
  });
}

// After the reads, a sharded model drops full parameters that are now stale;
// they are gathered again on use.
void ReshardAfterLoad(LoadPlan& plan, FullyShardedDataParallel* fsdp) {
  if (fsdp == nullptr) return;
  plan.finish.push_back([fsdp] {
    fsdp->Reshard();
    return absl::OkStatus();
  });
}

// Where an optimizer's loaded state goes: {idx: {name: tensor or value}}.
struct OptimizerLoad {
  torch::optim::Optimizer* optimizer = nullptr;
  std::string key;
  Dict state;
  Value groups;  // list, 'params' already as our indices
  bool has_groups = false;
  // Sharded state tensors are TensorRefs whose storage_key indexes this
  // table: LoadOptimizerState allocates each state tensor once and the
  // reader fills it in place (no temporary copy of the optimizer state).
  std::vector<std::function<absl::Status(at::Tensor&)>> readers;

  Value Deferred(at::ScalarType dtype, const std::vector<int64_t>& sizes,
                 std::function<absl::Status(at::Tensor&)> read) {
    TensorRef ref = RefFor(std::to_string(readers.size()), dtype, sizes);
    readers.push_back(std::move(read));
    return Value(std::move(ref));
  }
};

// The checkpoint's param_groups (with parameter FQNs or ints) as our
// optimizer's (with our indices); errors name `what`.
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
  return LoadOptimizerState(*load.optimizer, sd, source, load.key, batch);
}

// Sharded (DCP folder) load.
absl::StatusOr<Dict> LoadSharded(const std::string& dir, FsdpState& state, int rank,
                                 const FsdpCheckpointOptions& options) {
  FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<dcp::CheckpointReader> reader,
                          dcp::CheckpointReader::Open(dir));
  const dcp::CheckpointReader* rd = reader.get();
  std::vector<dcp::KeyInfo> keys = reader->Keys();
  std::set<std::string> consumed;
  LoadPlan plan;
  std::vector<std::unique_ptr<OptimizerLoad>> optimizers;
  std::set<std::string> claimed_prefixes;

  auto check_tensor = [&](const std::string& fqn, c10::IntArrayRef shape) -> bool {
    if (!rd->Contains(fqn)) {
      plan.report.missing_keys.push_back(fqn);
      return false;
    }
    consumed.insert(fqn);
    const dcp::TensorStorageMetadata* md = rd->FindTensor(fqn);
    if (md == nullptr) {
      plan.report.mismatches.push_back(fqn + ": not a tensor in the checkpoint");
      return false;
    }
    if (c10::IntArrayRef(md->size) != shape) {
      plan.report.mismatches.push_back(absl::StrCat(fqn, ": shape ", Shape(md->size),
                                                    " in checkpoint vs ", Shape(shape),
                                                    " in model"));
      return false;
    }
    return true;
  };

  for (auto& e : state.mutable_entries()) {
    if (e.kind == Kind::kValue) continue;
    claimed_prefixes.insert(e.key + ".");
    if (e.kind == Kind::kShardedModel || e.kind == Kind::kModel) {
      std::unordered_map<std::string, int> index;
      if (e.fsdp != nullptr) {
        const auto& params = e.fsdp->params();
        for (size_t i = 0; i < params.size(); ++i) index[params[i].fqn] = static_cast<int>(i);
      }
      for (const auto& [k, v] : ModuleStateDict(*e.module)) {
        const std::string& name = k.as_string();
        const std::string fqn = absl::StrCat(e.key, ".", name);
        auto it = index.find(name);
        if (it == index.end()) {
          at::Tensor dst = v.as_tensor().detach();
          if (!check_tensor(fqn, dst.sizes())) continue;
          plan.reads.push_back([rd, fqn, dst]() mutable { return rd->ReadTensorInto(fqn, dst); });
          continue;
        }
        const FsdpParamInfo& info = e.fsdp->params()[it->second];
        if (!check_tensor(fqn, info.shape)) continue;
        if (!info.owns_data()) continue;
        at::Tensor dst = info.shard.detach();
        std::vector<int64_t> offsets = info.ChunkOffsets(), sizes = info.ChunkSizes();
        plan.reads.push_back([rd, fqn, dst, offsets, sizes]() mutable {
          return rd->ReadRegion(fqn, offsets, sizes, dst);
        });
      }
      ReshardAfterLoad(plan, e.fsdp);
      continue;
    }
    // An optimizer.
    FABRIC_ASSIGN_OR_RETURN(std::vector<ParamRef> refs, OptimizerParams(*e.optimizer, state, e.key));
    auto load = std::make_unique<OptimizerLoad>();
    load->optimizer = e.optimizer;
    load->key = e.key;
    std::unordered_map<std::string, int> by_fqn;
    for (size_t i = 0; i < refs.size(); ++i) by_fqn[refs[i].fqn] = static_cast<int>(i);
    const std::string state_prefix = e.key + ".state.";
    const std::string groups_prefix = e.key + ".param_groups.";
    std::map<int, Dict> per_param;
    std::map<int64_t, Dict> groups;
    for (const dcp::KeyInfo& key : keys) {
      const std::string& fqn = key.fqn;
      if (fqn.rfind(state_prefix, 0) == 0) {
        const std::string rest = fqn.substr(state_prefix.size());
        const size_t dot = rest.rfind('.');
        auto it = dot == std::string::npos ? by_fqn.end() : by_fqn.find(rest.substr(0, dot));
        if (it == by_fqn.end()) continue;  // reported as unexpected below
        consumed.insert(fqn);
        const std::string name = rest.substr(dot + 1);
        const ParamRef& ref = refs[it->second];
        const FsdpParamInfo* info = InfoOf(ref);
        Dict& slot = per_param[it->second];
        if (!key.is_tensor) {
          FABRIC_ASSIGN_OR_RETURN(Value v, rd->ReadObject(fqn));
          slot.Set(name, std::move(v));
          continue;
        }
        const std::vector<int64_t> param_shape =
            info != nullptr ? info->shape : ref.tensor.sizes().vec();
        if (name != "step" && key.size != param_shape) {
          plan.report.mismatches.push_back(absl::StrCat(fqn, ": shape ", Shape(key.size),
                                                        " in checkpoint vs parameter shape ",
                                                        Shape(param_shape)));
          continue;
        }
        if (name == "step" || (info == nullptr && key.size.empty())) {
          FABRIC_ASSIGN_OR_RETURN(at::Tensor t, rd->ReadTensor(fqn));
          slot.Set(name, Value(std::move(t)));
          continue;
        }
        // Read after every check, into the optimizer's buffer: this rank's
        // rows of a sharded parameter's state, all of a plain one's.
        const bool owns = info == nullptr || info->owns_data();
        const std::vector<int64_t> sizes = info != nullptr ? info->shard.sizes().vec() : key.size;
        const std::vector<int64_t> offsets =
            info != nullptr ? info->ChunkOffsets() : std::vector<int64_t>(key.size.size(), 0);
        slot.Set(name, load->Deferred(key.dtype, sizes,
                                      [rd, fqn, offsets, sizes, owns](at::Tensor& dst) {
                                        if (!owns) return absl::OkStatus();
                                        return rd->ReadRegion(fqn, offsets, sizes, dst);
                                      }));
      } else if (fqn.rfind(groups_prefix, 0) == 0) {
        const std::string rest = fqn.substr(groups_prefix.size());
        const size_t dot = rest.find('.');
        int64_t g = 0;
        if (dot == std::string::npos || !absl::SimpleAtoi(rest.substr(0, dot), &g) || g < 0) {
          continue;
        }
        consumed.insert(fqn);
        FABRIC_ASSIGN_OR_RETURN(Value v, rd->ReadObject(fqn));
        groups[g].Set(rest.substr(dot + 1), std::move(v));
      }
    }
    for (auto& [i, d] : per_param) load->state.Set(Value(static_cast<int64_t>(i)), Value(std::move(d)));
    if (groups.empty()) {
      plan.report.missing_keys.push_back(e.key + ".param_groups");
    } else {
      std::vector<Value> list;
      for (auto& [g, d] : groups) {
        if (g != static_cast<int64_t>(list.size())) {
          return absl::DataLossError(absl::StrCat(dir, ": ", groups_prefix, list.size(),
                                                  " is missing"));
        }
        list.push_back(Value(std::move(d)));
      }
      FABRIC_ASSIGN_OR_RETURN(load->groups, MapGroups(Value::List(std::move(list)), refs,
                                                      *e.optimizer,
                                                      absl::StrCat(dir, ": ", e.key, ".param_groups")));
      load->has_groups = true;
    }
    optimizers.push_back(std::move(load));
  }
  for (const dcp::KeyInfo& key : keys) {
    if (consumed.count(key.fqn) > 0) continue;
    for (const std::string& prefix : claimed_prefixes) {
      if (key.fqn.rfind(prefix, 0) == 0) {
        plan.report.unexpected_keys.push_back(key.fqn);
        break;
      }
    }
  }

  // meta.pt: the other entries.
  Dict meta;
  const std::string meta_path = absl::StrCat(dir, "/", kFsdpMetaFileName);
  if (IsRegularFile(meta_path)) {
    FABRIC_ASSIGN_OR_RETURN(Value loaded, TorchLoad(meta_path));
    if (!loaded.is_dict()) {
      return absl::DataLossError(absl::StrCat(meta_path, ": expected a dict, got ",
                                              loaded.kind_name()));
    }
    meta = loaded.as_dict();
  }
  Dict remaining;
  std::set<std::string> wanted;
  for (auto& e : state.mutable_entries()) {
    if (e.kind != Kind::kValue) continue;
    wanted.insert(e.key);
    if (meta.Find(e.key) == nullptr) plan.report.missing_keys.push_back(e.key);
  }
  for (const auto& [k, v] : meta) {
    if (!k.is_string() || wanted.count(k.as_string()) == 0) remaining.Set(k, v);
  }

  FABRIC_RETURN_IF_ERROR(plan.report.ToStatus(dir, options.strict));
  FABRIC_RETURN_IF_ERROR(RunReads(plan.reads.size(), [&](size_t i) { return plan.reads[i](); }));
  for (auto& load : optimizers) {
    if (load->has_groups) FABRIC_RETURN_IF_ERROR(FinishOptimizer(*load));
  }
  for (auto& f : plan.finish) FABRIC_RETURN_IF_ERROR(f());
  for (auto& e : state.mutable_entries()) {
    if (e.kind != Kind::kValue) continue;
    if (const Value* v = meta.Find(e.key)) e.value = *v;
  }
  (void)rank;
  return remaining;
}

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

// Full (torch.save file) load.
absl::StatusOr<Dict> LoadFull(const std::string& path, FsdpState& state,
                              const FsdpCheckpointOptions& options) {
  FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<TorchFile> file, TorchFile::Open(path));
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

  for (auto& e : state.mutable_entries()) {
    if (e.kind == Kind::kValue) continue;
    const Value* sub = root.Find(e.key);
    if (sub == nullptr || !sub->is_dict()) {
      plan.report.missing_keys.push_back(e.key);
      continue;
    }
    consumed.insert(e.key);
    const Dict& d = sub->as_dict();
    if (e.kind == Kind::kShardedModel || e.kind == Kind::kModel) {
      std::unordered_map<std::string, int> index;
      if (e.fsdp != nullptr) {
        const auto& params = e.fsdp->params();
        for (size_t i = 0; i < params.size(); ++i) index[params[i].fqn] = static_cast<int>(i);
      }
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
                                                        Shape(ValueTensorSizes(*saved)),
                                                        " in checkpoint vs ", Shape(shape),
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
    FABRIC_ASSIGN_OR_RETURN(std::vector<ParamRef> refs, OptimizerParams(*e.optimizer, state, e.key));
    auto load = std::make_unique<OptimizerLoad>();
    load->optimizer = e.optimizer;
    load->key = e.key;
    std::unordered_map<std::string, int> by_fqn;
    for (size_t i = 0; i < refs.size(); ++i) by_fqn[refs[i].fqn] = static_cast<int>(i);
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
            plan.report.mismatches.push_back(absl::StrCat(key, ": shape ", Shape(ValueTensorSizes(v)),
                                                          " in checkpoint vs parameter shape ",
                                                          Shape(param_shape)));
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
  for (auto& e : state.mutable_entries()) {
    if (e.kind == Kind::kValue && root.Find(e.key) == nullptr) {
      plan.report.missing_keys.push_back(e.key);
    }
  }
  FABRIC_RETURN_IF_ERROR(plan.report.ToStatus(path, options.strict));
  FABRIC_RETURN_IF_ERROR(RunReads(plan.reads.size(), [&](size_t i) { return plan.reads[i](); }));
  for (auto& load : optimizers) {
    if (load->has_groups) FABRIC_RETURN_IF_ERROR(FinishOptimizer(*load));
  }
  for (auto& fn : plan.finish) FABRIC_RETURN_IF_ERROR(fn());
  for (auto& e : state.mutable_entries()) {
    if (e.kind != Kind::kValue) continue;
    if (const Value* v = root.Find(e.key)) {
      FABRIC_ASSIGN_OR_RETURN(e.value, file->Materialize(*v));
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

}  // namespace

absl::Status FsdpSaveCheckpoint(const std::string& path, FsdpState& state,
                                DistributedContext* context, const FsdpCheckpointOptions& options) {
  if (options.state_dict_type == StateDictType::kFull) {
    return SaveFull(path, state, context, options);
  }
  return SaveSharded(path, state, context, options);
}

absl::StatusOr<Dict> FsdpLoadCheckpoint(const std::string& path, FsdpState& state,
                                        DistributedContext* context,
                                        const FsdpCheckpointOptions& options) {
  if (IsDirectory(path)) return LoadSharded(path, state, RankOf(context), options);
  if (!IsRegularFile(path)) {
    return absl::NotFoundError(absl::StrCat("no checkpoint at ", path));
  }
  return LoadFull(path, state, options);
}

FsdpState FsdpStateOf(
    const State& state,
    const std::function<FullyShardedDataParallel*(const torch::nn::Module&)>& sharded_of) {
  FsdpState out;
  for (const auto& [key, entry] : state.entries()) {
    switch (entry.kind()) {
      case StateEntry::Kind::kModule:
        if (FullyShardedDataParallel* f = sharded_of ? sharded_of(entry.module()) : nullptr) {
          out.Model(key, *f);
        } else {
          out.Model(key, entry.module());
        }
        break;
      case StateEntry::Kind::kOptimizer:
        out.Optimizer(key, entry.optimizer());
        break;
      case StateEntry::Kind::kValue:
        out.Set(key, entry.value());
        break;
    }
  }
  return out;
}

void CopyLoadedValues(const FsdpState& loaded, State& state) {
  for (auto& [key, entry] : state.entries()) {
    if (!entry.is_value()) continue;
    if (const Value* v = loaded.Find(key)) entry.value() = *v;
  }
}

absl::StatusOr<Dict> FsdpOptimizerStateDict(FullyShardedDataParallel& fsdp,
                                            const torch::optim::Optimizer& optimizer,
                                            OptimStateForm form, bool rank0_only) {
  FABRIC_ASSIGN_OR_RETURN(Dict osd, OptimizerStateDict(optimizer));
  if (form == OptimStateForm::kLocal) return osd;
  FsdpState state;
  state.Model("model", fsdp);
  FABRIC_ASSIGN_OR_RETURN(std::vector<ParamRef> refs, OptimizerParams(optimizer, state, "optimizer"));
  // The same walk on every rank (the state's keys and shapes are the same
  // everywhere), so the kFull gathers line up.
  Dict by_name;
  for (const auto& [id, entry] : osd.Find("state")->as_dict()) {
    const ParamRef& ref = refs.at(id.as_int());
    const FsdpParamInfo* info = InfoOf(ref);
    Dict per;
    for (const auto& [n, v] : entry.as_dict()) {
      if (form == OptimStateForm::kFull && info != nullptr && v.is_tensor() &&
          IsShardedState(*info, n.as_string(), v.as_tensor())) {
        FABRIC_ASSIGN_OR_RETURN(at::Tensor full, fsdp.GatherFull(ref.index, v.as_tensor()));
        if (!rank0_only || fsdp.context().rank() == 0) per.Set(n, Value(std::move(full)));
      } else {
        per.Set(n, v);
      }
    }
    by_name.Set(Value(ref.fqn), Value(std::move(per)));
  }
  Dict out;
  if (form == OptimStateForm::kFull && rank0_only && fsdp.context().rank() != 0) return out;
  out.Set("state", Value(std::move(by_name)));
  out.Set("param_groups", GroupsWithNames(osd, refs));
  return out;
}

absl::Status FsdpLoadOptimizerStateDict(FullyShardedDataParallel& fsdp,
                                        torch::optim::Optimizer& optimizer,
                                        const Dict& state_dict, OptimStateForm form) {
  if (form == OptimStateForm::kLocal) return LoadOptimizerState(optimizer, state_dict);
  FsdpState state;
  state.Model("model", fsdp);
  FABRIC_ASSIGN_OR_RETURN(std::vector<ParamRef> refs, OptimizerParams(optimizer, state, "optimizer"));
  std::unordered_map<std::string, int64_t> index;
  for (size_t i = 0; i < refs.size(); ++i) index.emplace(refs[i].fqn, static_cast<int64_t>(i));
  const Value* saved = state_dict.Find("state");
  const Value* groups = state_dict.Find("param_groups");
  if (saved == nullptr || !saved->is_dict() || groups == nullptr) {
    return absl::InvalidArgumentError(
        "optimizer state dict: expected 'state' (a dict keyed by parameter name) and "
        "'param_groups'");
  }
  Dict by_index;
  for (const auto& [k, entry] : saved->as_dict()) {
    const std::string where = absl::StrCat("optimizer.state.", k.is_string() ? k.as_string() : k.DebugString());
    auto it = k.is_string() ? index.find(k.as_string()) : index.end();
    if (it == index.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": no parameter of this name in the optimizer"));
    }
    if (!entry.is_dict()) return absl::InvalidArgumentError(absl::StrCat(where, ": expected a dict"));
    const FsdpParamInfo* info = InfoOf(refs[it->second]);
    Dict per;
    for (const auto& [n, v] : entry.as_dict()) {
      // A full tensor gives this rank its rows.
      if (form == OptimStateForm::kFull && info != nullptr && v.is_tensor() &&
          n.is_string() && n.as_string() != "step" &&
          v.as_tensor().sizes() == c10::IntArrayRef(info->shape)) {
        per.Set(n, Value(info->LocalRows(v.as_tensor())));
      } else {
        per.Set(n, v);
      }
    }
    by_index.Set(Value(it->second), Value(std::move(per)));
  }
  FABRIC_ASSIGN_OR_RETURN(Value mapped,
                          MapGroups(*groups, refs, optimizer, "optimizer.param_groups"));
  Dict osd;
  osd.Set("state", Value(std::move(by_index)));
  osd.Set("param_groups", std::move(mapped));
  return LoadOptimizerState(optimizer, osd);
}

}  // namespace fabric::strategies
