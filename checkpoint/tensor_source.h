// How the loaders read file tensors that are not in memory yet (kTensorRef
// values): one at a time through a TensorSource, or many at once through a
// TensorBatchSource. The file layer (TorchFile, DcpReader) provides them.
#ifndef FABRIC_CHECKPOINT_TENSOR_SOURCE_H_
#define FABRIC_CHECKPOINT_TENSOR_SOURCE_H_

#include <functional>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
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

}  // namespace fabric

#endif  // FABRIC_CHECKPOINT_TENSOR_SOURCE_H_
