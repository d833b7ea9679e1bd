#include "checkpoint/pickle_limits.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace fabric::pickle {

uint64_t DefaultExpansionLimit(size_t input_bytes) {
  return 8 * uint64_t{input_bytes} + (uint64_t{1} << 20);
}

absl::Status InputLimits::ChargeCopy(uint64_t bytes) {
  copied_ += bytes;
  if (copied_ <= expansion_limit_) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("memo references expand the data past ",
                                                 expansion_limit_,
                                                 " bytes (UnpickleOptions::max_expanded_size)"));
}

absl::Status InputLimits::ChargeCopyOf(const Value& v) { return ChargeCopy(PayloadBytes(v)); }

absl::Status InputLimits::ChargeCopyOf(const std::vector<Value>& items) {
  uint64_t n = items.size() * 8;
  for (const Value& v : items) n += PayloadBytes(v);
  return ChargeCopy(n);
}

absl::Status InputLimits::CheckDictKey(const Value& key) const {
  if (key.is_string() || key.is_int()) return absl::OkStatus();
  std::vector<const Value*> work = {&key};
  for (int nodes = 0; !work.empty(); ++nodes) {
    if (nodes > max_key_nodes_) {
      return absl::InvalidArgumentError(absl::StrCat("a dict key has more than ", max_key_nodes_,
                                                     " parts (UnpickleOptions::max_key_nodes)"));
    }
    const Value* v = work.back();
    work.pop_back();
    ForEachChild(*v, [&](const Value& c) { work.push_back(&c); });
  }
  return absl::OkStatus();
}

uint64_t PayloadBytes(const Value& v) {
  if (v.is_string()) return v.as_string().size();
  if (v.is_global()) return v.as_global().module.size() + v.as_global().name.size();
  return 0;
}

const void* ContainerKey(const Value& v) {
  if (v.is_sequence()) return &v.items();
  if (v.is_dict()) return &v.as_dict();
  if (v.is_object()) return &v.as_object();
  return nullptr;
}

void TakeChildren(Value& v, std::vector<Value>* out) {
  auto take = [out](std::vector<Value>& items) {
    for (Value& c : items) out->push_back(std::move(c));
    items.clear();
  };
  auto take_pairs = [out](std::vector<std::pair<Value, Value>>& items) {
    for (auto& [k, val] : items) {
      out->push_back(std::move(k));
      out->push_back(std::move(val));
    }
    items.clear();
  };
  if (v.is_sequence()) {
    take(v.items());
  } else if (v.is_dict()) {
    take_pairs(v.as_dict().mutable_items());
  } else if (v.is_object()) {
    Object& o = v.as_object();
    take(*o.args);
    if (o.list_items) take(*o.list_items);
    if (o.dict_items) take_pairs(*o.dict_items);
    if (o.state) {
      out->push_back(std::move(*o.state));
      o.state.reset();
    }
  }
}

}  // namespace fabric::pickle
