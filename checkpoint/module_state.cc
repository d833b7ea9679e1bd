#include "checkpoint/module_state.h"

#include <optional>
#include <unordered_map>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <torch/nn/module.h>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "checkpoint/tensor_value.h"

namespace fabric {
namespace {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// Python's Module._save_to_state_dict order: own parameters, own buffers,
// then each child, depth first. (LibTorch's recursive named_parameters() would
// list every parameter before any buffer, which is not Python's order.)
void CollectState(const torch::nn::Module& module, const std::string& prefix,
                  NamedTensors* out) {
  for (const auto& item : module.named_parameters(/*recurse=*/false)) {
    if (item.value().defined()) out->emplace_back(prefix + item.key(), item.value());
  }
  for (const auto& item : module.named_buffers(/*recurse=*/false)) {
    if (item.value().defined()) out->emplace_back(prefix + item.key(), item.value());
  }
  for (const auto& child : module.named_children()) {
    CollectState(*child.value(), prefix + child.key() + ".", out);
  }
}

std::string DtypeString(at::ScalarType dtype) {
  std::optional<std::string> name = DtypeName(dtype);
  return name ? *name : std::string(c10::toString(dtype));
}

// Why `from` cannot be copied into `to` (Tensor.copy_ would silently drop
// information), or nullopt when it can.
std::optional<std::string> DtypeProblem(at::ScalarType from, at::ScalarType to) {
  if (from == to) return std::nullopt;
  if (c10::isComplexType(from) && !c10::isComplexType(to)) {
    return absl::StrCat("dtype ", DtypeString(from), " in file cannot be loaded into ",
                        DtypeString(to), " in module (the imaginary part would be lost)");
  }
  if (c10::isQIntType(from) || c10::isQIntType(to)) {
    return absl::StrCat("dtype ", DtypeString(from), " in file vs ", DtypeString(to),
                        " in module (quantized dtypes must match)");
  }
  return std::nullopt;
}

}  // namespace

Dict ModuleStateDict(const torch::nn::Module& module, const StateKeyFilter& filter) {
  NamedTensors tensors;
  CollectState(module, "", &tensors);
  Dict dict;
  for (auto& [key, tensor] : tensors) {
    if (filter && !filter(key)) continue;
    dict.Set(Value(key), Value(tensor.detach()));
  }
  return dict;
}

absl::StatusOr<StateLoadReport> LoadModuleState(torch::nn::Module& module,
                                                const Dict& state, bool strict,
                                                const TensorSource& source,
                                                const std::string& file,
                                                const TensorBatchSource& batch) {
  NamedTensors targets;
  CollectState(module, "", &targets);
  std::unordered_map<std::string, size_t> index;
  for (size_t i = 0; i < targets.size(); ++i) index.emplace(targets[i].first, i);

  StateLoadReport report;
  std::vector<const Value*> matched(targets.size(), nullptr);
  for (const auto& [key, value] : state.items()) {
    if (!key.is_string()) {
      report.unexpected_keys.push_back(key.DebugString());
      continue;
    }
    auto it = index.find(key.as_string());
    if (it == index.end()) {
      report.unexpected_keys.push_back(key.as_string());
    } else {
      matched[it->second] = &value;
    }
  }
  for (size_t i = 0; i < targets.size(); ++i) {
    const auto& [key, target] = targets[i];
    const Value* value = matched[i];
    if (value == nullptr) {
      report.missing_keys.push_back(key);
      continue;
    }
    if (!value->is_tensor() && !value->is_tensor_ref()) {
      report.mismatches.push_back(
          absl::StrCat(key, ": expected a tensor, got ", value->kind_name()));
      continue;
    }
    const std::vector<int64_t> sizes = ValueTensorSizes(*value);
    if (c10::IntArrayRef(sizes) != target.sizes()) {
      report.mismatches.push_back(absl::StrCat(key, ": shape ", ShapeString(sizes),
                                               " in file vs ", ShapeString(target.sizes()),
                                               " in module"));
    }
    if (auto problem = DtypeProblem(ValueTensorDtype(*value), target.scalar_type())) {
      report.mismatches.push_back(absl::StrCat(key, ": ", *problem));
    }
  }
  FABRIC_RETURN_IF_ERROR(report.ToStatus(file, strict));

  std::vector<bool> done(targets.size(), false);
  if (batch) {
    std::vector<TensorRead> reads;
    for (size_t i = 0; i < targets.size(); ++i) {
      if (matched[i] == nullptr || !matched[i]->is_tensor_ref() ||
          !ReadsStraightInto(matched[i]->as_tensor_ref(), targets[i].second)) {
        continue;
      }
      reads.push_back(TensorRead{matched[i]->as_tensor_ref(), targets[i].second});
      done[i] = true;
    }
    c10::NoGradGuard no_grad;
    // A failed batch is read again one tensor at a time below, so that the
    // error names the key.
    if (!batch(reads).ok()) done.assign(targets.size(), false);
  }
  for (size_t i = 0; i < targets.size(); ++i) {
    if (matched[i] == nullptr || done[i]) continue;
    FABRIC_RETURN_IF_ERROR_PREFIX(
        CopyValueInto(*matched[i], targets[i].second, source, targets[i].first),
        "loading state from '", file, "': ");
  }
  return report;
}

}  // namespace fabric
