// The pickle reader: a protocol 0-5 unpickler that interprets the well-known
// torch callables (tensor rebuilds, parameters, torch.Size, torch.device,
// OrderedDict, sets, bytes) and keeps anything else as an uninterpreted
// Object, so such objects can be written back unchanged. Sets and frozensets
// load as lists; a persistent id that is not a tensor loads as an Object of
// PersistentIdCallable() (pickle_format.h). Nothing is executed. Bad input
// never crashes: it yields an error that names the file or record and the
// byte offset.
#ifndef FABRIC_CHECKPOINT_PICKLE_READER_H_
#define FABRIC_CHECKPOINT_PICKLE_READER_H_

#include <string_view>

#include "absl/status/statusor.h"
#include "checkpoint/pickle_format.h"
#include "checkpoint/value.h"

namespace fabric::pickle {

struct UnpickleOptions {
  // Results nested deeper than this (or cyclic) are an error, so that every
  // recursive walk of a loaded Value is bounded.
  int max_depth = 1000;
  // Memo references (GET, DUP) share containers but copy strings, and every
  // walk of the result visits a shared part once per reference. Both are
  // bounded by this budget, in bytes and nodes of the result written out as a
  // tree; 0 means 8 times the input size plus 1 MiB. A pickle that would
  // expand further (a "billion laughs" of memo references) is an error.
  uint64_t max_expanded_size = 0;
  // Dict keys (tuples, objects) larger than this many nodes are an error, so
  // that hashing and comparing keys is bounded.
  int max_key_nodes = 256;
};

// `what` names the data in error messages, e.g. "model.ckpt:archive/data.pkl".
absl::StatusOr<Value> Unpickle(std::string_view bytes, std::string_view what,
                               const UnpickleOptions& options = {});

}  // namespace fabric::pickle

#endif  // FABRIC_CHECKPOINT_PICKLE_READER_H_
