#include "checkpoint/state_io.h"

#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "checkpoint/module_state.h"
#include "checkpoint/optimizer_state.h"

namespace fabric {
namespace {

absl::Status Annotate(const absl::Status& s, const std::string& prefix) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat(prefix, s.message()));
}

TensorSource SourceFor(const TorchFile& file) {
  return [&file](const TensorRef& ref, at::Tensor& dst) { return file.ReadInto(ref, dst); };
}

TensorBatchSource BatchSourceFor(const TorchFile& file) {
  return [&file](std::vector<TensorRead>& reads) { return file.ReadIntoMany(reads); };
}

absl::StatusOr<const Dict*> EntryDict(const TorchFile& file, const std::string& key,
                                      const Value& v) {
  if (!v.is_dict()) {
    return absl::InvalidArgumentError(absl::StrCat(file.path(), ": entry '", key,
                                                   "' is a ", v.kind_name(),
                                                   ", expected a state dict"));
  }
  return &v.as_dict();
}

// FSDP's full optimizer state (as PyTorch's FSDP.optim_state_dict) keys
// `state` and the param_groups' `params` by parameter name. A plain
// optimizer counts parameters by index: map names to indices through the
// module in `state` that owns the optimizer's parameters.
absl::StatusOr<Dict> RekeyByIndex(const Dict& saved, const torch::optim::Optimizer& optimizer,
                                  const State& state, const std::string& where) {
  const Value* groups = saved.Find("param_groups");
  if (groups == nullptr || !groups->is_sequence() || groups->items().empty()) return saved;
  const Value& first = groups->items()[0];
  if (!first.is_dict()) return saved;
  const Value* params = first.as_dict().Find("params");
  if (params == nullptr || !params->is_sequence() || params->items().empty() ||
      !params->items()[0].is_string()) {
    return saved;  // already keyed by index
  }
  std::unordered_map<const c10::TensorImpl*, std::string> names;
  for (const auto& [key, entry] : state.entries()) {
    if (!entry.is_module()) continue;
    for (const auto& p : entry.module().named_parameters()) {
      names.emplace(p.value().unsafeGetTensorImpl(), p.key());
    }
  }
  std::unordered_map<std::string, int64_t> index;
  int64_t i = 0;
  for (const auto& group : optimizer.param_groups()) {
    for (const at::Tensor& p : group.params()) {
      auto it = names.find(p.unsafeGetTensorImpl());
      if (it == names.end()) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ": the optimizer state is keyed by parameter name, but parameter ", i,
            " of the optimizer belongs to no module of the state; add the model to the state"));
      }
      index.emplace(it->second, i++);
    }
  }
  auto to_index = [&](const Value& name) -> absl::StatusOr<Value> {
    if (!name.is_string()) return name;
    auto it = index.find(name.as_string());
    if (it == index.end()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": parameter '", name.as_string(),
                                                     "' of the saved optimizer is not a parameter "
                                                     "of this optimizer"));
    }
    return Value(it->second);
  };
  Dict out;
  for (const auto& [k, v] : saved) {
    if (k.is_string() && k.as_string() == "state" && v.is_dict()) {
      Dict st;
      for (const auto& [name, per_param] : v.as_dict()) {
        FABRIC_ASSIGN_OR_RETURN(Value idx, to_index(name));
        st.Set(idx, per_param);
      }
      out.Set(k, Value(std::move(st)));
    } else if (k.is_string() && k.as_string() == "param_groups" && v.is_sequence()) {
      std::vector<Value> new_groups;
      for (const Value& g : v.items()) {
        if (!g.is_dict()) return saved;
        Dict ng = g.as_dict();
        if (const Value* ps = g.as_dict().Find("params"); ps && ps->is_sequence()) {
          std::vector<Value> ids;
          for (const Value& name : ps->items()) {
            FABRIC_ASSIGN_OR_RETURN(Value idx, to_index(name));
            ids.push_back(std::move(idx));
          }
          ng.Set("params", Value::List(std::move(ids)));
        }
        new_groups.push_back(Value(std::move(ng)));
      }
      out.Set(k, Value::List(std::move(new_groups)));
    } else {
      out.Set(k, v);
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<Dict> StateToCheckpoint(const State& state, const StateFilter& filter) {
  Dict out;
  for (const auto& [key, entry] : state.entries()) {
    Value converted;
    switch (entry.kind()) {
      case StateEntry::Kind::kModule:
        converted = Value(ModuleStateDict(entry.module()));
        break;
      case StateEntry::Kind::kOptimizer: {
        absl::StatusOr<Dict> d = OptimizerStateDict(entry.optimizer());
        if (!d.ok()) return Annotate(d.status(), absl::StrCat("state entry '", key, "': "));
        converted = Value(*std::move(d));
        break;
      }
      case StateEntry::Kind::kValue:
        converted = entry.value();
        break;
    }
    if (auto f = filter.find(key); f != filter.end() && converted.is_dict()) {
      Dict kept;
      for (const auto& [k, v] : converted.as_dict()) {
        const std::string name = k.is_string() ? k.as_string() : k.DebugString();
        if (f->second(name, v)) kept.Set(k, v);
      }
      converted = Value(std::move(kept));
    }
    out.Set(key, std::move(converted));
  }
  for (const auto& [key, pred] : filter) {
    if (!state.Contains(key)) {
      return absl::InvalidArgumentError(
          absl::StrCat("filter names '", key, "', which is not an entry of the state (entries: ",
                       absl::StrJoin(state.keys(), ", "), ")"));
    }
  }
  return out;
}

absl::StatusOr<Dict> LoadStateFromCheckpoint(const TorchFile& file, State& state, bool strict,
                                             const LoadOptions& options) {
  const Value& root = file.root();
  if (!root.is_dict()) {
    return absl::InvalidArgumentError(absl::StrCat(
        file.path(), ": the checkpoint holds a ", root.kind_name(),
        ", not a dict of named entries; use LoadRaw for a bare state dict"));
  }
  const Dict& saved = root.as_dict();
  if (strict) {
    std::vector<std::string> missing;
    for (const auto& [key, entry] : state.entries()) {
      if (!saved.Contains(key)) missing.push_back(key);
    }
    if (!missing.empty()) {
      std::vector<std::string> have;
      for (const auto& [k, v] : saved) have.push_back(k.is_string() ? k.as_string() : k.DebugString());
      return absl::NotFoundError(absl::StrCat(
          file.path(), ": requested keys missing from the checkpoint: ",
          absl::StrJoin(missing, ", "), " (the checkpoint has: ", absl::StrJoin(have, ", "),
          "); pass strict=false to load the others"));
    }
  }
  // Optimizer state read into new tensors goes first: it writes nothing
  // live until installed, so a snapshot's copies can still run meanwhile.
  const bool optimizers_first = !options.into_live_optimizer_buffers;
  auto load_entry = [&](const std::string& key, StateEntry& entry) -> absl::Status {
    const Value* v = saved.Find(key);
    if (v == nullptr) return absl::OkStatus();
    switch (entry.kind()) {
      case StateEntry::Kind::kModule: {
        FABRIC_ASSIGN_OR_RETURN(const Dict* d, EntryDict(file, key, *v));
        // A strict mismatch comes back as an error listing every problem.
        absl::StatusOr<StateLoadReport> report =
            LoadModuleState(entry.module(), *d, strict, SourceFor(file), file.path(),
                            BatchSourceFor(file));
        if (!report.ok()) return Annotate(report.status(), absl::StrCat("entry '", key, "': "));
        break;
      }
      case StateEntry::Kind::kOptimizer: {
        FABRIC_ASSIGN_OR_RETURN(const Dict* d, EntryDict(file, key, *v));
        FABRIC_ASSIGN_OR_RETURN(
            Dict by_index,
            RekeyByIndex(*d, entry.optimizer(), state, absl::StrCat(file.path(), ": ", key)));
        if (absl::Status s =
                LoadOptimizerState(entry.optimizer(), by_index, SourceFor(file), key,
                                   BatchSourceFor(file), options.into_live_optimizer_buffers);
            !s.ok()) {
          return Annotate(s, absl::StrCat(file.path(), ": "));
        }
        break;
      }
      case StateEntry::Kind::kValue: {
        absl::StatusOr<Value> m = file.Materialize(*v);
        if (!m.ok()) return Annotate(m.status(), absl::StrCat("entry '", key, "': "));
        entry.value() = *std::move(m);
        break;
      }
    }
    return absl::OkStatus();
  };
  if (optimizers_first) {
    for (auto& [key, entry] : state.entries()) {
      if (entry.is_optimizer()) FABRIC_RETURN_IF_ERROR(load_entry(key, entry));
    }
  }
  if (options.before_live_writes) FABRIC_RETURN_IF_ERROR(options.before_live_writes());
  for (auto& [key, entry] : state.entries()) {
    if (optimizers_first && entry.is_optimizer()) continue;
    FABRIC_RETURN_IF_ERROR(load_entry(key, entry));
  }
  Dict remainder;
  for (const auto& [k, v] : saved) {
    if (k.is_string() && state.Contains(k.as_string())) continue;
    FABRIC_ASSIGN_OR_RETURN(Value m, file.Materialize(v));
    remainder.Set(k, std::move(m));
  }
  return remainder;
}

absl::StatusOr<Dict> LoadAllFromCheckpoint(const TorchFile& file) {
  FABRIC_ASSIGN_OR_RETURN(Value all, file.Materialize(file.root()));
  if (!all.is_dict()) {
    return absl::InvalidArgumentError(
        absl::StrCat(file.path(), ": the checkpoint holds a ", all.kind_name(), ", not a dict"));
  }
  return all.as_dict();
}

absl::Status LoadRawModule(const TorchFile& file, torch::nn::Module& module, bool strict) {
  const Value& root = file.root();
  if (!root.is_dict()) {
    return absl::InvalidArgumentError(absl::StrCat(file.path(), ": holds a ", root.kind_name(),
                                                   ", not a module state dict"));
  }
  absl::StatusOr<StateLoadReport> report =
      LoadModuleState(module, root.as_dict(), strict, SourceFor(file), file.path(),
                      BatchSourceFor(file));
  return report.status();
}

absl::Status LoadRawOptimizer(const TorchFile& file, torch::optim::Optimizer& optimizer,
                              const LoadOptions& options) {
  const Value& root = file.root();
  if (!root.is_dict()) {
    return absl::InvalidArgumentError(absl::StrCat(file.path(), ": holds a ", root.kind_name(),
                                                   ", not an optimizer state dict"));
  }
  return Annotate(LoadOptimizerState(optimizer, root.as_dict(), SourceFor(file), "optimizer",
                                     BatchSourceFor(file), options.into_live_optimizer_buffers),
                  absl::StrCat(file.path(), ": "));
}

}  // namespace fabric
