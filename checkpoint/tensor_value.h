// A tensor Value (kTensor in memory, or kTensorRef still in its file): its
// shape and dtype, and its bytes read into a tensor.
#ifndef FABRIC_CHECKPOINT_TENSOR_VALUE_H_
#define FABRIC_CHECKPOINT_TENSOR_VALUE_H_

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "checkpoint/tensor_source.h"
#include "checkpoint/value.h"

namespace fabric {

// The sizes of a kTensor or kTensorRef Value.
std::vector<int64_t> ValueTensorSizes(const Value& value);
// The dtype of a kTensor or kTensorRef Value.
at::ScalarType ValueTensorDtype(const Value& value);

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

}  // namespace fabric

#endif  // FABRIC_CHECKPOINT_TENSOR_VALUE_H_
