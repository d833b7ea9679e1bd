#include "strategies/fsdp_sharded_checkpoint.h"


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

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "checkpoint/checkpoint_kind.h"
#include "checkpoint/dcp_metadata.h"
#include "checkpoint/dcp_reader.h"
#include "checkpoint/dcp_writer.h"
#include "checkpoint/fs_util.h"
#include "checkpoint/module_state.h"
#include "checkpoint/staging.h"
#include "checkpoint/optimizer_state.h"
#include "checkpoint/remove_checkpoint.h"
#include "checkpoint/torch_save.h"
#include "strategies/fsdp_checkpoint_internal.h"

namespace fabric::strategies {

using namespace fsdp_internal;  // NOLINT: this file implements them

namespace {

absl::StatusOr<std::vector<dcp::WriteItem>> ShardedItems(const std::vector<Entry>& entries, int rank,
                                                         const FsdpCheckpointOptions& options) {
  std::vector<dcp::WriteItem> items;
  auto add = [&](dcp::WriteItem item, dcp::ObjectPath path) {
    item.path = std::move(path);
    items.push_back(std::move(item));
  };
  for (const Entry& e : entries) {
    if (e.kind == Kind::kShardedModel) {
      const std::unordered_map<std::string, int> index = ParamIndex(e.fsdp);
      const auto& params = e.fsdp->params();
      for (const auto& [k, v] : ModuleStateDict(*e.module)) {
        const std::string& name = k.as_string();
        const std::string fqn = absl::StrCat(e.key, ".", name);
        auto it = index.find(name);
        if (it == index.end()) {  // a buffer: replicated
          if (Keep(options, e.key, name, v) && rank == 0) {
            add(dcp::WriteItem::Tensor(fqn, v.as_tensor()), {e.key, name});
          }
          continue;
        }
        const FsdpParamInfo& info = params[it->second];
        // The filter sees what this rank holds of the parameter: its shard.
        if (!Keep(options, e.key, name, Value(info.shard.detach()))) continue;
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
        if (!Keep(options, e.key, name, v)) continue;
        add(dcp::WriteItem::Tensor(absl::StrCat(e.key, ".", name), v.as_tensor()), {e.key, name});
      }
    } else if (e.kind == Kind::kOptimizer) {
      FABRIC_ASSIGN_OR_RETURN(std::vector<ParamRef> refs,
                              OptimizerParams(*e.optimizer, entries, e.key));
      FABRIC_ASSIGN_OR_RETURN(Dict osd, OptimizerStateDict(*e.optimizer));
      if (Keep(options, e.key, "state", *osd.Find("state"))) {
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
                  fqn, ": optimizer state of shape ", ShapeString(t.sizes()),
                  " is neither a scalar nor shaped like the shard ", ShapeString(info->shard.sizes())));
            } else if (rank == 0) {
              add(dcp::WriteItem::Tensor(fqn, t), path);
            }
          }
        }
      }
      Value groups = GroupsWithNames(osd, refs);
      if (rank == 0 && Keep(options, e.key, "param_groups", groups)) {
        Dict nested;
        Dict inner;
        inner.Set("param_groups", std::move(groups));
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

// The write, gather and commit of a planned (and possibly staged) save.
absl::Status WriteSharded(const std::string& dir,
                          const absl::StatusOr<std::vector<dcp::WriteItem>>& items,
                          const Value& meta, DistributedContext* ctx,
                          const FsdpCheckpointOptions& options) {
  const int rank = RankOf(ctx), world = WorldOf(ctx);
  // The new checkpoint is written beside the path and swapped (or renamed)
  // in once committed, so an old one stays loadable until then. Rank 0 picks the folder; every rank writes there.
  std::string target = dir;
  absl::Status prep;
  if (rank == 0) {
    const std::string name = StripTrailingSlashes(dir);
    // Always beside it, even for a first save: a kill then leaves only a
    // hidden temp, never an incomplete folder at the path itself.
    target = absl::StrCat(DirName(name), "/", SavingName(BaseName(name)));
    prep = dcp::PrepareCheckpointDir(target);
  }
  FABRIC_RETURN_IF_ERROR(ShareStatus(ctx, prep));
  if (world > 1) {
    FABRIC_ASSIGN_OR_RETURN(const std::vector<std::string> names,
                            AllGatherBytes(ctx, rank == 0 ? target : std::string()));
    target = names[0];
  }

  absl::StatusOr<std::vector<dcp::WriteResult>> results;
  if (items.ok()) {
    dcp::WriteOptions wo;
    wo.direct_io = options.direct_io;
    results = dcp::WriteRankFile(target, rank, *items, wo);
  } else {
    results = items.status();
  }
  if (options.before_commit) options.before_commit();
  std::string payload;
  if (results.ok()) {
    absl::StatusOr<std::string> encoded = dcp::EncodeWriteResults(*results);
    payload = encoded.ok() ? "O" + *encoded : "E" + encoded.status().ToString();
  } else {
    payload = absl::StrCat("E", "rank ", rank, ": ", results.status().ToString());
  }
  absl::StatusOr<std::vector<std::string>> gathered = AllGatherBytes(ctx, payload);
  if (!gathered.ok()) {
    // A rank died or the group broke: rank 0 drops the temp folder (a dead
    // rank's file half written in it is no longer being written).
    if (rank == 0 && target != dir) RemoveCheckpoint(target).IgnoreError();
    return gathered.status();
  }
  std::vector<std::string> all = *std::move(gathered);

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
      commit = TorchSave(LightningMetaPath(target), meta, so);
    }
    if (commit.ok()) {
      absl::StatusOr<dcp::Metadata> md = dcp::BuildMetadata(by_rank, dcp::NewStorageMeta(dir));
      commit = md.ok() ? dcp::WriteMetadata(target, *md) : md.status();
    }
    if (commit.ok()) commit = dcp::RemoveStaleRankFiles(target, world);
    if (target != dir) {
      if (commit.ok()) {
        commit = ReplaceCheckpoint(target, StripTrailingSlashes(dir));
      } else {
        // Every rank is done writing; the old checkpoint stays as it was.
        RemoveCheckpoint(target).IgnoreError();
      }
    }
  }
  return ShareStatus(ctx, commit);
}

}  // namespace

StagedWrite FsdpStageSharded(const std::string& dir, const State& state,
                             const FsdpWrapperOf& wrapper_of, const DistributedContext* ctx,
                             const FsdpCheckpointOptions& options, StagingBuffers* staging) {
  const std::vector<Entry> entries = ResolveEntries(state, wrapper_of);
  const int rank = RankOf(ctx);
  absl::StatusOr<std::vector<dcp::WriteItem>> items = ShardedItems(entries, rank, options);
  if (items.ok()) {
    for (dcp::WriteItem& item : *items) {
      if (item.tensor.defined()) item.tensor = StageOrPass(staging, item.tensor);
      if (item.value.has_value()) item.value = StageOrPass(staging, *item.value);
    }
  }
  // meta.pt: rank 0 writes it, from a snapshot like the shards.
  Value meta = rank == 0 ? StageOrPass(staging, Value(MetaDict(entries, options))) : Value();
  return [dir, items = std::move(items), meta = std::move(meta),
          options](DistributedContext* write_ctx) {
    return WriteSharded(dir, items, meta, write_ctx, options);
  };
}

absl::Status FsdpSaveSharded(const std::string& dir, const State& state,
                             const FsdpWrapperOf& wrapper_of, DistributedContext* ctx,
                             const FsdpCheckpointOptions& options) {
  return FsdpStageSharded(dir, state, wrapper_of, ctx, options, /*staging=*/nullptr)(ctx);
}

absl::StatusOr<Dict> FsdpLoadSharded(const std::string& dir, State& state,
                                     const FsdpWrapperOf& wrapper_of,
                                     const FsdpCheckpointOptions& options) {
  const std::vector<Entry> entries = ResolveEntries(state, wrapper_of);
  FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<dcp::CheckpointReader> reader,
                          dcp::CheckpointReader::Open(dir, options.load));
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
      plan.report.mismatches.push_back(absl::StrCat(fqn, ": shape ", ShapeString(md->size),
                                                    " in checkpoint vs ", ShapeString(shape),
                                                    " in model"));
      return false;
    }
    return true;
  };

  for (const Entry& e : entries) {
    if (e.kind == Kind::kValue) continue;
    claimed_prefixes.insert(e.key + ".");
    if (e.kind == Kind::kShardedModel || e.kind == Kind::kModel) {
      const std::unordered_map<std::string, int> index = ParamIndex(e.fsdp);
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
    FABRIC_ASSIGN_OR_RETURN(std::unique_ptr<OptimizerLoad> load,
                            NewOptimizerLoad(e, entries, options.load));
    const std::vector<ParamRef>& refs = load->refs;
    const std::unordered_map<std::string, int>& by_fqn = load->by_fqn;
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
          plan.report.mismatches.push_back(absl::StrCat(fqn, ": shape ", ShapeString(key.size),
                                                        " in checkpoint vs parameter shape ",
                                                        ShapeString(param_shape)));
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
  const std::string meta_path = LightningMetaPath(dir);
  if (StatCheckpoint(meta_path).is_single_file()) {
    FABRIC_ASSIGN_OR_RETURN(Value loaded, TorchLoad(meta_path, c10::kCPU, options.load));
    if (!loaded.is_dict()) {
      return absl::DataLossError(absl::StrCat(meta_path, ": expected a dict, got ",
                                              loaded.kind_name()));
    }
    meta = loaded.as_dict();
  }
  Dict remaining;
  std::set<std::string> wanted;
  for (const Entry& e : entries) {
    if (e.kind != Kind::kValue) continue;
    wanted.insert(e.key);
    if (meta.Find(e.key) == nullptr) plan.report.missing_keys.push_back(e.key);
  }
  for (const auto& [k, v] : meta) {
    if (!k.is_string() || wanted.count(k.as_string()) == 0) remaining.Set(k, v);
  }

  FABRIC_RETURN_IF_ERROR(plan.report.ToStatus(dir, options.strict));
  FABRIC_RETURN_IF_ERROR(RunPlan(plan, optimizers, options.load));
  for (const Entry& e : entries) {
    if (e.kind != Kind::kValue) continue;
    if (const Value* v = meta.Find(e.key)) state.Find(e.key)->value() = *v;
  }
  return remaining;
}

}  // namespace fabric::strategies
