#include "fabric/precision.h"

#include <ATen/autocast_mode.h>

#include "absl/strings/str_cat.h"

namespace fabric {

absl::StatusOr<Precision> ParsePrecision(const std::string& name) {
  Precision p;
  p.name = name;
  if (name == "32-true" || name == "32") return p;
  if (name == "bf16-mixed") {
    p.autocast = true;
    return p;
  }
  if (name == "bf16-true") {
    p.param_dtype = c10::kBFloat16;
    return p;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "FabricOptions.precision: '", name, "' is not one of 32-true, bf16-mixed, bf16-true"));
}

AutocastGuard::AutocastGuard(c10::DeviceType device_type, const Precision& precision)
    : device_type_(device_type) {
  if (!precision.autocast) return;
  active_ = true;
  prev_enabled_ = at::autocast::is_autocast_enabled(device_type_);
  prev_dtype_ = at::autocast::get_autocast_dtype(device_type_);
  at::autocast::set_autocast_enabled(device_type_, true);
  at::autocast::set_autocast_dtype(device_type_, precision.autocast_dtype);
}

AutocastGuard::AutocastGuard(AutocastGuard&& other) noexcept
    : active_(other.active_),
      device_type_(other.device_type_),
      prev_enabled_(other.prev_enabled_),
      prev_dtype_(other.prev_dtype_) {
  other.active_ = false;
}

AutocastGuard::~AutocastGuard() {
  if (!active_) return;
  at::autocast::set_autocast_enabled(device_type_, prev_enabled_);
  at::autocast::set_autocast_dtype(device_type_, prev_dtype_);
  // Cached casts of weights must not outlive the autocast region.
  if (!prev_enabled_) at::autocast::clear_cache();
}

}  // namespace fabric
