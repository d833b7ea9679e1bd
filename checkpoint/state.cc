#include "checkpoint/state.h"

namespace fabric {

State::State(std::initializer_list<std::pair<std::string, StateEntry>> entries) {
  for (const auto& [k, v] : entries) Set(k, v);
}

StateEntry& State::operator[](std::string_view key) {
  if (StateEntry* e = Find(key)) return *e;
  entries_.emplace_back(std::string(key), StateEntry());
  return entries_.back().second;
}

const StateEntry* State::Find(std::string_view key) const {
  for (const auto& [k, v] : entries_) {
    if (k == key) return &v;
  }
  return nullptr;
}

StateEntry* State::Find(std::string_view key) {
  for (auto& [k, v] : entries_) {
    if (k == key) return &v;
  }
  return nullptr;
}

void State::Set(std::string key, StateEntry entry) {
  if (StateEntry* e = Find(key)) {
    *e = std::move(entry);
  } else {
    entries_.emplace_back(std::move(key), std::move(entry));
  }
}

bool State::Erase(std::string_view key) {
  for (auto it = entries_.begin(); it != entries_.end(); ++it) {
    if (it->first == key) {
      entries_.erase(it);
      return true;
    }
  }
  return false;
}

std::vector<std::string> State::keys() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& [k, v] : entries_) out.push_back(k);
  return out;
}

}  // namespace fabric
