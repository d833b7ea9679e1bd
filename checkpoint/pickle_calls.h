// What the pickle reader makes of a call (REDUCE, NEWOBJ, INST, OBJ): the
// well-known torch and Python callables become Values (tensor rebuilds ->
// TensorRef, OrderedDict -> Dict, torch.Size -> tuple, sets -> lists, bytes,
// devices); any other callable becomes an uninterpreted Object. Nothing is
// executed. Errors say what is malformed; the reader adds where.
#ifndef FABRIC_CHECKPOINT_PICKLE_CALLS_H_
#define FABRIC_CHECKPOINT_PICKLE_CALLS_H_

#include <vector>

#include "absl/status/statusor.h"
#include "checkpoint/pickle_limits.h"
#include "checkpoint/value.h"

namespace fabric::pickle {

// callable(*args), or cls.__new__(cls, *args) with `newobj`. What it copies
// out of possibly shared arguments is charged to `limits`.
absl::StatusOr<Value> CallGlobal(const Value& callable, std::vector<Value> args, bool newobj,
                                 InputLimits& limits);

}  // namespace fabric::pickle

#endif  // FABRIC_CHECKPOINT_PICKLE_CALLS_H_
