// Precision settings: which dtype weights live in and which dtype compute runs
// in, as Lightning's precision plugins ("32-true", "bf16-mixed", "bf16-true").
#ifndef FABRIC_FABRIC_PRECISION_H_
#define FABRIC_FABRIC_PRECISION_H_

#include <string>

#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>

#include "absl/status/statusor.h"

namespace fabric {

struct Precision {
  std::string name;                       // as given, e.g. "bf16-mixed"
  c10::ScalarType param_dtype = c10::kFloat;  // dtype of the weights
  bool autocast = false;                  // compute under autocast
  c10::ScalarType autocast_dtype = c10::kBFloat16;
};

// "32-true" (also "32"), "bf16-mixed", "bf16-true"; anything else is an error
// naming the option.
absl::StatusOr<Precision> ParsePrecision(const std::string& name);

// Enables autocast for a device type while alive, restoring the previous
// state after; inert when the precision does not autocast.
class AutocastGuard {
 public:
  AutocastGuard(c10::DeviceType device_type, const Precision& precision);
  ~AutocastGuard();
  AutocastGuard(AutocastGuard&& other) noexcept;
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;
  AutocastGuard& operator=(AutocastGuard&&) = delete;

 private:
  bool active_ = false;
  c10::DeviceType device_type_;
  bool prev_enabled_ = false;
  c10::ScalarType prev_dtype_ = c10::kBFloat16;
};

}  // namespace fabric

#endif  // FABRIC_FABRIC_PRECISION_H_
