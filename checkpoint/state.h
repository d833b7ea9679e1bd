// State: the named things a training program saves and restores together.
//
// Like Lightning Fabric's state dict (an AttributeDict): entries are modules,
// optimizers, and plain values (numbers, strings, booleans, tensors, and nested
// dicts and lists of those). On save, modules and optimizers become their state
// dicts; on load they are restored in place and plain values are written back.
//
//   fabric::State state;
//   state["model"] = model;          // std::shared_ptr<Module> or ModuleHolder
//   state["optimizer"] = optimizer;  // std::shared_ptr<torch::optim::Optimizer>
//   state["step"] = 0;
//   ...
//   int64_t step = state["step"].value().as_int();
#ifndef FABRIC_CHECKPOINT_STATE_H_
#define FABRIC_CHECKPOINT_STATE_H_

#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>
#include <torch/optim/optimizer.h>

#include "checkpoint/value.h"

namespace fabric {

// One entry of a State: a module, an optimizer, or a plain value.
class StateEntry {
 public:
  enum class Kind { kModule, kOptimizer, kValue };

  StateEntry() = default;  // a None value
  StateEntry(std::shared_ptr<torch::nn::Module> module)  // NOLINT: implicit by design
      : kind_(Kind::kModule), module_(std::move(module)) {}
  template <typename M, std::enable_if_t<std::is_base_of_v<torch::nn::Module, M>, int> = 0>
  StateEntry(std::shared_ptr<M> module)  // NOLINT: a derived module type
      : StateEntry(std::static_pointer_cast<torch::nn::Module>(std::move(module))) {}
  template <typename M>
  StateEntry(const torch::nn::ModuleHolder<M>& holder)  // NOLINT
      : StateEntry(std::static_pointer_cast<torch::nn::Module>(holder.ptr())) {}
  template <typename O, typename = std::enable_if_t<std::is_base_of_v<torch::optim::Optimizer, O>>>
  StateEntry(std::shared_ptr<O> optimizer)  // NOLINT
      : kind_(Kind::kOptimizer), optimizer_(std::move(optimizer)) {}
  template <typename V, typename = std::enable_if_t<std::is_constructible_v<Value, V>>>
  StateEntry(V&& value)  // NOLINT
      : kind_(Kind::kValue), value_(std::forward<V>(value)) {}

  Kind kind() const { return kind_; }
  bool is_module() const { return kind_ == Kind::kModule; }
  bool is_optimizer() const { return kind_ == Kind::kOptimizer; }
  bool is_value() const { return kind_ == Kind::kValue; }

  torch::nn::Module& module() const { return *module_; }
  const std::shared_ptr<torch::nn::Module>& module_ptr() const { return module_; }
  torch::optim::Optimizer& optimizer() const { return *optimizer_; }
  const std::shared_ptr<torch::optim::Optimizer>& optimizer_ptr() const { return optimizer_; }
  const Value& value() const { return value_; }
  Value& value() { return value_; }

 private:
  Kind kind_ = Kind::kValue;
  std::shared_ptr<torch::nn::Module> module_;
  std::shared_ptr<torch::optim::Optimizer> optimizer_;
  Value value_;
};

// An insertion-ordered map from names to StateEntries.
class State {
 public:
  State() = default;
  State(std::initializer_list<std::pair<std::string, StateEntry>> entries);

  // Inserts a None value when `key` is absent, like Python's defaultdict.
  StateEntry& operator[](std::string_view key);
  const StateEntry* Find(std::string_view key) const;
  StateEntry* Find(std::string_view key);
  bool Contains(std::string_view key) const { return Find(key) != nullptr; }
  void Set(std::string key, StateEntry entry);
  bool Erase(std::string_view key);

  size_t size() const { return entries_.size(); }
  std::vector<std::string> keys() const;
  const std::vector<std::pair<std::string, StateEntry>>& entries() const { return entries_; }
  std::vector<std::pair<std::string, StateEntry>>& entries() { return entries_; }

 private:
  std::vector<std::pair<std::string, StateEntry>> entries_;
};

}  // namespace fabric

#endif  // FABRIC_CHECKPOINT_STATE_H_
