// Debian's Abseil is built with its own absl::string_view, not an alias of
// std::string_view: this converts at the boundary (StrCat, flat_hash_map
// lookups, SimpleAtoi) without a copy.
#ifndef FABRIC_BASE_ABSL_VIEW_H_
#define FABRIC_BASE_ABSL_VIEW_H_

#include <string_view>

#include "absl/strings/string_view.h"

namespace fabric {

inline absl::string_view AbslView(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}

}  // namespace fabric

#endif  // FABRIC_BASE_ABSL_VIEW_H_
