#include "checkpoint/tensor_value.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "checkpoint/aligned_empty.h"

namespace fabric {

std::vector<int64_t> ValueTensorSizes(const Value& value) {
  if (value.is_tensor()) return value.as_tensor().sizes().vec();
  return value.as_tensor_ref().sizes;
}

at::ScalarType ValueTensorDtype(const Value& value) {
  if (value.is_tensor()) return value.as_tensor().scalar_type();
  return value.as_tensor_ref().dtype;
}

absl::StatusOr<at::Tensor> MaterializeValue(const Value& value,
                                            const TensorSource& source,
                                            const std::string& key) {
  if (value.is_tensor()) return value.as_tensor();
  if (!value.is_tensor_ref()) {
    return absl::InvalidArgumentError(absl::StrCat(
        key, ": expected a tensor, got ", value.kind_name()));
  }
  const TensorRef& ref = value.as_tensor_ref();
  if (!source) {
    return absl::FailedPreconditionError(absl::StrCat(
        key, ": tensor not read yet (storage '", ref.storage_key,
        "') and no TensorSource given"));
  }
  at::Tensor tensor = AlignedEmpty(ref.sizes, ref.dtype);
  FABRIC_RETURN_IF_ERROR_PREFIX(source(ref, tensor), key, ": ");
  return tensor;
}

bool ReadsStraightInto(const TensorRef& ref, const at::Tensor& destination) {
  return destination.device().is_cpu() && destination.scalar_type() == ref.dtype &&
         destination.is_contiguous() && destination.sizes() == c10::IntArrayRef(ref.sizes);
}

absl::Status CopyValueInto(const Value& value, at::Tensor& destination,
                           const TensorSource& source, const std::string& key) {
  c10::NoGradGuard no_grad;
  if (value.is_tensor_ref() && source) {
    const TensorRef& ref = value.as_tensor_ref();
    // Read straight into the destination when it already has the file's
    // layout; otherwise through a temporary that copy_ converts.
    if (ReadsStraightInto(ref, destination)) {
      FABRIC_RETURN_IF_ERROR_PREFIX(source(ref, destination), key, ": ");
      return absl::OkStatus();
    }
  }
  FABRIC_ASSIGN_OR_RETURN(at::Tensor tensor, MaterializeValue(value, source, key));
  if (tensor.is_same(destination)) return absl::OkStatus();
  try {
    destination.copy_(tensor);
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(key, ": cannot copy: ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

}  // namespace fabric
