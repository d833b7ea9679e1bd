// StateFilter: which items of a State's entries a save keeps.
#ifndef FABRIC_CHECKPOINT_STATE_FILTER_H_
#define FABRIC_CHECKPOINT_STATE_FILTER_H_

#include <functional>
#include <map>
#include <string>

#include "checkpoint/value.h"

namespace fabric {

// Per top-level entry, a predicate over the keys of that entry's state dict
// (or of a plain dict value) and the value saved under each: only the items
// it accepts are saved (Lightning's `filter` argument of fabric.save).
using StateFilter =
    std::map<std::string, std::function<bool(const std::string& key, const Value& value)>>;

}  // namespace fabric

#endif  // FABRIC_CHECKPOINT_STATE_FILTER_H_
