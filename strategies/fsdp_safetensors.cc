#include "strategies/fsdp_safetensors.h"

#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/nn/module.h>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "checkpoint/module_state.h"

namespace fabric::strategies {

absl::StatusOr<StateLoadReport> FsdpLoadSafetensors(FullyShardedDataParallel& fsdp,
                                                    const SafetensorsCheckpoint& checkpoint,
                                                    bool strict) {
  fsdp.Reshard();
  std::unordered_map<std::string, const FsdpParamInfo*> sharded;
  for (const FsdpParamInfo& p : fsdp.params()) sharded.emplace(p.fqn, &p);

  // What the module expects, in state-dict order: sharded parameters by their
  // full shape, everything else (buffers) as the tensor it is.
  struct Target {
    std::string key;
    const FsdpParamInfo* param = nullptr;
    at::Tensor tensor;  // not sharded
    const SafetensorsCheckpoint::Tensor* file = nullptr;
  };
  std::vector<Target> targets;
  std::unordered_set<std::string> keys;
  StateLoadReport report;
  for (const auto& [k, v] : ModuleStateDict(fsdp.module())) {
    Target t;
    t.key = k.as_string();
    auto it = sharded.find(t.key);
    if (it != sharded.end()) {
      t.param = it->second;
    } else {
      t.tensor = v.as_tensor();
    }
    keys.insert(t.key);
    t.file = checkpoint.Find(t.key);
    if (t.file == nullptr) {
      report.missing_keys.push_back(t.key);
      continue;
    }
    const std::vector<int64_t> want = t.param ? t.param->shape : t.tensor.sizes().vec();
    if (t.file->info->shape != want) {
      report.mismatches.push_back(absl::StrCat(t.key, ": shape ", ShapeString(t.file->info->shape),
                                               " in file vs ", ShapeString(want), " in module"));
    }
    const at::ScalarType to = t.param ? t.param->dtype : t.tensor.scalar_type();
    if (c10::isComplexType(t.file->info->dtype) && !c10::isComplexType(to)) {
      report.mismatches.push_back(absl::StrCat(t.key, ": complex in file, real in module"));
    }
    targets.push_back(std::move(t));
  }
  for (const auto& [name, t] : checkpoint.tensors()) {
    if (!keys.count(name)) report.unexpected_keys.push_back(name);
  }
  FABRIC_RETURN_IF_ERROR(report.ToStatus(checkpoint.path(), strict));

  c10::NoGradGuard no_grad;
  for (Target& t : targets) {
    if (t.param == nullptr) {
      FABRIC_RETURN_IF_ERROR(t.file->file->ReadInto(*t.file->info, t.tensor));
    } else if (t.param->owns_data()) {
      at::Tensor shard = t.param->shard;
      FABRIC_RETURN_IF_ERROR(t.file->file->ReadRowsInto(*t.file->info, t.param->row_offset,
                                                        t.param->local_rows, shard));
    }
  }
  return report;
}

}  // namespace fabric::strategies
