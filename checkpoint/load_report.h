// StateLoadReport: the problems loading a state dict into live tensors found
// (missing, unexpected and mismatched keys), and the notation of its messages.
// How file tensors are read: tensor_source.h and tensor_value.h.
#ifndef FABRIC_CHECKPOINT_LOAD_REPORT_H_
#define FABRIC_CHECKPOINT_LOAD_REPORT_H_

#include <string>
#include <vector>

#include <c10/util/ArrayRef.h>

#include "absl/status/status.h"

namespace fabric {

// What loading a state dict into a module found. Unlike Python, which raises
// on the first kind of problem it meets, this lists every problem at once.
struct StateLoadReport {
  // Keys the module has and the state lacks, in module order.
  std::vector<std::string> missing_keys;
  // Keys the state has and the module lacks, in state order.
  std::vector<std::string> unexpected_keys;
  // Problems with keys present on both sides, e.g.
  // "fc.weight: shape [2,3] in file vs [3,2] in module".
  std::vector<std::string> mismatches;

  // No problem of any kind.
  bool ok() const {
    return missing_keys.empty() && unexpected_keys.empty() && mismatches.empty();
  }
  // A multi-line description of every problem; `file` names the source.
  std::string ToString(const std::string& file) const;
  // OK, or InvalidArgument carrying ToString(file): mismatches always fail;
  // missing and unexpected keys fail only when `strict`.
  absl::Status ToStatus(const std::string& file, bool strict) const;
};

// "[2,3]", the notation of the messages.
std::string ShapeString(c10::IntArrayRef sizes);

}  // namespace fabric

#endif  // FABRIC_CHECKPOINT_LOAD_REPORT_H_
