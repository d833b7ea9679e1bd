// DCP's flattening of nested state dicts: the flat keys ("model.l.weight")
// that a sharded checkpoint's `.metadata` maps, each with its path in the
// original nested dict, and the way back.
#ifndef FABRIC_CHECKPOINT_STATE_DICT_FLATTEN_H_
#define FABRIC_CHECKPOINT_STATE_DICT_FLATTEN_H_

#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "checkpoint/value.h"

namespace fabric::dcp {

// One element of a flattened key's path in the original nested state dict:
// dict keys are strings (str(key)), list positions are ints.
using PathItem = std::variant<std::string, int64_t>;
using ObjectPath = std::vector<PathItem>;

// flatten_state_dict's key for a path: its items joined by '.'.
std::string FlattenedKey(const ObjectPath& path);

// One leaf of a flattened state dict.
struct FlatEntry {
  std::string key;  // FlattenedKey(path)
  ObjectPath path;
  Value value;      // a tensor (a tensor item) or anything else (a bytes item)
};

// DCP's flatten_state_dict (torch 2.4+ traversal): dicts are walked with
// str(key) path items; a list is walked with int items when it holds, at any
// depth, a tensor or a dict; any other value (including tuples, and lists of
// plain values) is a leaf. Empty dicts vanish, as in Python.
// {"model": {"l.weight": t}, "optimizer": {"state": {0: {"exp_avg": t}},
// "param_groups": [{"lr": 0.1, "params": [0]}]}} flattens to "model.l.weight",
// "optimizer.state.0.exp_avg", "optimizer.param_groups.0.lr" and
// "optimizer.param_groups.0.params". Errors on duplicate keys or too deep
// nesting.
absl::StatusOr<std::vector<FlatEntry>> FlattenStateDict(const Value& state_dict);

// The inverse (DCP's set_element for every entry): string items create
// dicts, int items lists (padded with None). Errors on paths that conflict.
absl::StatusOr<Value> UnflattenStateDict(const std::vector<FlatEntry>& entries);

}  // namespace fabric::dcp

#endif  // FABRIC_CHECKPOINT_STATE_DICT_FLATTEN_H_
