#ifndef FABRIC_BASE_STATUS_MACROS_H_
#define FABRIC_BASE_STATUS_MACROS_H_

// Early-return helpers for the project's one error idiom, absl::Status and
// absl::StatusOr:
//   FABRIC_RETURN_IF_ERROR(DoThing());
//   FABRIC_ASSIGN_OR_RETURN(auto file, TorchFile::Open(path));

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define FABRIC_STATUS_CONCAT_INNER(a, b) a##b
#define FABRIC_STATUS_CONCAT(a, b) FABRIC_STATUS_CONCAT_INNER(a, b)

#define FABRIC_RETURN_IF_ERROR(expr)               \
  do {                                             \
    ::absl::Status fabric_status_ = (expr);        \
    if (!fabric_status_.ok()) return fabric_status_; \
  } while (false)

#define FABRIC_ASSIGN_OR_RETURN_IMPL(lhs, expr, tmp) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return tmp.status();                \
  lhs = *std::move(tmp)

#define FABRIC_ASSIGN_OR_RETURN(lhs, expr) \
  FABRIC_ASSIGN_OR_RETURN_IMPL(            \
      lhs, expr, FABRIC_STATUS_CONCAT(fabric_status_or_, __LINE__))

#endif  // FABRIC_BASE_STATUS_MACROS_H_
