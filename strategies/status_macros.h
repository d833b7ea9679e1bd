#ifndef FABRIC_STRATEGIES_STATUS_MACROS_H_
#define FABRIC_STRATEGIES_STATUS_MACROS_H_

// Early-return helpers for absl::Status / absl::StatusOr, private to
// strategies/ (the project has no shared one yet).

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define FABRIC_STRATEGIES_CONCAT_INNER(a, b) a##b
#define FABRIC_STRATEGIES_CONCAT(a, b) FABRIC_STRATEGIES_CONCAT_INNER(a, b)

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
      lhs, expr, FABRIC_STRATEGIES_CONCAT(fabric_status_or_, __LINE__))

#endif  // FABRIC_STRATEGIES_STATUS_MACROS_H_
