#include "checkpoint/load_report.h"

#include <utility>

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

}  // namespace fabric
