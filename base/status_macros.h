#ifndef FABRIC_BASE_STATUS_MACROS_H_
#define FABRIC_BASE_STATUS_MACROS_H_

// Early-return helpers for the project's one error idiom, absl::Status and
// absl::StatusOr:
//   FABRIC_RETURN_IF_ERROR(DoThing());
//   FABRIC_ASSIGN_OR_RETURN(auto file, TorchFile::Open(path));
// and, where the caller adds context to the message (same code):
//   FABRIC_RETURN_IF_ERROR_PREFIX(ReadTensor(ref), "key '", key, "': ");
//   FABRIC_ASSIGN_OR_RETURN_PREFIX(auto f, Open(path), "opening ", path, ": ");
// The prefix arguments (absl::StrCat's) are evaluated only on error.

#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace fabric {

// `status` with `prefix` before its message; the code stays.
inline absl::Status PrefixStatus(const absl::Status& status, std::string_view prefix) {
  return absl::Status(status.code(),
                      absl::StrCat(absl::string_view(prefix.data(), prefix.size()),
                                   status.message()));
}

}  // namespace fabric

#define FABRIC_STATUS_CONCAT_INNER(a, b) a##b
#define FABRIC_STATUS_CONCAT(a, b) FABRIC_STATUS_CONCAT_INNER(a, b)

#define FABRIC_RETURN_IF_ERROR(expr)               \
  do {                                             \
    ::absl::Status fabric_status_ = (expr);        \
    if (!fabric_status_.ok()) return fabric_status_; \
  } while (false)

#define FABRIC_RETURN_IF_ERROR_PREFIX(expr, ...)                                      \
  do {                                                                                \
    ::absl::Status fabric_status_ = (expr);                                           \
    if (!fabric_status_.ok()) {                                                       \
      return ::fabric::PrefixStatus(fabric_status_, ::absl::StrCat(__VA_ARGS__));    \
    }                                                                                 \
  } while (false)

#define FABRIC_ASSIGN_OR_RETURN_IMPL(lhs, expr, tmp) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return tmp.status();                \
  lhs = *std::move(tmp)

#define FABRIC_ASSIGN_OR_RETURN(lhs, expr) \
  FABRIC_ASSIGN_OR_RETURN_IMPL(            \
      lhs, expr, FABRIC_STATUS_CONCAT(fabric_status_or_, __LINE__))

#define FABRIC_ASSIGN_OR_RETURN_PREFIX_IMPL(lhs, expr, tmp, ...)                        \
  auto tmp = (expr);                                                                    \
  if (!tmp.ok()) return ::fabric::PrefixStatus(tmp.status(), ::absl::StrCat(__VA_ARGS__)); \
  lhs = *std::move(tmp)

#define FABRIC_ASSIGN_OR_RETURN_PREFIX(lhs, expr, ...)                                   \
  FABRIC_ASSIGN_OR_RETURN_PREFIX_IMPL(lhs, expr,                                        \
                                      FABRIC_STATUS_CONCAT(fabric_status_or_, __LINE__), \
                                      __VA_ARGS__)

#endif  // FABRIC_BASE_STATUS_MACROS_H_
