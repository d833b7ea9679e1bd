#include "checkpoint/state_dict_flatten.h"

#include <unordered_map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace fabric::dcp {

std::string FlattenedKey(const ObjectPath& path) {
  std::string out;
  for (size_t i = 0; i < path.size(); ++i) {
    if (i > 0) out += '.';
    if (const auto* s = std::get_if<std::string>(&path[i])) {
      out += *s;
    } else {
      absl::StrAppend(&out, std::get<int64_t>(path[i]));
    }
  }
  return out;
}

namespace {

constexpr int kMaxFlattenDepth = 200;

std::string PyStr(const Value& k) {
  if (k.is_string()) return k.as_string();
  if (k.is_bool()) return k.as_bool() ? "True" : "False";
  if (k.is_int()) return absl::StrCat(k.as_int());
  return k.DebugString();
}

// traverse_state_dict's _is_terminal.
bool IsTerminal(const Value& v, int depth) {
  if (v.is_dict()) return false;
  if (!v.is_list()) return true;
  if (depth > kMaxFlattenDepth) return true;  // reported by the walk
  for (const Value& e : v.items()) {
    if ((e.is_dict() || e.is_list()) && !IsTerminal(e, depth + 1)) return false;
    if (e.is_tensor() || e.is_tensor_ref()) return false;
  }
  return true;
}

absl::Status Walk(const ObjectPath& path, const Value& v, int depth,
                  std::vector<FlatEntry>* out, std::unordered_map<std::string, size_t>* seen) {
  if (depth > kMaxFlattenDepth) {
    return absl::InvalidArgumentError(
        absl::StrCat("state dict nested deeper than ", kMaxFlattenDepth, " at '",
                     FlattenedKey(path), "'"));
  }
  if (IsTerminal(v, depth)) {
    std::string key = FlattenedKey(path);
    if (!seen->emplace(key, out->size()).second) {
      return absl::InvalidArgumentError(absl::StrCat("duplicated flatten key '", key, "'"));
    }
    out->push_back(FlatEntry{std::move(key), path, v});
    return absl::OkStatus();
  }
  ObjectPath child = path;
  child.emplace_back(int64_t{0});
  if (v.is_dict()) {
    for (const auto& [k, item] : v.as_dict()) {
      child.back() = PyStr(k);
      FABRIC_RETURN_IF_ERROR(Walk(child, item, depth + 1, out, seen));
    }
  } else {
    for (size_t i = 0; i < v.items().size(); ++i) {
      child.back() = static_cast<int64_t>(i);
      FABRIC_RETURN_IF_ERROR(Walk(child, v.items()[i], depth + 1, out, seen));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<FlatEntry>> FlattenStateDict(const Value& state_dict) {
  if (!state_dict.is_dict()) {
    return absl::InvalidArgumentError(
        absl::StrCat("a state dict must be a dict, not ", state_dict.kind_name()));
  }
  std::vector<FlatEntry> out;
  std::unordered_map<std::string, size_t> seen;
  for (const auto& [k, v] : state_dict.as_dict()) {
    FABRIC_RETURN_IF_ERROR(Walk({PyStr(k)}, v, 0, &out, &seen));
  }
  return out;
}

absl::StatusOr<Value> UnflattenStateDict(const std::vector<FlatEntry>& entries) {
  Value root = Value::MakeDict();
  for (const FlatEntry& e : entries) {
    if (e.path.empty()) return absl::InvalidArgumentError("empty path for key '" + e.key + "'");
    auto conflict = [&]() {
      return absl::InvalidArgumentError(
          absl::StrCat("key '", e.key, "' conflicts with another key's path"));
    };
    Value* cur = &root;
    for (size_t i = 0; i < e.path.size(); ++i) {
      const PathItem& item = e.path[i];
      const bool last = i + 1 == e.path.size();
      Value fresh;
      if (!last) {
        fresh = std::holds_alternative<std::string>(e.path[i + 1]) ? Value::MakeDict()
                                                                   : Value::List();
      } else {
        fresh = e.value;
      }
      Value* next = nullptr;
      if (const auto* s = std::get_if<std::string>(&item)) {
        if (!cur->is_dict()) return conflict();
        Dict& d = cur->as_dict();
        next = d.Find(*s);
        if (!next || last || next->is_none()) {
          d.Set(*s, std::move(fresh));
          next = d.Find(*s);
        }
      } else {
        const int64_t idx = std::get<int64_t>(item);
        if (!cur->is_list() || idx < 0 || idx > (int64_t{1} << 32)) return conflict();
        std::vector<Value>& items = cur->items();
        if (static_cast<int64_t>(items.size()) <= idx) items.resize(idx + 1);
        next = &items[idx];
        if (last || next->is_none()) *next = std::move(fresh);
      }
      cur = next;
    }
  }
  return root;
}

}  // namespace fabric::dcp
