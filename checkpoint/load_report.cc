#include "checkpoint/load_report.h"

#include <utility>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace fabric {
namespace {

void AppendList(std::string* out, const char* title,
                const std::vector<std::string>& items, bool quote) {
  if (items.empty()) return;
  absl::StrAppend(out, "\n  ", title, " (", items.size(), "):");
  for (const std::string& item : items) {
    absl::StrAppend(out, "\n    ", quote ? absl::StrCat("\"", item, "\"") : item);
  }
}

}  // namespace

std::string StateLoadReport::ToString(const std::string& file) const {
  if (ok()) return absl::StrCat("state loaded from '", file, "' without problems");
  std::string out = absl::StrCat(
      "error(s) loading state from '", file, "': ", missing_keys.size(),
      " missing key(s), ", unexpected_keys.size(), " unexpected key(s), ",
      mismatches.size(), " mismatch(es)");
  AppendList(&out, "missing keys", missing_keys, /*quote=*/true);
  AppendList(&out, "unexpected keys", unexpected_keys, /*quote=*/true);
  AppendList(&out, "mismatches", mismatches, /*quote=*/false);
  return out;
}

absl::Status StateLoadReport::ToStatus(const std::string& file,
                                       bool strict) const {
  const bool failed =
      !mismatches.empty() ||
      (strict && (!missing_keys.empty() || !unexpected_keys.empty()));
  if (!failed) return absl::OkStatus();
  return absl::InvalidArgumentError(ToString(file));
}

std::string ShapeString(c10::IntArrayRef sizes) {
  return absl::StrCat("[", absl::StrJoin(sizes, ","), "]");
}

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
  at::Tensor tensor = at::empty(ref.sizes, at::TensorOptions().dtype(ref.dtype));
  absl::Status status = source(ref, tensor);
  if (!status.ok()) {
    return absl::Status(status.code(),
                        absl::StrCat(key, ": ", status.message()));
  }
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
      absl::Status status = source(ref, destination);
      if (!status.ok()) {
        return absl::Status(status.code(),
                            absl::StrCat(key, ": ", status.message()));
      }
      return absl::OkStatus();
    }
  }
  absl::StatusOr<at::Tensor> tensor = MaterializeValue(value, source, key);
  if (!tensor.ok()) return tensor.status();
  if (tensor->is_same(destination)) return absl::OkStatus();
  try {
    destination.copy_(*tensor);
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(key, ": cannot copy: ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

}  // namespace fabric
