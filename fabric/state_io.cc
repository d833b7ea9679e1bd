#include "fabric/state_io.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
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

absl::StatusOr<const Dict*> EntryDict(const TorchFile& file, const std::string& key,
                                      const Value& v) {
  if (!v.is_dict()) {
    return absl::InvalidArgumentError(absl::StrCat(file.path(), ": entry '", key,
                                                   "' is a ", v.kind_name(),
                                                   ", expected a state dict"));
  }
  return &v.as_dict();
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

absl::StatusOr<Dict> LoadStateFromCheckpoint(const TorchFile& file, State& state, bool strict) {
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
  for (auto& [key, entry] : state.entries()) {
    const Value* v = saved.Find(key);
    if (v == nullptr) continue;
    switch (entry.kind()) {
      case StateEntry::Kind::kModule: {
        absl::StatusOr<const Dict*> d = EntryDict(file, key, *v);
        if (!d.ok()) return d.status();
        // A strict mismatch comes back as an error listing every problem.
        absl::StatusOr<StateLoadReport> report =
            LoadModuleState(entry.module(), **d, strict, SourceFor(file), file.path());
        if (!report.ok()) return Annotate(report.status(), absl::StrCat("entry '", key, "': "));
        break;
      }
      case StateEntry::Kind::kOptimizer: {
        absl::StatusOr<const Dict*> d = EntryDict(file, key, *v);
        if (!d.ok()) return d.status();
        if (absl::Status s = LoadOptimizerState(entry.optimizer(), **d, SourceFor(file), key);
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
  }
  Dict remainder;
  for (const auto& [k, v] : saved) {
    if (k.is_string() && state.Contains(k.as_string())) continue;
    absl::StatusOr<Value> m = file.Materialize(v);
    if (!m.ok()) return m.status();
    remainder.Set(k, *std::move(m));
  }
  return remainder;
}

absl::StatusOr<Dict> LoadAllFromCheckpoint(const TorchFile& file) {
  absl::StatusOr<Value> all = file.Materialize(file.root());
  if (!all.ok()) return all.status();
  if (!all->is_dict()) {
    return absl::InvalidArgumentError(
        absl::StrCat(file.path(), ": the checkpoint holds a ", all->kind_name(), ", not a dict"));
  }
  return all->as_dict();
}

absl::Status LoadRawModule(const TorchFile& file, torch::nn::Module& module, bool strict) {
  const Value& root = file.root();
  if (!root.is_dict()) {
    return absl::InvalidArgumentError(absl::StrCat(file.path(), ": holds a ", root.kind_name(),
                                                   ", not a module state dict"));
  }
  absl::StatusOr<StateLoadReport> report =
      LoadModuleState(module, root.as_dict(), strict, SourceFor(file), file.path());
  return report.status();
}

absl::Status LoadRawOptimizer(const TorchFile& file, torch::optim::Optimizer& optimizer) {
  const Value& root = file.root();
  if (!root.is_dict()) {
    return absl::InvalidArgumentError(absl::StrCat(file.path(), ": holds a ", root.kind_name(),
                                                   ", not an optimizer state dict"));
  }
  return Annotate(LoadOptimizerState(optimizer, root.as_dict(), SourceFor(file)),
                  absl::StrCat(file.path(), ": "));
}

}  // namespace fabric
