// Loading state from a Value tree into live tensors: the problems a load finds
// (StateLoadReport) and the callback that reads not-yet-loaded file tensors
// (TensorSource).
#ifndef FABRIC_CHECKPOINT_LOAD_REPORT_H_
#define FABRIC_CHECKPOINT_LOAD_REPORT_H_

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "checkpoint/value.h"

namespace fabric {

// Reads the bytes of a file tensor `ref` into `destination`. The loaders call
// it with a CPU, contiguous `destination` of exactly ref.dtype and ref.sizes
// (often the module's own parameter, when that already has this layout, so the
// bytes go straight into it); converting dtype or device is the loader's job.
// The file layer provides one per open file.
using TensorSource =
    std::function<absl::Status(const TensorRef& ref, at::Tensor& destination)>;

// One read of a batch: file tensor `ref` into `destination` (same contract as
// TensorSource).
struct TensorRead {
  TensorRef ref;
  at::Tensor destination;
};

// Reads many file tensors at once, so that the file layer can keep several
// reads in flight instead of one small read at a time. Optional beside a
// TensorSource; a loader without one calls the TensorSource per tensor.
using TensorBatchSource = std::function<absl::Status(std::vector<TensorRead>& reads)>;

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

// Whether `source` reads `ref` straight into `destination`: a CPU,
// contiguous tensor of the file's dtype and shape.
bool ReadsStraightInto(const TensorRef& ref, const at::Tensor& destination);

// Copies a tensor Value (kTensor, or kTensorRef read through `source`) into
// the existing `destination`, with Tensor::copy_ semantics (dtype and device
// conversion), without recording autograd. The caller has checked the shape;
// `key` names the value in errors.
absl::Status CopyValueInto(const Value& value, at::Tensor& destination,
                           const TensorSource& source, const std::string& key);

// Reads a tensor Value into a new CPU tensor of its own dtype and shape (for
// a kTensor: the tensor itself, not a copy).
absl::StatusOr<at::Tensor> MaterializeValue(const Value& value,
                                            const TensorSource& source,
                                            const std::string& key);

// The sizes of a kTensor or kTensorRef Value.
std::vector<int64_t> ValueTensorSizes(const Value& value);
// The dtype of a kTensor or kTensorRef Value.
at::ScalarType ValueTensorDtype(const Value& value);

}  // namespace fabric

#endif  // FABRIC_CHECKPOINT_LOAD_REPORT_H_
