#include "strategies/fsdp_optimizer_state.h"

#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <torch/optim/optimizer.h>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "checkpoint/optimizer_state.h"
#include "strategies/fsdp_checkpoint_internal.h"

namespace fabric::strategies {

using fsdp_internal::Entry;
using fsdp_internal::ParamRef;

namespace {

// The optimizer's parameters, all of the one model `fsdp`.
absl::StatusOr<std::vector<ParamRef>> ParamsOf(FullyShardedDataParallel& fsdp,
                                               const torch::optim::Optimizer& optimizer) {
  Entry model;
  model.key = "model";
  model.kind = Entry::Kind::kShardedModel;
  model.fsdp = &fsdp;
  model.module = &fsdp.module();
  return fsdp_internal::OptimizerParams(optimizer, {model}, "optimizer");
}

}  // namespace

absl::StatusOr<Dict> FsdpOptimizerStateDict(FullyShardedDataParallel& fsdp,
                                            const torch::optim::Optimizer& optimizer,
                                            OptimStateForm form, bool rank0_only) {
  FABRIC_ASSIGN_OR_RETURN(Dict osd, OptimizerStateDict(optimizer));
  if (form == OptimStateForm::kLocal) return osd;
  FABRIC_ASSIGN_OR_RETURN(std::vector<ParamRef> refs, ParamsOf(fsdp, optimizer));
  // The same walk on every rank (the state's keys and shapes are the same
  // everywhere), so the kFull gathers line up.
  Dict by_name;
  for (const auto& [id, entry] : osd.Find("state")->as_dict()) {
    const ParamRef& ref = refs.at(id.as_int());
    const FsdpParamInfo* info = fsdp_internal::InfoOf(ref);
    Dict per;
    for (const auto& [n, v] : entry.as_dict()) {
      if (form == OptimStateForm::kFull && info != nullptr && v.is_tensor() &&
          fsdp_internal::IsShardedState(*info, n.as_string(), v.as_tensor())) {
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
  out.Set("param_groups", fsdp_internal::GroupsWithNames(osd, refs));
  return out;
}

absl::Status FsdpLoadOptimizerStateDict(FullyShardedDataParallel& fsdp,
                                        torch::optim::Optimizer& optimizer,
                                        const Dict& state_dict, OptimStateForm form) {
  if (form == OptimStateForm::kLocal) return LoadOptimizerState(optimizer, state_dict);
  FABRIC_ASSIGN_OR_RETURN(std::vector<ParamRef> refs, ParamsOf(fsdp, optimizer));
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
    const std::string where =
        absl::StrCat("optimizer.state.", k.is_string() ? k.as_string() : k.DebugString());
    auto it = k.is_string() ? index.find(k.as_string()) : index.end();
    if (it == index.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": no parameter of this name in the optimizer"));
    }
    if (!entry.is_dict()) return absl::InvalidArgumentError(absl::StrCat(where, ": expected a dict"));
    const FsdpParamInfo* info = fsdp_internal::InfoOf(refs[it->second]);
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
  FABRIC_ASSIGN_OR_RETURN(Value mapped, fsdp_internal::MapGroups(*groups, refs, optimizer,
                                                                 "optimizer.param_groups"));
  Dict osd;
  osd.Set("state", Value(std::move(by_index)));
  osd.Set("param_groups", std::move(mapped));
  return LoadOptimizerState(optimizer, osd);
}

}  // namespace fabric::strategies
