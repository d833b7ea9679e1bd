#include "checkpoint/optimizer_state.h"

#include <cmath>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <typeinfo>
#include <unordered_map>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <c10/util/Exception.h>
#include <c10/util/Type.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/optimizer.h>
#include <torch/optim/sgd.h>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "checkpoint/aligned_empty.h"
#include "checkpoint/load_report.h"
#include "checkpoint/tensor_value.h"

namespace fabric {
namespace {

using torch::optim::Adam;
using torch::optim::AdamOptions;
using torch::optim::AdamParamState;
using torch::optim::AdamW;
using torch::optim::AdamWOptions;
using torch::optim::AdamWParamState;
using torch::optim::Optimizer;
using torch::optim::OptimizerOptions;
using torch::optim::OptimizerParamState;
using torch::optim::SGD;
using torch::optim::SGDOptions;
using torch::optim::SGDParamState;

enum class OptKind { kSGD, kAdam, kAdamW };

std::string TypeName(const Optimizer& optimizer) {
  return c10::demangle(typeid(optimizer).name());
}

absl::StatusOr<OptKind> KindOf(const Optimizer& optimizer) {
  // AdamW does not derive from Adam in LibTorch, but test the more derived
  // classes first all the same.
  if (dynamic_cast<const AdamW*>(&optimizer) != nullptr) return OptKind::kAdamW;
  if (dynamic_cast<const Adam*>(&optimizer) != nullptr) return OptKind::kAdam;
  if (dynamic_cast<const SGD*>(&optimizer) != nullptr) return OptKind::kSGD;
  return absl::UnimplementedError(absl::StrCat(
      "optimizer state: unsupported optimizer type ", TypeName(optimizer),
      " (supported: torch::optim::SGD, torch::optim::Adam, torch::optim::AdamW)"));
}

// Python's defaults for these hyperparameters are the int 0; writing the same
// type keeps our state dicts identical to Python's.
Value IntIfZero(double v) { return v == 0.0 ? Value(int64_t{0}) : Value(v); }

Value ScalarStep(int64_t step) {
  // torch 2.x keeps 'step' as a float32 scalar tensor on CPU.
  return Value(at::scalar_tensor(static_cast<double>(step), at::TensorOptions().dtype(at::kFloat)));
}

template <typename State>
void AdamStateEntries(const State& s, Dict* out) {
  out->Set("step", ScalarStep(s.step()));
  if (s.exp_avg().defined()) out->Set("exp_avg", Value(s.exp_avg().detach()));
  if (s.exp_avg_sq().defined()) out->Set("exp_avg_sq", Value(s.exp_avg_sq().detach()));
  if (s.max_exp_avg_sq().defined()) {
    out->Set("max_exp_avg_sq", Value(s.max_exp_avg_sq().detach()));
  }
}

template <typename Options>
void AdamGroupEntries(const Options& o, bool decoupled, Dict* out) {
  out->Set("lr", Value(o.lr()));
  out->Set("betas", Value::Tuple({Value(std::get<0>(o.betas())), Value(std::get<1>(o.betas()))}));
  out->Set("eps", Value(o.eps()));
  // AdamW's default weight decay is the float 1e-2; Adam's the int 0.
  out->Set("weight_decay", decoupled ? Value(o.weight_decay()) : IntIfZero(o.weight_decay()));
  out->Set("amsgrad", Value(o.amsgrad()));
  out->Set("maximize", Value(false));
  out->Set("foreach", Value());
  out->Set("capturable", Value(false));
  out->Set("differentiable", Value(false));
  out->Set("fused", Value());
  out->Set("decoupled_weight_decay", Value(decoupled));
}

// ---------------------------------------------------------------------------
// Loading helpers. Each takes the full key path for its messages.

absl::Status Invalid(const std::string& path, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
}

// A number: int, float or a one-element tensor (Python allows a tensor lr).
absl::StatusOr<std::optional<double>> GetNumber(const Dict& group, const char* key,
                                                const std::string& path) {
  const Value* v = group.Find(key);
  if (v == nullptr) return std::nullopt;
  const std::string where = absl::StrCat(path, ".", key);
  if (v->is_int() || v->is_float()) return v->as_float();
  if (v->is_tensor() && v->as_tensor().numel() == 1 && !v->as_tensor().is_complex()) {
    return v->as_tensor().item<double>();
  }
  return Invalid(where, absl::StrCat("expected a number, got ", v->kind_name()));
}

absl::StatusOr<std::optional<bool>> GetBool(const Dict& group, const char* key,
                                            const std::string& path) {
  const Value* v = group.Find(key);
  if (v == nullptr) return std::nullopt;
  if (v->is_bool()) return v->as_bool();
  // Python accepts anything truthy; 0/1 ints appear in hand-written dicts.
  if (v->is_int() && (v->as_int() == 0 || v->as_int() == 1)) return v->as_int() == 1;
  return Invalid(absl::StrCat(path, ".", key),
                 absl::StrCat("expected a bool, got ", v->kind_name()));
}

// (beta1, beta2), or an empty vector when the group has no betas.
absl::StatusOr<std::vector<double>> GetBetas(const Dict& group, const std::string& path) {
  const Value* v = group.Find("betas");
  if (v == nullptr) return std::vector<double>();
  const std::string where = absl::StrCat(path, ".betas");
  if (!v->is_sequence() || v->items().size() != 2) {
    return Invalid(where, absl::StrCat("expected a pair of numbers, got ", v->DebugString()));
  }
  std::vector<double> b(2);
  for (int i = 0; i < 2; ++i) {
    const Value& item = v->items()[i];
    if (item.is_int() || item.is_float()) {
      b[i] = item.as_float();
    } else if (item.is_tensor() && item.as_tensor().numel() == 1 &&
               !item.as_tensor().is_complex()) {
      b[i] = item.as_tensor().item<double>();
    } else {
      return Invalid(where, absl::StrCat("expected a pair of numbers, got ", v->DebugString()));
    }
  }
  return b;
}

absl::Status RefuseMaximize(const Dict& group, const std::string& path,
                            const std::string& type) {
  FABRIC_ASSIGN_OR_RETURN(std::optional<bool> maximize, GetBool(group, "maximize", path));
  if (maximize.value_or(false)) {
    return Invalid(absl::StrCat(path, ".maximize"),
                   absl::StrCat("True is not supported by ", type));
  }
  return absl::OkStatus();
}

// The group's hyperparameters applied to a copy of `current`; keys the group
// lacks (older torch versions) keep their current values.
absl::StatusOr<std::unique_ptr<OptimizerOptions>> ParseSGDGroup(const Dict& group,
                                                                 const SGDOptions& current,
                                                                 const std::string& path) {
  auto options = std::make_unique<SGDOptions>(current);
  FABRIC_RETURN_IF_ERROR(RefuseMaximize(group, path, "torch::optim::SGD"));
  FABRIC_ASSIGN_OR_RETURN(std::optional<double> lr, GetNumber(group, "lr", path));
  FABRIC_ASSIGN_OR_RETURN(std::optional<double> momentum, GetNumber(group, "momentum", path));
  FABRIC_ASSIGN_OR_RETURN(std::optional<double> dampening, GetNumber(group, "dampening", path));
  FABRIC_ASSIGN_OR_RETURN(std::optional<double> weight_decay, GetNumber(group, "weight_decay", path));
  FABRIC_ASSIGN_OR_RETURN(std::optional<bool> nesterov, GetBool(group, "nesterov", path));
  if (lr) options->lr(*lr);
  if (momentum) options->momentum(*momentum);
  if (dampening) options->dampening(*dampening);
  if (weight_decay) options->weight_decay(*weight_decay);
  if (nesterov) options->nesterov(*nesterov);
  return std::unique_ptr<OptimizerOptions>(std::move(options));
}

template <typename Options>
absl::StatusOr<std::unique_ptr<OptimizerOptions>> ParseAdamGroup(const Dict& group,
                                                                  const Options& current,
                                                                  bool decoupled,
                                                                  const std::string& path,
                                                                  const std::string& type) {
  auto options = std::make_unique<Options>(current);
  FABRIC_RETURN_IF_ERROR(RefuseMaximize(group, path, type));
  FABRIC_ASSIGN_OR_RETURN(std::optional<double> lr, GetNumber(group, "lr", path));
  FABRIC_ASSIGN_OR_RETURN(std::vector<double> betas, GetBetas(group, path));
  FABRIC_ASSIGN_OR_RETURN(std::optional<double> eps, GetNumber(group, "eps", path));
  FABRIC_ASSIGN_OR_RETURN(std::optional<double> weight_decay, GetNumber(group, "weight_decay", path));
  FABRIC_ASSIGN_OR_RETURN(std::optional<bool> amsgrad, GetBool(group, "amsgrad", path));
  FABRIC_ASSIGN_OR_RETURN(std::optional<bool> file_decoupled,
                   GetBool(group, "decoupled_weight_decay", path));
  if (lr) options->lr(*lr);
  if (!betas.empty()) options->betas(std::make_tuple(betas[0], betas[1]));
  if (eps) options->eps(*eps);
  if (weight_decay) options->weight_decay(*weight_decay);
  if (amsgrad) options->amsgrad(*amsgrad);
  // Older files lack the key: Adam was coupled, AdamW decoupled, which is what
  // the class already implies.
  if (file_decoupled && *file_decoupled != decoupled && options->weight_decay() != 0) {
    return Invalid(absl::StrCat(path, ".decoupled_weight_decay"),
                   absl::StrCat(*file_decoupled ? "True" : "False",
                                " with weight_decay ", options->weight_decay(),
                                " cannot be loaded into ", type, "; use torch::optim::",
                                *file_decoupled ? "AdamW" : "Adam"));
  }
  return std::unique_ptr<OptimizerOptions>(std::move(options));
}

// The tensor reads of one load. A state tensor whose destination is already
// final (a CPU parameter's state in the file's dtype) is read after every
// check has passed, all of them in one batch; any other is read as it is
// parsed and converted.
struct StateReads {
  const TensorSource& source;
  std::vector<TensorRead> deferred;
  std::vector<std::string> paths;  // of `deferred`, for errors
};

// A state tensor for `param`, on the parameter's device and in its dtype when
// the parameter is floating point: `existing` (the optimizer's current buffer)
// when the file's tensor fits it, so that a reload needs no new memory;
// otherwise a new tensor (never the Value's own).
absl::StatusOr<at::Tensor> StateTensor(const Value& v, const at::Tensor& param,
                                       const at::Tensor& existing, StateReads& reads,
                                       const std::string& path) {
  if (!v.is_tensor() && !v.is_tensor_ref()) {
    return Invalid(path, absl::StrCat("expected a tensor, got ", v.kind_name()));
  }
  const std::vector<int64_t> sizes = ValueTensorSizes(v);
  if (c10::IntArrayRef(sizes) != param.sizes()) {
    return Invalid(path, absl::StrCat("shape ", ShapeString(sizes), " vs parameter shape ",
                                      ShapeString(param.sizes())));
  }
  if (v.is_tensor_ref() && reads.source && param.device().is_cpu()) {
    const TensorRef& ref = v.as_tensor_ref();
    if (!param.is_floating_point() || ref.dtype == param.scalar_type()) {
      at::Tensor dst = existing.defined() && ReadsStraightInto(ref, existing)
                           ? existing
                           : AlignedEmpty(ref.sizes, ref.dtype);
      reads.deferred.push_back(TensorRead{ref, dst});
      reads.paths.push_back(path);
      return dst;
    }
  }
  FABRIC_ASSIGN_OR_RETURN(at::Tensor tensor, MaterializeValue(v, reads.source, path));
  const at::ScalarType dtype =
      param.is_floating_point() ? param.scalar_type() : tensor.scalar_type();
  try {
    c10::NoGradGuard no_grad;
    // A tensor read from a file is ours already; one from a Value may be
    // another optimizer's live buffer, so copy it.
    return tensor.to(param.device(), dtype, /*non_blocking=*/false,
                     /*copy=*/v.is_tensor());
  } catch (const c10::Error& e) {
    return Invalid(path, e.what_without_backtrace());
  }
}

// The existing buffer `get` of `old` when it is a `State`, else undefined.
template <typename State, typename Getter>
at::Tensor ExistingBuffer(const OptimizerParamState* old, Getter get) {
  const auto* typed = dynamic_cast<const State*>(old);
  return typed == nullptr ? at::Tensor() : get(*typed);
}

// 'step': a tensor (torch >= 1.12), an int or a float (older torch).
absl::StatusOr<int64_t> StepValue(const Value& v, const TensorSource& source,
                                  const std::string& path) {
  double step;
  if (v.is_int()) {
    step = static_cast<double>(v.as_int());
  } else if (v.is_float()) {
    step = v.as_float();
  } else if (v.is_tensor() || v.is_tensor_ref()) {
    std::vector<int64_t> sizes = ValueTensorSizes(v);
    int64_t numel = 1;
    for (int64_t s : sizes) numel *= s;
    if (numel != 1) {
      return Invalid(path, absl::StrCat("expected a scalar, got a tensor of shape ",
                                        ShapeString(sizes)));
    }
    FABRIC_ASSIGN_OR_RETURN(at::Tensor t, MaterializeValue(v, source, path));
    step = t.to(at::kCPU).item<double>();
  } else {
    return Invalid(path, absl::StrCat("expected a number or a tensor, got ", v.kind_name()));
  }
  if (!std::isfinite(step) || step < 0 || step != std::floor(step) || step > 9.0e15) {
    return Invalid(path, absl::StrCat("expected a non-negative whole step count, got ", step));
  }
  return static_cast<int64_t>(step);
}

absl::StatusOr<std::unique_ptr<OptimizerParamState>> ParseSGDState(
    const Dict& entry, const at::Tensor& param, const OptimizerParamState* old,
    StateReads& reads, const std::string& path) {
  for (const auto& [key, value] : entry.items()) {
    if (!key.is_string() || key.as_string() != "momentum_buffer") {
      return Invalid(absl::StrCat(path, ".", key.is_string() ? key.as_string() : key.DebugString()),
                     "unknown state for torch::optim::SGD");
    }
  }
  const Value* buffer = entry.Find("momentum_buffer");
  // torch < 2.1 stored 'momentum_buffer': None when momentum was 0.
  if (buffer == nullptr || buffer->is_none()) return nullptr;
  const at::Tensor existing =
      ExistingBuffer<SGDParamState>(old, [](const SGDParamState& s) { return s.momentum_buffer(); });
  FABRIC_ASSIGN_OR_RETURN(
      at::Tensor tensor,
      StateTensor(*buffer, param, existing, reads, absl::StrCat(path, ".momentum_buffer")));
  auto state = std::make_unique<SGDParamState>();
  state->momentum_buffer(std::move(tensor));
  return std::unique_ptr<OptimizerParamState>(std::move(state));
}

template <typename State>
absl::StatusOr<std::unique_ptr<OptimizerParamState>> ParseAdamState(
    const Dict& entry, const at::Tensor& param, const OptimizerParamState* old, bool amsgrad,
    StateReads& reads, const std::string& path, const std::string& type) {
  if (entry.empty()) return nullptr;
  for (const auto& [key, value] : entry.items()) {
    const bool known = key.is_string() &&
                       (key.as_string() == "step" || key.as_string() == "exp_avg" ||
                        key.as_string() == "exp_avg_sq" || key.as_string() == "max_exp_avg_sq");
    if (!known) {
      return Invalid(absl::StrCat(path, ".", key.is_string() ? key.as_string() : key.DebugString()),
                     absl::StrCat("unknown state for ", type));
    }
  }
  auto state = std::make_unique<State>();
  const Value* step = entry.Find("step");
  if (step == nullptr) return Invalid(absl::StrCat(path, ".step"), "missing");
  FABRIC_ASSIGN_OR_RETURN(int64_t step_value, StepValue(*step, reads.source, absl::StrCat(path, ".step")));
  state->step(step_value);
  for (const char* name : {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}) {
    const std::string where = absl::StrCat(path, ".", name);
    const Value* v = entry.Find(name);
    const bool required = std::string_view(name) != "max_exp_avg_sq" || amsgrad;
    if (v == nullptr || v->is_none()) {
      if (required) {
        return Invalid(where, std::string_view(name) == "max_exp_avg_sq"
                                  ? "missing, and the group has amsgrad=True"
                                  : "missing");
      }
      continue;
    }
    const std::string_view n(name);
    const at::Tensor existing = ExistingBuffer<State>(old, [n](const State& s) {
      return n == "exp_avg" ? s.exp_avg() : n == "exp_avg_sq" ? s.exp_avg_sq() : s.max_exp_avg_sq();
    });
    FABRIC_ASSIGN_OR_RETURN(at::Tensor tensor, StateTensor(*v, param, existing, reads, where));
    if (std::string_view(name) == "exp_avg") {
      state->exp_avg(std::move(tensor));
    } else if (std::string_view(name) == "exp_avg_sq") {
      state->exp_avg_sq(std::move(tensor));
    } else {
      state->max_exp_avg_sq(std::move(tensor));
    }
  }
  return std::unique_ptr<OptimizerParamState>(std::move(state));
}

}  // namespace

absl::StatusOr<Dict> OptimizerStateDict(const Optimizer& optimizer) {
  FABRIC_ASSIGN_OR_RETURN(OptKind kind, KindOf(optimizer));
  const auto& states = optimizer.state();
  Dict state;
  Value groups = Value::List();
  int64_t index = 0;
  for (const auto& group : optimizer.param_groups()) {
    Dict g;
    switch (kind) {
      case OptKind::kSGD: {
        const auto& o = static_cast<const SGDOptions&>(group.options());
        g.Set("lr", Value(o.lr()));
        g.Set("momentum", IntIfZero(o.momentum()));
        g.Set("dampening", IntIfZero(o.dampening()));
        g.Set("weight_decay", IntIfZero(o.weight_decay()));
        g.Set("nesterov", Value(o.nesterov()));
        g.Set("maximize", Value(false));
        g.Set("foreach", Value());
        g.Set("differentiable", Value(false));
        g.Set("fused", Value());
        break;
      }
      case OptKind::kAdam:
        AdamGroupEntries(static_cast<const AdamOptions&>(group.options()), false, &g);
        break;
      case OptKind::kAdamW:
        AdamGroupEntries(static_cast<const AdamWOptions&>(group.options()), true, &g);
        break;
    }
    Value params = Value::List();
    for (const at::Tensor& p : group.params()) {
      params.items().push_back(Value(index));
      auto it = states.find(p.unsafeGetTensorImpl());
      if (it != states.end() && it->second != nullptr) {
        Dict entry;
        const OptimizerParamState* s = it->second.get();
        if (const auto* sgd = dynamic_cast<const SGDParamState*>(s)) {
          if (sgd->momentum_buffer().defined()) {
            entry.Set("momentum_buffer", Value(sgd->momentum_buffer().detach()));
          }
        } else if (const auto* adam = dynamic_cast<const AdamParamState*>(s)) {
          AdamStateEntries(*adam, &entry);
        } else if (const auto* adamw = dynamic_cast<const AdamWParamState*>(s)) {
          AdamStateEntries(*adamw, &entry);
        }
        if (!entry.empty()) state.Set(Value(index), Value(std::move(entry)));
      }
      ++index;
    }
    g.Set("params", std::move(params));
    groups.items().push_back(Value(std::move(g)));
  }
  Dict out;
  out.Set("state", Value(std::move(state)));
  out.Set("param_groups", std::move(groups));
  return out;
}

absl::Status LoadOptimizerState(Optimizer& optimizer, const Dict& state,
                                const TensorSource& source, std::string_view key_prefix,
                                const TensorBatchSource& batch, bool into_existing_buffers) {
  FABRIC_ASSIGN_OR_RETURN(OptKind kind, KindOf(optimizer));
  const std::string type = kind == OptKind::kSGD    ? "torch::optim::SGD"
                           : kind == OptKind::kAdam ? "torch::optim::Adam"
                                                    : "torch::optim::AdamW";
  const std::string prefix(key_prefix);
  const Value* state_v = state.Find("state");
  const Value* groups_v = state.Find("param_groups");
  if (state_v == nullptr || !state_v->is_dict()) {
    return Invalid(absl::StrCat(prefix, ".state"),
                   state_v == nullptr ? "missing"
                                      : absl::StrCat("expected a dict, got ", state_v->kind_name()));
  }
  if (groups_v == nullptr || !groups_v->is_sequence()) {
    return Invalid(absl::StrCat(prefix, ".param_groups"),
                   groups_v == nullptr
                       ? "missing"
                       : absl::StrCat("expected a list, got ", groups_v->kind_name()));
  }
  auto& our_groups = optimizer.param_groups();
  const auto& file_groups = groups_v->items();
  if (file_groups.size() != our_groups.size()) {
    return Invalid(absl::StrCat(prefix, ".param_groups"),
                   absl::StrCat(file_groups.size(), " group(s) in file vs ", our_groups.size(),
                                " in the optimizer"));
  }

  // Pass 1: parse and check everything, changing nothing.
  struct Target {
    at::Tensor param;
    size_t group;
  };
  std::unordered_map<int64_t, Target> by_id;
  std::vector<std::unique_ptr<OptimizerOptions>> new_options;
  for (size_t g = 0; g < file_groups.size(); ++g) {
    const std::string path = absl::StrCat(prefix, ".param_groups.", g);
    if (!file_groups[g].is_dict()) {
      return Invalid(path, absl::StrCat("expected a dict, got ", file_groups[g].kind_name()));
    }
    const Dict& group = file_groups[g].as_dict();
    const Value* params = group.Find("params");
    if (params == nullptr || !params->is_sequence()) {
      return Invalid(absl::StrCat(path, ".params"),
                     params == nullptr ? "missing" : "expected a list of parameter indices");
    }
    const auto& ours = our_groups[g].params();
    if (params->items().size() != ours.size()) {
      return Invalid(absl::StrCat(path, ".params"),
                     absl::StrCat(params->items().size(), " parameter(s) in file vs ",
                                  ours.size(), " in the optimizer's group"));
    }
    for (size_t j = 0; j < ours.size(); ++j) {
      const Value& id = params->items()[j];
      if (!id.is_int()) {
        return Invalid(absl::StrCat(path, ".params.", j),
                       absl::StrCat("expected an int, got ", id.kind_name()));
      }
      if (!by_id.emplace(id.as_int(), Target{ours[j], g}).second) {
        return Invalid(absl::StrCat(path, ".params.", j),
                       absl::StrCat("parameter index ", id.as_int(), " appears twice"));
      }
    }
    const OptimizerOptions& current = our_groups[g].options();
    absl::StatusOr<std::unique_ptr<OptimizerOptions>> parsed;
    switch (kind) {
      case OptKind::kSGD:
        parsed = ParseSGDGroup(group, static_cast<const SGDOptions&>(current), path);
        break;
      case OptKind::kAdam:
        parsed = ParseAdamGroup(group, static_cast<const AdamOptions&>(current), false, path, type);
        break;
      case OptKind::kAdamW:
        parsed = ParseAdamGroup(group, static_cast<const AdamWOptions&>(current), true, path, type);
        break;
    }
    FABRIC_RETURN_IF_ERROR(parsed.status());
    new_options.push_back(std::move(*parsed));
  }

  std::vector<std::pair<void*, std::unique_ptr<OptimizerParamState>>> new_states;
  StateReads reads{source, {}, {}};
  auto& states = optimizer.state();
  for (const auto& [key, value] : state_v->as_dict().items()) {
    const std::string path =
        absl::StrCat(prefix, ".state.", key.is_int() ? std::to_string(key.as_int()) : key.DebugString());
    if (!key.is_int()) return Invalid(path, "expected an int parameter index as key");
    auto it = by_id.find(key.as_int());
    if (it == by_id.end()) return Invalid(path, "no parameter with this index in param_groups");
    if (!value.is_dict()) {
      return Invalid(path, absl::StrCat("expected a dict, got ", value.kind_name()));
    }
    const at::Tensor& param = it->second.param;
    const auto old_it = into_existing_buffers ? states.find(param.unsafeGetTensorImpl())
                                              : states.end();
    const OptimizerParamState* old = old_it == states.end() ? nullptr : old_it->second.get();
    std::unique_ptr<OptimizerParamState> parsed;
    switch (kind) {
      case OptKind::kSGD: {
        FABRIC_ASSIGN_OR_RETURN(parsed, ParseSGDState(value.as_dict(), param, old, reads, path));
        break;
      }
      case OptKind::kAdam: {
        const bool amsgrad = static_cast<const AdamOptions&>(*new_options[it->second.group]).amsgrad();
        FABRIC_ASSIGN_OR_RETURN(parsed, ParseAdamState<AdamParamState>(
                                    value.as_dict(), param, old, amsgrad, reads, path, type));
        break;
      }
      case OptKind::kAdamW: {
        const bool amsgrad = static_cast<const AdamWOptions&>(*new_options[it->second.group]).amsgrad();
        FABRIC_ASSIGN_OR_RETURN(parsed, ParseAdamState<AdamWParamState>(
                                    value.as_dict(), param, old, amsgrad, reads, path, type));
        break;
      }
    }
    if (parsed != nullptr) new_states.emplace_back(param.unsafeGetTensorImpl(), std::move(parsed));
  }

  // Everything checked: read the deferred tensors, in one batch where the
  // caller can, else (or to name the key of a failed batch) one by one.
  if (!reads.deferred.empty()) {
    c10::NoGradGuard no_grad;
    if (!batch || !batch(reads.deferred).ok()) {
      for (size_t i = 0; i < reads.deferred.size(); ++i) {
        TensorRead& r = reads.deferred[i];
        FABRIC_RETURN_IF_ERROR_PREFIX(source(r.ref, r.destination), reads.paths[i], ": ");
      }
    }
  }

  // Pass 2: replace, as Python's load_state_dict replaces the whole state.
  for (size_t g = 0; g < our_groups.size(); ++g) {
    our_groups[g].set_options(std::move(new_options[g]));
  }
  states.clear();
  for (auto& [impl, s] : new_states) states[impl] = std::move(s);
  return absl::OkStatus();
}

}  // namespace fabric
