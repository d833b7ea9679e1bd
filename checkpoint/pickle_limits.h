// The limits that keep one unpickle of a hostile input bounded in memory and
// time (docs/security.md), and the container walks they need.
//
// Containers are shared on copy but strings are not, so every copy of a value
// that is already in the input (a memo GET, DUP, a call's arguments) is
// charged against an expansion limit proportional to the input: the input
// cannot multiply itself in memory. Dict keys that are not strings or ints are
// kept small, so that hashing and comparing them is bounded.
#ifndef FABRIC_CHECKPOINT_PICKLE_LIMITS_H_
#define FABRIC_CHECKPOINT_PICKLE_LIMITS_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "checkpoint/value.h"

namespace fabric::pickle {

// 8 times the input plus 1 MiB: UnpickleOptions::max_expanded_size's default.
uint64_t DefaultExpansionLimit(size_t input_bytes);

class InputLimits {
 public:
  InputLimits(uint64_t expansion_limit, int max_key_nodes)
      : expansion_limit_(expansion_limit), max_key_nodes_(max_key_nodes) {}

  uint64_t expansion_limit() const { return expansion_limit_; }
  // Errors (without a location; the reader adds it) once the copies so far
  // pass the expansion limit.
  absl::Status ChargeCopy(uint64_t bytes);
  // A copy of `v` (its strings), of a vector of values (8 bytes an item
  // besides their strings, so copying one shared tuple again and again is
  // bounded too).
  absl::Status ChargeCopyOf(const Value& v);
  absl::Status ChargeCopyOf(const std::vector<Value>& items);
  // An error when `key` has more than max_key_nodes parts.
  absl::Status CheckDictKey(const Value& key) const;

 private:
  const uint64_t expansion_limit_;
  const int max_key_nodes_;
  uint64_t copied_ = 0;
};

// Bytes a copy of `v` duplicates: strings and names are copied, containers
// and bytes are shared.
uint64_t PayloadBytes(const Value& v);

// The identity of a container (what its copies share); nullptr for leaves.
const void* ContainerKey(const Value& v);

// Calls fn on each child of a container (keys and values of dicts).
template <typename Fn>
void ForEachChild(const Value& v, Fn fn) {
  if (v.is_sequence()) {
    for (const Value& c : v.items()) fn(c);
  } else if (v.is_dict()) {
    for (const auto& [k, val] : v.as_dict()) {
      fn(k);
      fn(val);
    }
  } else if (v.is_object()) {
    const Object& o = v.as_object();
    for (const Value& c : *o.args) fn(c);
    if (o.list_items) {
      for (const Value& c : *o.list_items) fn(c);
    }
    if (o.dict_items) {
      for (const auto& [k, val] : *o.dict_items) {
        fn(k);
        fn(val);
      }
    }
    if (o.state) fn(*o.state);
  }
}

// Moves the children of a container into *out and leaves it empty (to break
// reference cycles).
void TakeChildren(Value& v, std::vector<Value>* out);

}  // namespace fabric::pickle

#endif  // FABRIC_CHECKPOINT_PICKLE_LIMITS_H_
